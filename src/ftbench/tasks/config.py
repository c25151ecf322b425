"""The tasks' config schemas (Hydra structured configs), one dataclass per task family, with the
choices their checks accept. A schema's defaults are the family's; what differs between the tasks of a
family (a GLUE task's name and metric, a reasoning task's files) is MISSING here and set by each task's
YAML, which repeats the other defaults beside their comments (tests/test_config.py checks they agree). Torch-free: composing a config imports no task module (those import
torch, scikit-learn and scipy); each task module (tasks/) imports its schema from here.

Adding a task family: its schema here, a row in `CONFIGS`, its class in tasks/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from omegaconf import MISSING

from ftbench.errors import UserError, one_of, require
from ftbench.tasks.answers import KNOWN_SETS


@dataclass
class TaskConfig:
    # Whether the family's tasks can hold a validation split out of their training data (the classifiers)
    CARVES: ClassVar[bool] = False

    name: str = MISSING
    family: str = MISSING
    batch_size: int = 32
    max_length: int = 128
    epochs: float = 3.0
    max_steps: Optional[int] = None
    metric: str = MISSING
    data_dir: Optional[str] = None
    # Training examples held out (drawn with the run's seed) as the split `val`: a fraction (a number with a
    # point, in (0, 1)) or a count (an integer >= 1; `held_out_problem`). The validations during training score
    # it, and training never sees it. null = none.
    validation_from_train: Optional[Union[int, float]] = None
    # false: the reported split (GLUE's dev set) is never read; the final evaluation scores `val` instead
    # (ftbench compare's lr search). Needs validation_from_train.
    evaluate_reported: bool = True

    def generates(self) -> bool:
        """Whether the run's evaluation generates text (its answers take positions after the prompt)."""
        return hasattr(self, "max_new_tokens")

    def check(self, key: str) -> None:
        require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        require(self.max_length >= 1, f"{key}.max_length", "must be >= 1")
        require(self.epochs > 0, f"{key}.epochs", "must be > 0")
        if self.max_steps is not None:
            require(self.max_steps >= 1, f"{key}.max_steps", "must be >= 1")
        if self.validation_from_train is not None:
            require(self.CARVES, f"{key}.validation_from_train", f"the {self.family} tasks hold out their own "
                    "validation examples (val_size); leave it null")
            problem = held_out_problem(self.validation_from_train)
            require(problem is None, f"{key}.validation_from_train", problem)
        require(self.evaluate_reported or self.validation_from_train is not None, f"{key}.evaluate_reported",
                "false needs a split to score instead: set task.validation_from_train (e.g. 0.1)")

    def check_given(self, key: str, given: set[str]) -> None:
        """Refuse (UserError) knobs that disagree with each other on the one of them the user set (`given`: the
        keys of the command line and the chosen experiment, config/unused.set_keys); after `check`. None here."""


def held_out_problem(held: int | float) -> str | None:
    """What is wrong with `held` as a number of training examples to hold out, as the fix; None when it is a
    fraction (a float in (0, 1)) or a count (an integer >= 1). A float is a fraction whatever its value: 1.0 would
    hold out the whole training set, not one example (task.validation_from_train, compare's spec key)."""
    if isinstance(held, float) and 0 < held < 1 or isinstance(held, int) and held >= 1:
        return None
    if isinstance(held, float) and held >= 1 and held.is_integer():
        return (f"{held} has a point, so it is read as a fraction of the training set, and a fraction must be below 1 "
                f"(this one would hold out all of it); for a count of examples write the integer {int(held)}")
    return f"{held} is neither a fraction in (0, 1) nor a whole number >= 1 of training examples; give one (0.1, or 400)"


SYNTHETIC_FIRST_FILLER = 5  # ids below are special (pad, the two markers, ...); fillers are drawn from here up


@dataclass
class GeneratedConfig(TaskConfig):
    """What the in-process tasks (no download, deterministic per seed) share: how many examples are
    generated, and a tiny model's budget."""

    metric: str = "dev/acc"
    batch_size: int = 32
    max_length: int = 32
    epochs: float = 1.0
    num_train: int = 8192
    num_eval: int = 512

    def check(self, key: str) -> None:
        super().check(key)
        require(self.num_train >= 1, f"{key}.num_train", "must be >= 1")
        require(self.num_eval >= 1, f"{key}.num_eval", "must be >= 1")


def check_decoding(cfg, key: str) -> None:
    """The decoding defaults of a generative task: num_beams, max_new_tokens, min_new_tokens."""
    require(cfg.num_beams >= 1, f"{key}.num_beams", "must be >= 1")
    require(cfg.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1")
    if cfg.min_new_tokens is not None:
        require(cfg.min_new_tokens >= 1, f"{key}.min_new_tokens", "must be >= 1, or null to stop at EOS")


@dataclass
class SyntheticConfig(GeneratedConfig):
    CARVES: ClassVar[bool] = True

    name: str = "synthetic"
    family: str = "synthetic"
    max_steps: int | None = 300
    vocab_size: int = 64
    min_length: int = 8

    def check(self, key: str) -> None:
        super().check(key)
        require(self.vocab_size > SYNTHETIC_FIRST_FILLER, f"{key}.vocab_size", f"must be > {SYNTHETIC_FIRST_FILLER}")
        require(self.min_length >= 2, f"{key}.min_length", f"must be >= 2 (got {self.min_length})")

    def check_given(self, key: str, given: set[str]) -> None:
        """task.min_length above task.max_length, refused on task.min_length where the user set it and not
        task.max_length, else on task.max_length."""
        if self.min_length <= self.max_length:
            return
        if f"{key}.min_length" in given and f"{key}.max_length" not in given:
            raise UserError(f"{key}.min_length", f"{self.min_length} is above {key}.max_length={self.max_length}; "
                            f"give at most {self.max_length}, or raise {key}.max_length as well")
        raise UserError(f"{key}.max_length", f"{self.max_length} is below {key}.min_length={self.min_length}, the "
                        f"shortest sequence the task draws; give at least {self.min_length}, or lower {key}.min_length "
                        "as well (to 2 at least)")


@dataclass
class SyntheticLMConfig(GeneratedConfig):
    name: str = "synthetic_lm"
    family: str = "synthetic_lm"
    max_steps: int | None = 2000
    max_operand: int = 9
    num_eval: int = 200
    num_beams: int = 1
    max_new_tokens: int = 8
    min_new_tokens: int | None = None

    def check(self, key: str) -> None:
        super().check(key)
        require(self.max_operand >= 1, f"{key}.max_operand", "must be >= 1")
        check_decoding(self, key)


GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")  # tasks/glue.py SPECS holds each


@dataclass
class GlueConfig(TaskConfig):
    CARVES: ClassVar[bool] = True

    family: str = "glue"
    hub_id: str = "nyu-mll/glue"
    batch_size: int = 32
    max_length: int = 128
    epochs: float = 3.0

    def check(self, key: str) -> None:
        super().check(key)
        one_of(self.name, GLUE_TASKS, f"{key}.name")


TEMPLATE_NAMES = ("alpaca", "llm-adapters")  # prompt formats: tasks/instruct.py TEMPLATES holds each


@dataclass
class InstructConfig(TaskConfig):
    template: str = "alpaca"
    train_on_input: bool = False
    train_files: list[str] = field(default_factory=list)
    val_size: int = 0
    num_beams: int = 1
    max_new_tokens: int = 256
    min_new_tokens: int | None = None

    def check(self, key: str) -> None:
        super().check(key)
        one_of(self.template, TEMPLATE_NAMES, f"{key}.template")
        require(len(self.train_files) > 0, f"{key}.train_files", "give at least one file name or glob")
        require(self.val_size >= 0, f"{key}.val_size", "must be >= 0")
        check_decoding(self, key)


@dataclass
class AlpacaConfig(InstructConfig):
    name: str = "alpaca"
    family: str = "instruct"
    metric: str = "val/loss"
    hub_id: str = "tatsu-lab/alpaca"
    template: str = "alpaca"
    max_length: int = 512
    batch_size: int = 128
    epochs: float = 3.0
    train_files: list[str] = field(default_factory=lambda: ["alpaca_data.json", "*.json"])
    val_size: int = 200
    generate_samples: int = 8

    def generates(self) -> bool:
        return self.generate_samples > 0  # scored by its held-out loss; the samples are for reading

    def check(self, key: str) -> None:
        super().check(key)
        require(self.generate_samples >= 0, f"{key}.generate_samples", "must be >= 0")
        require(self.val_size >= 1, f"{key}.val_size", "alpaca is scored on held-out examples; must be >= 1")


REASONING_TASKS = ("commonsense", "math")  # tasks/reasoning.py PAPER_SELECTION holds each
LLM_ADAPTERS = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main"


@dataclass
class ReasoningConfig(InstructConfig):
    family: str = "reasoning"
    metric: str = "avg/acc"
    template: str = "llm-adapters"
    max_length: int = 2048
    batch_size: int = 64
    epochs: float = 3.0
    remote: str = LLM_ADAPTERS
    train_files: list[str] = MISSING  # each task's own (conf/task/<name>.yaml), as eval_sets and val_size
    eval_sets: list[str] = MISSING
    val_size: int = MISSING
    num_beams: int = 4
    max_new_tokens: int = 256

    def check(self, key: str) -> None:
        super().check(key)
        one_of(self.name, REASONING_TASKS, f"{key}.name")
        require(len(self.eval_sets) > 0, f"{key}.eval_sets", "give at least one eval set")
        require(len(set(self.eval_sets)) == len(self.eval_sets), f"{key}.eval_sets", "names a set twice")
        for name in self.eval_sets:
            one_of(name, KNOWN_SETS, f"{key}.eval_sets")


# task family (a task YAML's `family`) -> its schema; tasks/__init__.py REGISTRY names the same families
CONFIGS: dict[str, type[TaskConfig]] = {
    "synthetic": SyntheticConfig,
    "glue": GlueConfig,
    "instruct": AlpacaConfig,
    "reasoning": ReasoningConfig,
    "synthetic_lm": SyntheticLMConfig,
}
