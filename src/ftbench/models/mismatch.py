"""A checkpoint's tensors that do not fit the model its config describes, in words: the tensor, its shape in the
checkpoint and in the model, and the config field that sized it wrong where one is found (a field config.json
leaves out takes the family's default: LLaMA's vocab_size 32000 against an embedding of 300 rows), with the fix.
A run finds them where it loads the weights (models/loading.py `load_model`: transformers only logs its own table
of them and raises a line that points at it, "look at the above report", or, told to ignore them, starts those
tensors at random); its plan from the weight files' headers, no data read (`checkpoint_shapes`,
`shapes_against`; models/fit.py `check_weights`). Both refuse with `mismatch_error`. Both also hold the layers the
checkpoint holds in each stack to the config's depth (`check_depths`): transformers leaves layers beyond it out and
starts missing ones at random, and only logs either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from ftbench.config.folders import CONFIG, LOADED_WEIGHTS
from ftbench.errors import UserError
from ftbench.models.architecture import architecture


def checkpoint_shapes(folder: Path) -> dict[str, list[int]]:
    """Each tensor's shape in the checkpoint `folder` holds (the first of LOADED_WEIGHTS there: one file, or an
    index whose "weight_map" names the shard file of each tensor), read without its data:
    a safetensors file's header; a pytorch_model.bin unpickled onto the meta device (torch 2.13 reads no storage
    of the zip format torch.save writes since 1.6; a file of the legacy format is read whole). {} when the folder
    holds none of them. Raises what the readers raise for a file they cannot read (SafetensorError, OSError,
    EOFError, pickle.UnpicklingError, ...: models/loading.py `refused_as_load` words them)."""
    found = next((folder / name for name in LOADED_WEIGHTS if (folder / name).is_file()), None)
    if found is None:
        return {}
    files = [found]
    if found.name.endswith(".index.json"):
        shards = json.loads(found.read_text(encoding="utf-8"))["weight_map"].values()
        files = [folder / name for name in dict.fromkeys(shards)]
    shapes = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as weights:
                shapes.update({name: list(weights.get_slice(name).get_shape()) for name in weights.keys()})
        else:
            tensors = torch.load(file, map_location="meta", weights_only=True)
            shapes.update({name: list(t.shape) for name, t in tensors.items() if isinstance(t, torch.Tensor)})
    return shapes


def shapes_against(model: torch.nn.Module, shapes: dict[str, list[int]]) -> dict[str, tuple[list[int], list[int]]]:
    """The checkpoint's tensors (`shapes`: name -> shape) whose shape differs from the model's tensor that
    from_pretrained loads them into: the same name, else without or with the model's base_model_prefix (a
    BertModel's checkpoint under BertForSequenceClassification); name -> (checkpoint, model) shapes. A tensor the
    model lacks, or lacks under those names, is not compared (from_pretrained leaves it out too)."""
    own = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    prefix = f"{model.base_model_prefix}."
    differ = {}
    for name, shape in shapes.items():
        target = next((key for key in (name, name.removeprefix(prefix), prefix + name) if key in own), None)
        if target is not None and own[target] != shape:
            differ[target] = (shape, own[target])
    return differ


def body_mismatches(mismatched: dict, head: str, base_model_prefix: str) -> dict:
    """The tensors of `mismatched` (name -> shapes) a run refuses: every one under a causal-LM head, else those of
    the body (under `base_model_prefix`): a classifier's head of another size is replaced by one of the task's."""
    return {k: v for k, v in mismatched.items() if head == "causal_lm" or k.startswith(f"{base_model_prefix}.")}


def mismatch_error(key: str, source: str, config, mismatched: dict, order: list[str]) -> UserError:
    """The refusal, on `key`, of the checkpoint at `source` whose tensors `mismatched` (name -> (checkpoint, model)
    shapes, `body_mismatches`) do not fit the model `config` builds (`mismatch_problem`)."""
    return UserError(key, f"could not load {source}: {mismatch_problem(config, source, mismatched, order)}")


def mismatch_problem(config, source: str, mismatched: dict, order: list[str]) -> str:
    """Why the checkpoint at `source` does not fit the model `config` builds: `mismatched` maps each tensor that
    differs to its (checkpoint, model) shapes; the first in the model's `order` (its state_dict's keys) is named,
    with the count of the others, and the field of `config` whose value is the model's size where the shapes
    differ (one config.json leaves out first: its family's default was taken)."""
    name = min(mismatched, key=lambda k: order.index(k) if k in order else len(order))
    ckpt, model = (list(shape) for shape in mismatched[name])
    more = len(mismatched) - 1
    found = (f"the checkpoint's {name} is {ckpt} against the model's {model}"
             + (f" (and {more} more tensor{'s' if more > 1 else ''})" if more else ""))
    differs = [(c, m) for c, m in zip(ckpt, model) if c != m] if len(ckpt) == len(model) else []
    if len(differs) != 1:
        return f"{found}; fix its config.json's sizes to the checkpoint's, or give a folder written by save_pretrained"
    want, have = differs[0]
    given = given_fields(source, config)
    values = config.to_dict()
    fields = sorted((k for k, v in values.items() if type(v) is int and v == have), key=lambda k: k in given)
    if not fields:
        return f"{found}; fix its config.json's sizes to the checkpoint's, or give a folder written by save_pretrained"
    return f"{config_sets(source, config, fields[0], have)}, but {found}; write \"{fields[0]}\": {want} in its config.json"


def config_sets(source: str, config, field: str, value: int) -> str:
    """What the config.json of `source` says of `field` (`value` in `config`): its value, or that it leaves it out
    and the family's default is taken."""
    if field in given_fields(source, config):
        return f"its config.json sets {field} {value}"
    return f"its config.json sets no {field}, so the {config.model_type} default {value} is taken"


def given_fields(source: str, config) -> set[str]:
    """The fields the checkpoint's config.json sets: a local folder's file, else (a hub id) those that differ
    from the family's defaults."""
    try:
        return set(json.loads((Path(source) / CONFIG).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return set(config.to_diff_dict())


def check_depths(key: str, source: str, config, model: torch.nn.Module, names) -> None:
    """Refuse, on `key`, the checkpoint at `source` whose tensors `names` (its own names, with or without the
    model's base_model_prefix, as `shapes_against` reads them) hold another number of layers in a stack of `model`
    (built from `config`) than the config's field that sets its depth (architecture.py `depth_fields`): layers
    beyond it, which from_pretrained leaves out, or fewer, whose missing layers it starts at random. Tensors the
    load ignores are not counted (`ignored_on_load`); a stack the checkpoint holds no layer of is not compared.
    Raises UserError naming the field, the layers held, the first tensor (by layer, then name) of the layers that
    would be left out or start at random and the count of the others, with the fix."""
    ignored = ignored_on_load(model)
    for stack, field in architecture(model).depth_fields(config).items():
        held = layers_in(stack, names, model.base_model_prefix, ignored)
        depth, count = (max(held) + 1 if held else None), getattr(config, field)
        if depth in (None, count):
            continue
        if depth > count:
            tensors = [name for index in sorted(held) if index >= count for name in sorted(held[index])]
            fate = "would be left out"
        else:
            model_layers = layers_in(stack, model.state_dict(), "", ignored)
            tensors = [name for index in range(depth, count) for name in sorted(model_layers[index])]
            fate = "would start at random"
        more = len(tensors) - 1
        named = tensors[0] + (f" and {more} more tensor{'s' if more > 1 else ''}" if more else "")
        beyond = layer_span(min(depth, count), max(depth, count) - 1)
        problem = (f"{config_sets(source, config, field, count)}, but the checkpoint holds "
                   f"{layer_span(0, depth - 1)} of {stack} ({named} of {beyond} {fate}); "
                   f"write \"{field}\": {depth} in its config.json")
        raise UserError(key, f"could not load {source}: {problem}")


def ignored_on_load(model: torch.nn.Module) -> re.Pattern | None:
    """The tensor names from_pretrained neither reports unexpected nor missing (the model's
    _keys_to_ignore_on_load_unexpected and _keys_to_ignore_on_load_missing, its submodules' included): DeepSeek-V3's
    multi-token-prediction layer 61 beyond its num_hidden_layers 61, a buffer its checkpoints lack; None when none."""
    # Private attributes of transformers' PreTrainedModel, read (never written) because they are the only place it
    # keeps the names its from_pretrained ignores; getattr with a default, so a release without them ignores nothing.
    patterns = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    patterns |= set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    return re.compile("|".join(f"({pattern})" for pattern in sorted(patterns))) if patterns else None


def layers_in(stack: str, names, prefix: str, ignored: re.Pattern | None) -> dict[int, list[str]]:
    """The tensors of `names` inside the layers of `stack` (a module path of the model, e.g. model.layers), by layer
    index, named as the model names them: as given, else with the model's base_model `prefix` ("bert") added or
    taken off; those the load ignores (`ignored_on_load`) left out."""
    found: dict[int, list[str]] = {}
    for name in names:
        forms = (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")) if prefix else (name,)
        for form in forms:
            index, _, rest = form.removeprefix(f"{stack}.").partition(".")
            if form.startswith(f"{stack}.") and index.isdigit() and rest:
                if ignored is None or not ignored.search(form):
                    found.setdefault(int(index), []).append(form)
                break
    return found


def layer_span(first: int, last: int) -> str:
    """Layer indices in words: "layer 0", "layers 2-3"."""
    return f"layer {first}" if first == last else f"layers {first}-{last}"
