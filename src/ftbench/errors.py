"""User-facing errors: one line that names the bad key or path and the fix.

Everything the user can get wrong (a config value, a path, a data file) raises
`UserError`; the CLI prints it as one line and exits with code 2. Hydra and
OmegaConf composition errors are translated here into the same form.

A path the user gives is held to what it must be, a file or a folder, by `kind_problem` (what
the path is instead, in words) and `require_kind` (one line naming the key): a folder where a
file is meant says so, never "no such file", and a file where a folder is meant likewise.
"""

from __future__ import annotations

import enum
import re
import typing
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, key: str, message: str):
        self.key, self.reason = key, message
        super().__init__(f"{key}: {message}" if key else message)


class Canceled(KeyboardInterrupt):
    """A canceled job (Ctrl-C, SIGTERM) whose one line was printed and whose result.json was written:
    it stops the rest of a sweep, and the entry point only sets the exit code (130)."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise a `UserError` on `key` unless `condition` holds."""
    if not condition:
        raise UserError(key, message)


def one_of(value, choices, key: str) -> None:
    require(value in choices, key, f"'{value}' is not one of: {', '.join(map(str, choices))}")


def kind_problem(path: Path | str, want: str) -> str | None:
    """None when `path` is a `want` ("file" or "folder", symbolic links followed); else what it is instead,
    as words to follow the path in a message: "does not exist", "is a directory, not a file", "is a file,
    not a directory", "is not a regular file" (a device, a pipe), "is not a directory"."""
    path = Path(path).expanduser()
    if want == "file":
        if path.is_file():
            return None
        return "is a directory, not a file" if path.is_dir() else (
            "is not a regular file" if path.exists() else "does not exist")
    if path.is_dir():
        return None
    return "is a file, not a directory" if path.is_file() else (
        "is not a directory" if path.exists() else "does not exist")


def require_kind(path: Path | str, want: str, key: str, fix: str) -> None:
    """Raise a `UserError` on `key` naming the path, what it is instead (`kind_problem`) and `fix` unless
    `path` (user home expanded) is a `want` ("file" or "folder")."""
    problem = kind_problem(path, want)
    if problem is not None:
        raise UserError(key, f"'{path}' {problem}; {fix}")


def first_line(text: str) -> str:
    """The first non-blank line of `text`, stripped. A line that ends in a colon (a heading such as
    huggingface_hub's "Validation error for field 'hidden_size':") carries the lines after it up to
    one that does not, so the line says why rather than stopping at the colon."""
    line = ""
    for part in str(text).splitlines():
        if part.strip():
            line = f"{line} {part.strip()}" if line else part.strip()
            if not line.endswith(":"):
                break
    return line


def exception_line(exc: BaseException) -> str:
    """An unexpected exception in one line: `<Type>: <first line>` (`first_line`), or `<Type>` alone
    when it has no message."""
    text = first_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def explain_compose_error(exc: BaseException) -> str:
    """Turn a Hydra/OmegaConf composition error into one line naming the key and the fix."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    text = str(exc)
    if isinstance(exc, MissingConfigException):
        missing = re.search(r"Could not find '([^']+)'", text)
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        if missing and "/" in missing.group(1):
            group, _, option = missing.group(1).rpartition("/")
            if options:
                return f"{group}={option}: no such option; choose one of: {', '.join(options)}"
            return f"{group}={option}: no such option"
        return first_line(text)
    if isinstance(exc, OverrideParseException):
        return unparsable(exc.override, first_line(text))
    appended = re.search(r"An item is already at '([^']+)'.\s*Either remove \+ prefix: '([^']+)'", text)
    if appended:  # `+key=value` on a key the config has: Hydra's fix is on its second line
        return f"{appended.group(1)}: already in the config, so '+' cannot add it; write {appended.group(2)} (no '+')"
    cause = exc.__cause__ or exc
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        key = getattr(cause, "full_key", None) or _quoted(first_line(str(cause)))
        fields = _field_names(getattr(cause, "object_type", None))
        hint = f"; valid keys here: {', '.join(fields)}" if fields else ""
        return f"{key}: no such key{hint}"
    if isinstance(cause, ValidationError):
        key = getattr(cause, "full_key", "") or "config"
        fix = not_an_integer(str(cause)) or not_a_number(str(cause)) or value_for_a_group(cause) or not_optional(cause)
        return f"{key}: {fix or first_line(str(cause))}"
    return first_line(text)


def unparsable(override: str, reason: str) -> str:
    """Hydra's refusal of an override it cannot parse (`reason`: its first line), as the key and the fix: the
    value quoted for Hydra inside the shell's quotes. A character its grammar takes only quoted (non-ASCII
    as in a folder named /tmp/ünï, a quote) is named; other refusals (an unclosed bracket) keep Hydra's words."""
    key, sep, value = override.partition("=")
    if not sep:
        return f"could not parse the override {override} ({reason}); write it as KEY=VALUE"
    odd = list(dict.fromkeys(c for c in value if not c.isascii() or c in "'\"\\"))
    example = f'"{key}=\\"{value}\\""' if "'" in value else f"\"{key}='{value}'\""
    if odd and reason.startswith("LexerNoViableAlt"):
        chars = " and ".join(map(repr, odd))
        return (f"{key}: {chars} {'are' if len(odd) > 1 else 'is'} read by Hydra only in a quoted value; quote the "
                f"value inside the shell's quotes, e.g. {example}")
    return (f"{key}: Hydra cannot parse {value} ({reason}); a value meant as written: quote it inside the shell's "
            f"quotes, e.g. {example}")


def not_an_integer(text: str) -> str | None:
    """OmegaConf's refusal of a non-integer for an integer key ("Value '1000.0' of type 'float' could not be
    converted to Integer": 1e3 on the command line is a float) as the fix (`integer_fix`); None for any other
    refusal. Every integer key, in a run's config as in a comparison's spec, is refused so."""
    found = re.search(r"Value '(.*)' of type '\w+' could not be converted to Integer", text)
    return integer_fix(found.group(1)) if found else None


def not_a_number(text: str) -> str | None:
    """OmegaConf's refusal of a word for a key that takes a whole number or a number with a point ("Value 'abc'
    of type 'str' is incompatible with type hint 'Optional[Union[int, float]]'": task.validation_from_train) as
    the fix; None for any other refusal."""
    found = re.search(r"Value '(.*)' of type '\w+' is incompatible with type hint '(?:Optional\[)?Union\[int, float\]",
                      text)
    return f"'{found.group(1)}' is not a number; write a whole number or one with a point" if found else None


def integer_fix(value) -> str:
    """A non-integer `value` given to an integer key, and the fix: the integer to write where it is a whole number
    (1e3 is the float 1000.0: write 1000), else to write one. OmegaConf refuses it for a key typed int
    (`not_an_integer`); a key that also takes words (hardware.max_micro_batch_size: auto) or any value
    (model.shape) is typed Any, and its check refuses a whole float with this same line."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"'{value}' is not an integer; write a whole number"
    if number.is_integer():
        return f"{value} is not an integer (a number written with a point or an exponent, as 8.0 or 1e3, is a float); write it as one: {int(number)}"
    return f"{value} is not an integer; write a whole number"


def value_for_a_group(cause) -> str | None:
    """OmegaConf's refusal of one value given to a node that holds keys (logger.tensorboard=/tmp/x, train=5,
    model.shape=5) as the fix: the node's keys, and one set with the value; None for any other refusal."""
    text, key, value = str(cause), getattr(cause, "full_key", ""), getattr(cause, "value", None)
    if re.search(r"Cannot assign \w+ to Dict\[", text):  # a mapping of free keys (model.shape)
        return (f"holds keys, not one value ({value}); set them one by one ({key}.KEY=VALUE) or whole "
                f"({key}={{KEY: VALUE}})")
    if "is not a subclass of" not in text or getattr(cause, "object_type", None) is None:
        return None
    try:
        hint = typing.get_type_hints(cause.object_type)[cause.key]
    except (KeyError, NameError, TypeError):
        return None
    node = next((t for t in (hint, *typing.get_args(hint)) if _field_names(t)), None)  # Optional[X]: X
    if node is None:
        return None
    fields = _field_names(node)
    return f"holds keys ({', '.join(fields)}), not one value; set one of them, e.g. {key}.{fields[0]}={value}"


def not_optional(cause) -> str | None:
    """OmegaConf's refusal of null for a key that takes no null (method.r=null: "field 'method.r' is not
    Optional") as the fix: the kind of value the key's type takes, or leaving the key out for its default;
    None for any other refusal."""
    import dataclasses

    object_type = getattr(cause, "object_type", None)
    if not first_line(str(cause)).endswith("is not Optional") or not dataclasses.is_dataclass(object_type):
        return None
    try:
        hint = typing.get_type_hints(object_type)[cause.key]
    except (KeyError, NameError, TypeError):
        hint = None
    fields = {f.name: f for f in dataclasses.fields(object_type)}
    default = getattr(fields.get(cause.key), "default", None)
    example = f" such as {default}" if isinstance(default, str) and default else ""
    kinds = {int: "a whole number", float: "a number", bool: "true or false", str: f"a name{example}"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        wanted = f"one of: {', '.join(m.name for m in hint)}"
    else:
        wanted = kinds.get(hint, "a value")
    return f"null is not allowed here; write {wanted}, or leave {cause.full_key} out for its default"


def _quoted(text: str) -> str:
    found = re.search(r"'([^']+)'", text)
    return found.group(1) if found else text


def _field_names(object_type) -> list[str]:
    import dataclasses

    if object_type is None or not dataclasses.is_dataclass(object_type):
        return []
    return [f.name for f in dataclasses.fields(object_type)]
