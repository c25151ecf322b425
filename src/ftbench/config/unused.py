"""Knobs that apply only under another setting, refused when the user set one that would not be used.

A knob such as optim.momentum (sgd only), method.prefetch_ahead (state_policy=offload only) or profile.steps
(mode=profile and `ftbench plan` only) does nothing under other settings. One rule for all of them: a knob the
user set (`set_keys`: on the command line, or in the experiment they chose) that the other settings leave unused
is refused in one line naming both keys; a knob left at its default is never refused for that, so choosing a documented value of one knob never needs a
second override to quiet another. A knob set to its inert value (momentum 0, prefetch_ahead false: nothing
it would change) is not unused: the groups list a knob only when its value would change the run.

The groups declare their conditional knobs (`unused`: OptimConfig, EvalConfig, MethodConfig.unused, and the
groups of one mode, ProfileConfig and PlanConfig in config/modes.py); `check` refuses the ones the user set.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from pathlib import Path

from omegaconf import OmegaConf

from ftbench.config.sources import given_keys
from ftbench.errors import UserError

GROUPS = ("optim", "eval", "method", "profile", "plan")  # the groups that have knobs used only under another setting
MISSING_DEFAULT = object()  # `default_of` a key without one: never equal to a value


@dataclass(frozen=True)
class Unused:
    """A knob whose value the run would not use: `knob` (its full key, method.reshuffle) is used only under
    `applies` (method.order=random), and `here` is the setting that rules it out (method.order=down2up)."""

    knob: str
    applies: str
    here: str


def check(cfg, given: set[str]) -> None:
    """Raise a `UserError` on the first knob of `given` (`set_keys`) that a group of `cfg` (the composed config,
    each group's values checked) declares unused under the other settings."""
    for name in GROUPS:
        for unused in OmegaConf.to_object(cfg[name]).unused(name, cfg):
            if unused.knob in given:
                raise UserError(unused.knob, f"only applies to {unused.applies}, and {unused.here} here, so it would "
                                f"not be used; drop {unused.knob}, or set {unused.applies}")


def set_keys(overrides, conf: Path, cfg) -> set[str]:
    """The keys the user set: the command line's (`given_keys` of `overrides`), and those the experiment it
    chooses (experiment=NAME: conf/experiment/NAME.yaml and the experiment files it includes; `conf` is the
    config folder) sets to another value than the default (`default_of`) in `cfg`, the composed config: a preset
    that restates a default leaves the knob at it. The options an experiment picks for a group (override /method:
    hift) set the option, not its knobs: those stay the option's defaults."""
    given = given_keys(overrides)
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "experiment"]
    if chosen and chosen[-1] not in ("null", ""):
        preset = experiment_keys(conf / "experiment" / f"{chosen[-1]}.yaml")
        given |= {key for key in preset if OmegaConf.select(cfg, key) != default_of(cfg, key)}
    return given


def default_of(cfg, key: str):
    """The schema's default of `key` (a dotted key of a group typed by a dataclass: optim.momentum, method.k) under
    the option `cfg` chose for its group; MISSING_DEFAULT where the group has no schema or the key no default."""
    group, _, rest = key.partition(".")
    node = cfg.get(group)
    schema = OmegaConf.get_type(node) if OmegaConf.is_config(node) else None
    if not rest or schema is None or not is_dataclass(schema):
        return MISSING_DEFAULT
    value = schema()
    for name in rest.split("."):
        value = getattr(value, name, MISSING_DEFAULT)
    return value


def experiment_keys(path: Path) -> set[str]:
    """The keys the experiment file `path` sets (it is `# @package _global_`: its keys are the config's), with
    those of the experiment files its defaults list includes (`- base/...`, beside it)."""
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    keys: set[str] = set()
    for entry in loaded.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            keys |= experiment_keys(path.parent / f"{entry}.yaml")
    return keys | set(_leaf_keys(loaded, ""))


def _leaf_keys(node, key: str):
    """The dotted key of every leaf of `node` (a list is one leaf)."""
    if isinstance(node, dict):
        for name, child in node.items():
            yield from _leaf_keys(child, f"{key}.{name}" if key else str(name))
    else:
        yield key
