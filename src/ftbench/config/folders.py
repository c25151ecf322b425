"""What a folder given as a model (model.path) or a tokenizer (model.tokenizer) holds, when it is not one.

A model folder is what save_pretrained writes: config.json beside the weights. One without config.json is
refused naming its key (`require_model_folder`), saying what the folder holds instead: a PEFT adapter (the
base model its adapter_config.json names, and how to start from the adapted weights), a subfolder holding
the model or an adapter (ftbench's export, `<run>/checkpoint`: `merged/`, `adapter/`), a tokenizer alone,
other files, or nothing. A tokenizer folder holding nothing but a model's or an adapter's files, or nothing
at all, is refused the same way (`require_tokenizer_folder`). Only file names (and adapter_config.json) are
read: nothing is loaded, so every command that checks a config (a run, mode=profile, ftbench plan, each job
of a sweep or a comparison) refuses such a folder before anything starts.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftbench.errors import UserError

CONFIG = "config.json"
ADAPTER = "adapter_config.json"  # a PEFT adapter (save_pretrained of a PeftModel): no config.json
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")  # what tokenizer.save_pretrained writes
# A model's or an adapter's files, none of them a tokenizer's: a folder of these alone holds no tokenizer.
NOT_TOKENIZER = {CONFIG, ADAPTER, "generation_config.json", "README.md", "training_args.bin"}
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
MODEL_FIX = "give a folder written by save_pretrained (config.json and weights)"
MERGE = ("to start from the adapted weights, merge the adapter first (peft: PeftModel.from_pretrained(base, "
         "adapter).merge_and_unload().save_pretrained(DIR)) and give DIR")


def require_model_folder(path: str, key: str) -> None:
    """Raise a `UserError` on `key` when the folder `path` holds no config.json, saying what it holds instead.
    A folder that cannot be listed is left to the loader to refuse."""
    folder = Path(path).expanduser()
    if (folder / CONFIG).is_file():
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
    if any(name in TOKENIZER for name in names):
        raise UserError(key, f"'{path}' holds a tokenizer but no model (no config.json); give {key} the model's "
                        "folder, written by save_pretrained (this one can be model.tokenizer)")
    raise UserError(key, f"'{path}' holds no config.json (it holds {listing(names)}); {MODEL_FIX}")


def require_tokenizer_folder(path: str, key: str) -> None:
    """Raise a `UserError` on `key` when the folder `path` is empty or holds nothing but a model's or an adapter's
    files (NOT_TOKENIZER, WEIGHTS), saying what it holds. Any other file may be a tokenizer's: the loader decides."""
    folder = Path(path).expanduser()
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return
    fix = "give a folder holding a tokenizer (written by tokenizer.save_pretrained)"
    if not names:
        raise UserError(key, f"'{path}' is empty; {fix}")
    if any(name not in NOT_TOKENIZER and not name.endswith(WEIGHTS) for name in names):
        return
    if ADAPTER in names:
        raise UserError(key, f"'{path}' holds no tokenizer, only {adapter(folder)}; {fix}, such as the base model's")
    raise UserError(key, f"'{path}' holds no tokenizer, only a model's files ({listing(names)}); {fix}")


def adapter(folder: Path) -> str:
    """A PEFT adapter folder in words, with the base model its adapter_config.json names."""
    try:
        base = json.loads((folder / ADAPTER).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        base = None
    return f"a PEFT adapter of base model {base}" if base else (
        "a PEFT adapter (its adapter_config.json names no base model)")


def listing(names: list[str], shown: int = 5) -> str:
    """Up to `shown` file names, and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
