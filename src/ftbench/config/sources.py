"""Where a model comes from, as the user said it: the sources a run loads (model.path, model.package,
model.hub_id; random init otherwise), the source given that another wins over (refused: `check_given`), and
the model's name in results (`model_label`). `given` is the set of keys the command line set (`given_keys`)."""

from __future__ import annotations

from omegaconf import DictConfig

from ftbench.errors import UserError

# Where a model comes from, the first one set winning (models/loading.py: source_key).
MODEL_SOURCES = ("path", "package", "hub_id")
# model.gguf_file without the folder or package that holds the file (ModelConfig.check, models/gguf.locate)
GGUF_WHERE = ("names a file inside model.path (or model.package), and neither is set; give model.path=DIR "
              "model.gguf_file=NAME, or model.path=FILE.gguf")


def given_keys(overrides) -> set[str]:
    """The keys a command line's KEY=VALUE overrides set (+KEY=VALUE and ~KEY as KEY)."""
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides}


def model_label(mcfg, given: set[str]) -> str:
    """The model's name in result.json and plan.json (`run.model`): model.name, unless the user gave the
    source loaded (model.path, model.package or model.hub_id, or model.gguf_file) without a model.name: then
    that source as given (`DIR`, `DIR/file.gguf`), so runs of two folders under one group (model.path=A,
    model.path=B under the default tiny-llama) are never reported as the same model. `given`: given_keys."""
    winner = next((name for name in MODEL_SOURCES if mcfg[name]), None)
    loaded = winner is not None and not (winner == "hub_id" and mcfg.random_init)  # a folder wins over random init
    if "model.name" in given or not loaded or not {f"model.{winner}", "model.gguf_file"} & given:
        return mcfg.name
    return f"{mcfg[winner]}/{mcfg.gguf_file}" if mcfg.gguf_file else str(mcfg[winner])


def check_given(cfg: DictConfig, given: set[str]) -> None:
    """Refuse (UserError naming the key) a model source the user gave (`given`: the keys set on the command
    line) that the run would not load: a model.package or model.hub_id under a model.path or model.package
    that wins over it (MODEL_SOURCES, whether the group or the user set the winner), model.random_init=true
    under one (it is loaded), and a hub id under a group that builds a random-init shape (model=tiny-llama:
    random_init: true) without model.random_init (a GGUF file without the folder or package holding it is
    refused before, by ModelConfig.check), and a model.shape (or one of its fields) under a model.path or
    model.package: the checkpoint's config.json is its shape (the group's own shape is left unused unsaid)."""
    mcfg = cfg.model
    winner = next((name for name in MODEL_SOURCES[:2] if mcfg[name]), None)
    for name in MODEL_SOURCES[1:]:
        key = f"model.{name}"
        if key in given and mcfg[name] and winner and MODEL_SOURCES.index(winner) < MODEL_SOURCES.index(name):
            raise UserError(key, f"model.{winner}={mcfg[winner]} is the model loaded (it wins over {key}), so "
                            f"{mcfg[name]} would not be; give one source: drop {key}, or add model.{winner}=null")
    if "model.random_init" in given and mcfg.random_init and winner:
        raise UserError("model.random_init", f"model.{winner}={mcfg[winner]} is the model loaded (it wins over "
                        f"random init), so model.random_init=true would not be; give one: drop model.random_init, "
                        f"or add model.{winner}=null")
    shape = sorted(key for key in given if key == "model.shape" or key.startswith("model.shape."))
    if shape and winner:
        raise UserError(shape[0], f"model.{winner}={mcfg[winner]} is the model loaded, its shape from its config.json, "
                        f"so {shape[0]} would not be used; give one: drop {shape[0]}, or add model.{winner}=null"
                        f"{'' if mcfg.random_init else ' model.random_init=true'} to build that shape at random init")
    if "model.hub_id" in given and mcfg.hub_id and mcfg.random_init and not winner:
        if "model.random_init" in given:  # both said: which one is meant
            raise UserError("model.hub_id", f"model.random_init=true builds the random-init shape of model="
                            f"{mcfg.name}, so {mcfg.hub_id} would not be loaded (nor its tokenizer); give one: "
                            "drop model.hub_id, or model.random_init")
        raise UserError("model.hub_id", f"model={mcfg.name} builds a random-init shape (model.random_init=true), "
                        f"so {mcfg.hub_id} would not be loaded; add model.random_init=false to load it, or drop "
                        "model.hub_id")
