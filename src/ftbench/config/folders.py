"""What a folder given as a model (model.path) or a tokenizer (model.tokenizer) holds, when it is not one.

A model folder is what save_pretrained writes: config.json beside the weights. One without config.json is
refused naming its key (`require_model_folder`), saying what the folder holds instead: a PEFT adapter (the
base model its adapter_config.json names, and how to start from the adapted weights), a subfolder holding
the model or an adapter (ftbench's export, `<run>/checkpoint`: `merged/`, `adapter/`), a tokenizer alone,
other files, or nothing; so is one whose config.json is empty, not JSON, not a JSON object, names no model_type
(`model_type_fix`: the one its architectures' classes are of), names one transformers does not know
(`model_type_problem`: the known one nearest in spelling), or holds a value the family's config refuses
(`value_problem`: hidden_size 64.0, a float, where an integer is needed: write 64), sizes that disagree with each
other (sizes.py: a width the heads do not divide, grouped key/value heads that do not, ...) or a RoPE setting its
config refuses (rope.py: a scaling factor below 1). A command that
loads the weights (every one but a plan, which loads none: a folder of config.json alone is planned) refuses a folder holding none of the
files from_pretrained reads (`require_weights`), naming a GGUF file it holds instead. A folder given with
model.gguf_file that holds no such file is refused on model.gguf_file, saying to drop it where the folder
holds a save_pretrained model (`require_gguf_folder`: a model group such as smollm2-135m names its file).
A tokenizer folder holding no tokenizer file (TOKENIZER_FILES) is refused the same way, saying what it holds
instead: a subfolder holding a tokenizer (up to 3 deep: `tokenizer_subfolder`), an adapter, a model's files
alone, other files, or nothing (`require_tokenizer_folder`). Only file names and the small JSON files are read: nothing is loaded, so every
command that checks a config (a run, mode=profile, ftbench plan, each job of a sweep or a comparison) refuses
such a folder before anything starts.
"""

from __future__ import annotations

import json
from dataclasses import fields
from difflib import get_close_matches
from fnmatch import fnmatch
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin

from ftbench.config.rope import rope_problem
from ftbench.config.sizes import size_problem
from ftbench.errors import UserError, first_line

CONFIG = "config.json"
ADAPTER = "adapter_config.json"  # a PEFT adapter (save_pretrained of a PeftModel): no config.json
# The files a tokenizer's save_pretrained writes, or a vocabulary a tokenizer class reads (transformers' classes'
# vocab_files_names: vocab.txt, vocab.json and merges.txt, spiece.model, sentencepiece.bpe.model, bpe.codes, ...).
TOKENIZER_FILES = ("tokenizer*", "*vocab*", "merges.txt", "*.model", "*.spm", "*.tiktoken", "tekken.json", "bpe.codes",
                   "special_tokens_map.json", "added_tokens.json")
# The tokenizer files that hold its settings, not its vocabulary (the files beside them: TOKENIZER_FILES).
TOKENIZER_SETTINGS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# A model's or an adapter's files, none of them a tokenizer's: a folder of these alone holds no tokenizer.
NOT_TOKENIZER = {CONFIG, ADAPTER, "generation_config.json", "README.md", "training_args.bin"}
SUBFOLDER_DEPTH = 3  # how deep below a tokenizer folder a tokenizer is looked for, to name it
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
# What from_pretrained reads beside config.json (no variant): the weights, or their shards' index.
LOADED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
GGUF = ".gguf"  # in any case: llama.cpp writes .gguf, a copy from another system may say .GGUF
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
MODEL_FIX = "give a folder written by save_pretrained (config.json and weights)"
MERGE = ("to start from the adapted weights, merge the adapter first (peft: PeftModel.from_pretrained(base, "
         "adapter).merge_and_unload().save_pretrained(DIR)) and give DIR")


def gguf_name(name: str) -> bool:
    """Whether a file name (or path) ends in .gguf, in any case (M.GGUF too)."""
    return name.lower().endswith(GGUF)


def require_model_folder(path: str, key: str) -> None:
    """Raise a `UserError` on `key` when the folder `path` holds no config.json, saying what it holds instead, or
    one that is empty, not JSON or not a JSON object. A folder or file that cannot be read is left to the loader."""
    folder = Path(path).expanduser()
    if (folder / CONFIG).is_file():
        require_config(folder / CONFIG, key)
        return
    try:
        names = sorted(p.name for p in folder.iterdir())
        models = [name for name in names if (folder / name / CONFIG).is_file()]
        adapters = [name for name in names if (folder / name / ADAPTER).is_file()]
    except OSError:
        return
    if ADAPTER in names:
        raise UserError(key, f"'{path}' is {adapter(folder)}, not a model (no config.json); give the base model as "
                        f"{key}, or, {MERGE}")
    if models:
        raise UserError(key, f"'{path}' holds no config.json, but its subfolder {models[0]} holds a model; give "
                        f"{key}={folder / models[0]}")
    if adapters:  # ftbench's export of a LoRA run under hardware.shard=fsdp: <run>/checkpoint/adapter alone
        raise UserError(key, f"'{path}' holds no config.json, but its subfolder {adapters[0]} is "
                        f"{adapter(folder / adapters[0])}; give the base model as {key}, or, {MERGE}")
    if not names:
        raise UserError(key, f"'{path}' is empty; {MODEL_FIX}")
    if any(tokenizer_file(name) for name in names):
        raise UserError(key, f"'{path}' holds a tokenizer but no model (no config.json); give {key} the model's "
                        "folder, written by save_pretrained (this one can be model.tokenizer)")
    raise UserError(key, f"'{path}' holds no config.json (it holds {listing(names)}); {MODEL_FIX}")


def require_config(file: Path, key: str) -> None:
    """Raise a `UserError` on `key` when the model's config.json `file` is empty, not JSON, not a JSON object
    (the model's settings, name: value), names no model_type (`model_type_fix`; one whose own code defines its
    config, auto_map, is left to the loader), names one transformers does not know (`model_type_problem`) or
    holds a value its config class refuses (`value_problem`); one that cannot be read is left to the loader."""
    fix = f"fix it, or {MODEL_FIX}"
    try:
        text = file.read_text(encoding="utf-8")
    except OSError:
        return
    except ValueError as exc:  # UnicodeDecodeError
        raise UserError(key, f"'{file}' is not JSON text ({exc}); {fix}") from exc
    if not text.strip():
        raise UserError(key, f"'{file}' is empty; {fix}")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(key, f"'{file}' is not JSON ({exc}); {fix}") from exc
    if not isinstance(value, dict):
        raise UserError(key, f"'{file}' holds a JSON {JSON_TYPES[type(value)]}, not an object of the "
                        f"model's settings (name: value); {fix}")
    if "model_type" not in value:
        if "auto_map" not in value:  # a config class of the folder's own code: left to the loader
            raise UserError(key, f"'{file}' names no model_type, which transformers picks the model's class by; "
                            f"{model_type_fix(value.get('architectures'))}")
        return
    problem = model_type_problem(value["model_type"])
    if problem:
        raise UserError(key, f"'{file}': {problem}; fix its model_type, or {MODEL_FIX}")
    problem = value_problem(settings(file))
    if problem:
        raise UserError(key, f"'{file}': {problem}")


def model_type_problem(model_type) -> str | None:
    """None when transformers knows `model_type` (a key of its CONFIG_MAPPING); else that it does not, with the
    known one nearest in spelling (difflib): "transformers knows no model_type 'lama' (did you mean 'llama'?)"."""
    from transformers import CONFIG_MAPPING

    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return None
    near = get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
    return f"transformers knows no model_type {model_type!r}" + (f" (did you mean '{near[0]}'?)" if near else "")


def model_type_fix(architectures) -> str:
    """How to add the model_type a config.json lacks: the one of the model classes its `architectures` name
    (transformers' Auto mappings: LlamaForCausalLM is llama's; of several model types mapped to a class, the
    one whose config class shares its prefix, LlamaConfig), else an example."""
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    names = {n for n in architectures if isinstance(n, str)} if isinstance(architectures, list) else set()
    mappings = [getattr(modeling_auto, n) for n in sorted(dir(modeling_auto)) if n.endswith("_MAPPING_NAMES")]
    found = [model_type for mapping in mappings if isinstance(mapping, dict) for model_type, classes in mapping.items()
             if names & set(classes if isinstance(classes, (list, tuple)) else [classes])]
    found.sort(key=lambda model_type: not any(
        name.startswith(CONFIG_MAPPING_NAMES.get(model_type, "").removesuffix("Config") or "-") for name in names))
    if found:
        return f'add "model_type": "{found[0]}" (its architectures name {", ".join(sorted(names))})'
    return 'add the model\'s family, e.g. "model_type": "llama" or "bert"'


def settings(file: Path) -> dict:
    """The model's settings in a config.json `file` as from_pretrained reads them (its own encoding of inf and
    nan decoded: {"__float__": "Infinity"})."""
    from transformers import PreTrainedConfig

    return PreTrainedConfig.get_config_dict(str(file.parent), local_files_only=True)[0]


def value_problem(values: dict) -> str | None:
    """The first value of a config.json (`values`, its model_type known to transformers) that the family's
    config class refuses (its strict fields' validators, as from_pretrained runs them), in words with the fix:
    "hidden_size is 64.0, a float; transformers needs an integer: write 64"; else the first of its sizes that
    disagree with each other (sizes.py `size_problem`: "hidden_size 64 is not a multiple of num_attention_heads 3:
    ..."); else a RoPE setting the config refuses (rope.py `rope_problem`: "rope_scaling.factor is -2.0; ...");
    None when there is none. A field the class does not declare is left to the loader."""
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[values["model_type"]]
    # `__validators__` is huggingface_hub's strict-dataclass table (field name: its validators), not a
    # documented API: from_pretrained runs the same functions, and no public call checks one field alone
    validators = getattr(config_class, "__validators__", {})
    types = {f.name: f.type for f in fields(config_class)}
    for name, value in values.items():
        for validator in validators.get(name, ()):
            try:
                validator(value)
            except (TypeError, ValueError) as exc:
                return wrong_value(name, value, types.get(name), exc)
    return size_problem(values) or rope_problem(values)


def wrong_value(name: str, value, expected, exc: Exception) -> str:
    """A config.json value its field's validator refused (`exc`), and the fix: in words where the field's type
    (`expected`) is one `type_words` says, else with the library's reason."""
    from huggingface_hub.dataclasses import type_validator

    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else f"{shown[:37]}..."
    given = f"{name} is {shown}" + ("" if value is None else f", {JSON_KINDS[type(value)]}")
    words = type_words(expected)
    try:
        type_validator(name, value, expected)
    except TypeError:
        if words is not None:
            return f"{given}; transformers needs {words}: write {written(value, expected)}"
    return f"{given}; transformers refuses it ({first_line(str(exc))}); write a value it accepts"


# A JSON value's kind in words, by the Python type json.loads gives it.
JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a float",
              bool: "a boolean"}
TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
              list: "an array", tuple: "an array", dict: "an object"}


def type_words(expected) -> str | None:
    """A config field's type in words ("an integer", "an integer or null"), or None for one it cannot say."""
    if expected is None or expected in TYPE_WORDS:
        return TYPE_WORDS[type(None) if expected is None else expected]
    origin = get_origin(expected)
    if origin in (Union, UnionType):
        words = [type_words(arg) for arg in get_args(expected)]
        if None in words:
            return None
        if "a number" in words and "an integer" in words:
            words.remove("an integer")
        return " or ".join(dict.fromkeys(words))
    return TYPE_WORDS.get(origin)


def written(value, expected) -> str:
    """What to write for `value` where a field of type `expected` refused it: the same number as an integer
    (64.0: 64), the number or word a string holds without its quotes, else one of the kind."""
    from huggingface_hub.dataclasses import type_validator

    candidates = []
    if isinstance(value, float) and value.is_integer():
        candidates.append(int(value))
    if isinstance(value, str):
        text = value.strip()
        candidates += [{"true": True, "false": False, "null": None}.get(text.lower(), text)]
        for number in (int, float):
            try:
                candidates.append(number(text))
            except ValueError:
                pass
    for candidate in candidates:
        try:
            type_validator("", candidate, expected)
        except TypeError:
            continue
        return json.dumps(candidate) + (" (no quotes)" if isinstance(value, str) else "")
    return "a whole number" if isinstance(value, float) and type_words(expected) == "an integer" else "one"


def require_weights(path: str, key: str) -> None:
    """Raise a `UserError` on `key` when the model folder `path` holds none of the weight files from_pretrained
    reads (LOADED_WEIGHTS), naming a GGUF file it holds instead (model.gguf_file reads that). A folder that cannot
    be listed is left to the loader."""
    try:
        names = sorted(p.name for p in Path(path).expanduser().iterdir())
    except OSError:
        return
    if any(name in LOADED_WEIGHTS for name in names):
        return
    ggufs = [name for name in names if gguf_name(name)]
    wanted = "model.safetensors, pytorch_model.bin or their shards' .index.json"
    if ggufs:
        raise UserError(key, f"'{path}' holds config.json but no weights from_pretrained reads ({wanted}), only the "
                        f"GGUF file {ggufs[0]}; to load it, add model.gguf_file={ggufs[0]}")
    raise UserError(key, f"'{path}' holds config.json but no weights ({wanted}; it holds {listing(names)}); "
                    f"{MODEL_FIX}")


def require_gguf_folder(path: str, name: str, key: str) -> None:
    """Raise a `UserError` on `key` (model.gguf_file) when the folder `path` (model.path) holds no file `name`,
    saying what it holds instead: a model written by save_pretrained (drop model.gguf_file: a model group such
    as smollm2-135m names its own file), other GGUF files, or neither. One that cannot be listed, or a `name`
    that is there but not a file, is left to the loader (models/gguf.py says what it is)."""
    folder = Path(path).expanduser()
    if (folder / name).exists():
        return
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return
    ggufs = [other for other in names if gguf_name(other)]
    missing = f"{name} is not in '{path}' (model.path)"
    if CONFIG in names:
        raise UserError(key, f"{missing}, which holds a model written by save_pretrained (config.json); to load that "
                        "model, add model.gguf_file=null")
    if ggufs:
        raise UserError(key, f"{missing}, which holds the GGUF file {listing(ggufs)}; give model.gguf_file={ggufs[0]}"
                        if len(ggufs) == 1 else f"{missing}, which holds the GGUF files {listing(ggufs)}; give "
                        "model.gguf_file one of them")
    held = f"it holds {listing(names)}" if names else "it is empty"
    raise UserError(key, f"{missing} ({held}); give model.path the folder that holds it")


def require_tokenizer_folder(path: str, key: str) -> None:
    """Raise a `UserError` on `key` when the folder `path` holds no tokenizer file (TOKENIZER_FILES), saying what
    it holds instead: a subfolder holding one (`tokenizer_subfolder`), an adapter, a model's files alone
    (NOT_TOKENIZER, WEIGHTS), other files, or nothing. Whether the files found make a tokenizer the loader decides."""
    folder = Path(path).expanduser()
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return
    fix = "give a folder holding a tokenizer (written by tokenizer.save_pretrained)"
    if not names:
        raise UserError(key, f"'{path}' is empty; {fix}")
    if any(tokenizer_file(name) for name in names):
        return
    deeper = tokenizer_subfolder(folder)
    if deeper is not None:  # ftbench's export, <run>/checkpoint: merged/ holds the tokenizer
        raise UserError(key, f"'{path}' holds no tokenizer, but its subfolder {deeper.relative_to(folder)} does; "
                        f"give {key}={deeper}")
    if ADAPTER in names:
        raise UserError(key, f"'{path}' holds no tokenizer, only {adapter(folder)}; {fix}, such as the base model's")
    if all(name in NOT_TOKENIZER or name.lower().endswith(WEIGHTS) for name in names):
        raise UserError(key, f"'{path}' holds no tokenizer, only a model's files ({listing(names)}); {fix}")
    raise UserError(key, f"'{path}' holds no tokenizer (it holds {listing(names)}); {fix}")


def tokenizer_file(name: str) -> bool:
    """Whether a file of this name is a tokenizer's (TOKENIZER_FILES)."""
    return any(fnmatch(name, pattern) for pattern in TOKENIZER_FILES)


def tokenizer_subfolder(folder: Path) -> Path | None:
    """The subfolder of `folder` that holds a tokenizer file, the nearest first (up to SUBFOLDER_DEPTH deep; by name
    among those as deep), else None. The config check (`require_tokenizer_folder`) and the tokenizer's load
    (a folder of tokenizer_config.json alone) name it alike."""
    patterns = ("/".join("*" * depth) for depth in range(1, SUBFOLDER_DEPTH + 1))
    return next((sub for pattern in patterns for sub in sorted(folder.glob(pattern)) if holds_tokenizer(sub)), None)


def tokenizer_settings(folder: Path) -> list[str] | None:
    """The tokenizer settings files (TOKENIZER_SETTINGS) of a folder holding no other tokenizer file, none
    included: a folder without its vocabulary; None where it holds one, or is not a folder that can be listed."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return None
    held = [name for name in names if tokenizer_file(name)]
    return None if any(name not in TOKENIZER_SETTINGS for name in held) else held


def holds_tokenizer(folder: Path) -> bool:
    """Whether `folder` is a folder holding a tokenizer file."""
    try:
        return folder.is_dir() and any(tokenizer_file(p.name) for p in folder.iterdir())
    except OSError:
        return False


def adapter(folder: Path) -> str:
    """A PEFT adapter folder in words, with the base model its adapter_config.json names."""
    try:
        base = json.loads((folder / ADAPTER).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        base = None
    return f"a PEFT adapter of base model {base}" if base else (
        "a PEFT adapter (its adapter_config.json names no base model)")


def listing(names: list[str], shown: int = 5) -> str:
    """Up to `shown` names (of files, units, parameters), and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
