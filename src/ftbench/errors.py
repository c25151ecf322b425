"""User-facing errors: one line that names the bad key or path and the fix.

Everything the user can get wrong (a config value, a path, a data file) raises
`UserError`; the CLI prints it as one line and exits with code 2. Hydra and
OmegaConf composition errors are translated here into the same form.
"""

from __future__ import annotations

import re


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
        return f"could not parse the override: {first_line(text)}"
    cause = exc.__cause__ or exc
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        key = getattr(cause, "full_key", None) or _quoted(first_line(str(cause)))
        fields = _field_names(getattr(cause, "object_type", None))
        hint = f"; valid keys here: {', '.join(fields)}" if fields else ""
        return f"{key}: no such key{hint}"
    if isinstance(cause, ValidationError):
        key = getattr(cause, "full_key", "") or "config"
        return f"{key}: {first_line(str(cause))}"
    return first_line(text)


def _quoted(text: str) -> str:
    found = re.search(r"'([^']+)'", text)
    return found.group(1) if found else text


def _field_names(object_type) -> list[str]:
    import dataclasses

    if object_type is None or not dataclasses.is_dataclass(object_type):
        return []
    return [f.name for f in dataclasses.fields(object_type)]
