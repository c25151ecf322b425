"""What every method's schema shares (torch-free): the learning rate, the accepted-values check,
what the method declares it can do, and how the project's own checks run it.

A method's schema (`methods/<name>/config.py`, a Hydra structured config) subclasses
`MethodConfig`. Its field defaults are the method's defaults; `conf/method/<name>.yaml` repeats them
beside the comments that explain each knob, and tests/test_config.py checks that the two agree.
Composing a config (`ftbench --help`, `--cfg job`, the planner) imports only these schemas, never
torch or a method's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from ftbench.config.unused import Unused
from ftbench.errors import one_of, require

MASTER_DTYPES = ("fp32", "weight")  # fp32 masters for low-precision weights, or step the weight's own dtype


def check_targets(targets: Any, key: str) -> None:
    """`target_modules` (the LoRA family's, GaLore's, APOLLO's) is the word all-linear or a non-empty list of
    module names. A string is that word only: PEFT would read `q_proj` or `.*proj` as a regex over whole
    module paths, galore-torch as one name; ftbench gives a string one meaning and refuses the others."""
    if isinstance(targets, str):
        require(targets == "all-linear", key, f"{targets!r} is not all-linear, the one string it takes (not a module "
                "name, not a regex): give a list of module names, e.g. [q_proj,v_proj]")
    require(isinstance(targets, str) or (isinstance(targets, list) and targets
                                         and all(isinstance(t, str) and t for t in targets)), key,
            "give all-linear or a list of module names, e.g. [q_proj,v_proj]")


@dataclass(frozen=True)
class GpuTarget:
    """What `make gpu-check` (scripts/gpu_check.py) holds a method to in one of its sweeps, as the docs
    state it. Without a bound the job passes when it runs."""

    stated: str = "—"  # the figure as the docs state it, shown in the table
    max_gib: float | None = None  # pass when the peak allocated is at most this many GiB
    max_ratio: float | None = None  # pass when the peak / full fine-tuning's (bf16 updates, same sweep) is at most this
    # pass when the step time / full fine-tuning's (bf16 updates, same sweep) is at most this as well
    max_time_ratio: float | None = None
    min_gpu_gib: float = 0  # the job runs only on a GPU with at least this much memory (GiB)


@dataclass(frozen=True)
class Variant:
    """A setting of a method under which a step holds other memory than under its defaults (GaLore's
    layer-wise mode holds no whole-model gradient, its 8-bit states a quarter of the moments), checked as
    a row of its own beside the method's (`MethodConfig.variants`)."""

    overrides: tuple[str, ...]  # added after the method's own overrides for the check
    # tests/test_plan_methods.py plans it and holds the plan to the traced peak, as it does the method; False where the
    # planner's CPU probes cannot run it or cannot yet predict it (the schema says which, the docs why).
    plan_check: bool = True
    # `make gpu-check`'s sweeps it joins and what each holds it to, as `MethodConfig.gpu_targets`.
    gpu_targets: dict[str, GpuTarget] = field(default_factory=lambda: {"llama2-7b": GpuTarget()})


@dataclass
class MethodConfig:
    name: str = MISSING
    lr: float = 1e-4
    # setting -> the values it accepts, checked by `check` (a class attribute, not a config key)
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    # -- What the method can do, declared once here (class attributes, not config keys) -------------------
    # fsdp_refusal: None when hardware.shard=fsdp is sound for it, else why not (one clause, shown to the user).
    fsdp_refusal: ClassVar[str | None] = "it is not one of the methods FSDP is sound for"
    # data_free: settings under which `prepare` needs no data and holds exactly what the run will hold ({}:
    # the method's own settings); the planner then counts the held state on the full-depth meta model
    # (plan/held_state.py). None: the planner extrapolates the held state from its probes, exact when every
    # layer adds the same bytes.
    data_free: ClassVar[dict[str, Any] | None] = None

    # -- How the project's own checks run it (tests/, scripts/gpu_check.py, ftbench.bench) -------------------
    # Command-line overrides ("method.k=v", "optim.lr=v") added to its defaults, one tuple per purpose; a
    # purpose its defaults already serve stays empty.
    # quick: a 30-step run of a tiny random-init model trains visibly, the loss falls (tests/test_methods.py and
    # the hygiene, masters and GPU tests that reuse its runs).
    quick: ClassVar[tuple[str, ...]] = ()
    # short_setup: `prepare` costs little and a training step is unchanged (fewer calibration passes): every
    # check that measures or compares steps rather than the setup (layouts, planner, resume, data parallel,
    # the GPU check, the peers benchmark).
    short_setup: ClassVar[tuple[str, ...]] = ()
    # every_part: on a 2-layer model every part the method trains moves within as many steps as the model has
    # units (embedding, each block, head), and nothing that `Method.trains` leaves out does
    # (tests/test_architecture.py): small ratios raised so each block gets a part, rotations every step,
    # optional dense extras off so the claim is sharp.
    every_part: ClassVar[tuple[str, ...]] = ()
    # switching: what trains, or the subspace the optimizer keeps its state in, changes within a few steps (a
    # rotation every step or two, a new projection), so the resume and data-parallel runs cross a switch.
    switching: ClassVar[tuple[str, ...]] = ()
    # same_draws: a run split over ranks or the planner's probes draws the random numbers one process draws
    # (no dropout masks that depend on how the batch is split).
    same_draws: ClassVar[tuple[str, ...]] = ()
    # gpu_targets: the `make gpu-check` sweeps the method joins (scripts/gpu_check.py SWEEPS: its profile at
    # the LLaMA2-7B shape, the RoBERTa-large table) and what each holds it to.
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget()}
    # variants: label -> a setting that changes what a step holds (`Variant`), planned (tests/test_plan_methods.py) and
    # profiled on a GPU (scripts/gpu_check.py, the row "<name> (<label>)") beside the defaults. The other checks
    # run the defaults only; a variant's own behaviour is its method's own test file's to check.
    variants: ClassVar[dict[str, Variant]] = {}

    def check(self, key: str) -> None:
        require(self.lr > 0, f"{key}.lr", f"must be > 0 (got {self.lr})")
        for setting, allowed in self.choices.items():
            one_of(getattr(self, setting), allowed, f"{key}.{setting}")

    def learning_rates(self, owner: str, lr: float) -> dict[str, float]:
        """The learning rates the method's optimizer steps with, by the key that sets each (`lr`: the winning
        learning rate, set by `owner`, optim.lr or method.lr); `config.schema.check_learning_rates` holds each to
        the training dtype. Every parameter steps with `lr` unless a method says otherwise."""
        return {owner: lr}

    def probe_layers(self) -> int:
        """The fewer-layer probes of the memory planner (plan/planner.py) trace this many layers plus one and
        plus two: a method whose trained part is a number of layers (a rotating group, the last N) needs them
        all in the smaller probe for the growth per layer to be one more layer's."""
        return 1

    def probe_depths(self, layers: int) -> tuple[int, int]:
        """The layer counts of the memory planner's two probes of a run of `layers` layers: `probe_layers()`
        plus one and plus two (so that in both the first layer and the last are different layers)."""
        group = self.probe_layers()
        return group + 1, group + 2

    def planner_depths(self, layers: int) -> tuple[int, int]:
        """The layer counts the memory planner probes a run of `layers` layers at: `probe_depths(layers)`, and a
        run shallower than the shallower of those at its own depth and that one, the plan then its own probe's
        timeline. Not extrapolated down: the deeper probes run the ops of layers the run lacks, and the line
        through them at such an op keeps a layer's activations the run does not hold (a 1-layer GPT-2 planned from
        2 and 3 layers: its absent second layer's GELU backward, 212,480 B over the loss's peak, +18 %)."""
        shallow, deep = self.probe_depths(layers)
        return (layers, shallow) if layers < shallow else (shallow, deep)

    def probe_settings(self) -> dict[str, Any]:
        """Settings the planner's probes (plan/probe.py) train with instead of this config's: ones that change
        which step holds what, never what a step holds, so that probes of different depths take their steps
        in the same order and pair step for step ({}: none)."""
        return {}

    def schedule_length(self, steps: int) -> int | None:
        """The scheduler steps the learning-rate schedule spans in `steps` optimizer steps, as far as the config
        alone tells (`Method.schedule_length` once the model is prepared); None when it depends on the model (a
        schedule stepped once per cycle of the model's units): config/within.py then leaves the warm-up to the job."""
        return steps

    def may_refuse_length(self, steps: int, optim) -> bool:
        """Whether the method's own check of the run's length (`Method.check_length`, which needs the prepared
        model) may refuse a run of `steps` steps under the warm-up of `optim`, or tell the fewest steps a
        refusal advises, as far as the config alone tells. config.schema.check then leaves the run-wide step
        knobs (config/within.py) to the job, which checks the method's length first: a refusal there never
        advises a value (optim.warmup_ratio=0.75, train.max_steps to at least 2) that the method's then refuses."""
        return False

    def calibrates(self) -> bool:
        """Whether `prepare` draws calibration batches (`MethodContext.calibration_batches`) under these
        settings: only then does the job fit a micro-batch for calibration before it (job/steps.py)."""
        return False

    def check_run(self, cfg) -> None:
        """Refuse, with a UserError naming the key, a setting of another group (`cfg`: the whole config)
        that this method cannot train with; called by `config.schema.check` after every group's `check`."""

    def unused(self, key: str, cfg) -> list[Unused]:
        """The method's knobs that its other settings (or `cfg`, the whole config) leave unused, each only while
        its value would change the run (config/unused.py refuses those the user set). None by default."""
        return []


@dataclass
class ProjectedConfig(MethodConfig):
    """The knobs every optimizer that keeps its states in a rank-r projection of each weight's gradient
    shares (GaLore, Zhao et al. 2024, Alg. 2; APOLLO, Zhu et al. 2024, Alg. 1): the rank r, the steps T
    between new projections, the update's scale α, and the weights it projects (the others step with AdamW)."""

    rank: int = 16
    update_proj_gap: int = 200
    scale: float = 1.0
    target_modules: Any = "all-linear"

    def check(self, key: str) -> None:
        super().check(key)
        require(self.rank >= 1, f"{key}.rank", "must be >= 1")
        require(self.update_proj_gap >= 1, f"{key}.update_proj_gap", "must be >= 1 (steps between new projections)")
        require(self.scale > 0, f"{key}.scale", "must be > 0")
        check_targets(self.target_modules, f"{key}.target_modules")
