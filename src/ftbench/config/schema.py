"""Structured-config schemas: every knob has a type, so a typo or a wrong type
fails at compose time naming the key; `check()` then rejects values that are
well-typed but meaningless (lr <= 0, batch size 0, a missing data folder).

Numbers have one rule for every group (`check_numbers`, before the groups' own checks): a float knob is
a finite number (inf, -inf and nan are refused, whatever the key). The groups' checks then hold each knob
to its range, and only then does `check_learning_rates` compute with them (a value out of range is named
by its own range, never met as a division by zero): a learning rate the optimizer steps with fits the
training dtype (at most float32's largest value: torch cannot convert a larger scalar to a float32 or
bfloat16 weight; Adam's first step, lr / (1 - beta1), too).

The method and task groups are polymorphic: each option's YAML lists its own
schema (`/schema/method/<name>`), registered here from the method and task
registries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from ftbench.config import unused, within
from ftbench.config.folders import (
    gguf_name,
    require_gguf_folder,
    require_model_folder,
    require_tokenizer_folder,
    require_weights,
)
from ftbench.config.knobs import settle
from ftbench.config.loggers import LoggerConfig, require_extra
from ftbench.config.modes import PlanConfig, ProfileConfig
from ftbench.config.sources import GGUF_WHERE, check_given, given_keys
from ftbench.config.tree import config_dir
from ftbench.config.unused import Unused
from ftbench.errors import UserError, integer_fix, one_of, require, require_kind

FLOAT32_MAX = (2 - 2 ** -23) * 2 ** 127  # the largest finite float32 (torch.finfo(torch.float32).max)
PRECISIONS = ("auto", "bf16-mixed", "bf16-pure", "fp32")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adamw", "adamw8bit", "sgd", "adagrad", "adafactor")
SCHEDULERS = ("linear", "cosine", "constant")
SEED_MAX = 2**32 - 1  # numpy's legacy seed (accelerate.utils.set_seed seeds it with the run's seed) takes 0 .. 2**32 - 1


@dataclass
class ModelConfig:
    name: str = MISSING
    kind: str = MISSING  # encoder | decoder
    hub_id: Optional[str] = None
    path: Optional[str] = None
    package: Optional[str] = None
    random_init: bool = False
    tokenizer: Optional[str] = None
    gguf_file: Optional[str] = None  # a GGUF file in model.path or model.package (gguf.py)
    shape: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        one_of(self.kind, ("encoder", "decoder"), f"{key}.kind")
        require("model_type" in self.shape, f"{key}.shape", "needs model_type (e.g. llama, bert)")
        if self.path is not None and not (gguf_name(self.path) and Path(self.path).expanduser().is_file()):
            require_kind(self.path, "folder", f"{key}.path",
                         "give a folder saved with save_pretrained (or a .gguf file)")
            if self.gguf_file:
                require_gguf_folder(self.path, self.gguf_file, f"{key}.gguf_file")
            elif self.saved_folder():
                require_model_folder(self.path, f"{key}.path")
        if self.tokenizer is not None:
            require_kind(self.tokenizer, "folder", f"{key}.tokenizer", "give a folder holding a tokenizer")
            require_tokenizer_folder(self.tokenizer, f"{key}.tokenizer")
        require(not self.gguf_file or self.path or self.package, f"{key}.gguf_file", GGUF_WHERE)
        sources = (self.path, self.package, self.hub_id)
        require(self.random_init or any(sources), f"{key}.random_init",
                "this model has no hub_id, path or package; set model.random_init=true")

    def saved_folder(self) -> bool:
        """Whether model.path names a folder written by save_pretrained (config.json and weights), not a GGUF
        file or a folder model.gguf_file names a file in."""
        return self.path is not None and not (self.gguf_file or gguf_name(self.path))


@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = "auto"
    precision: str = "auto"
    max_micro_batch_size: Any = "auto"  # auto (fit_batch.py) | N | null (the whole batch at once)
    gradient_checkpointing: Optional[bool] = None
    attn_implementation: str = "sdpa"
    pad_to_multiple_of: Optional[int] = None
    allow_tf32: bool = True
    memory_gib: Optional[float] = None  # the device's memory, for the planner (mode=plan)
    shard: str = "none"  # none: data parallel, every rank holds the model | fsdp: FSDP2 (sharding.py)

    def check(self, key: str) -> None:
        one_of(self.device, DEVICES, f"{key}.device")
        if self.memory_gib is not None:
            require(self.memory_gib > 0, f"{key}.memory_gib", "must be > 0 (GiB), or null")
        one_of(self.precision, PRECISIONS, f"{key}.precision")
        one_of(self.shard, ("none", "fsdp"), f"{key}.shard")
        one_of(self.attn_implementation, ("eager", "sdpa", "flash_attention_2"), f"{key}.attn_implementation")
        micro = self.max_micro_batch_size
        if isinstance(micro, float) and micro >= 1 and micro.is_integer():  # typed Any: 2e0 passes as 2.0
            raise UserError(f"{key}.max_micro_batch_size", integer_fix(micro))
        if micro is not None and micro != "auto":
            require(isinstance(micro, int) and not isinstance(micro, bool) and micro >= 1,
                    f"{key}.max_micro_batch_size", f"must be auto, an integer >= 1 or null (got {micro!r})")
        if self.pad_to_multiple_of is not None:
            require(self.pad_to_multiple_of >= 1, f"{key}.pad_to_multiple_of", "must be >= 1")


@dataclass
class TrainConfig:
    max_steps: Optional[int] = None
    max_tokens: Optional[int] = None
    epochs: Optional[float] = None
    batch_size: Optional[int] = None
    select: str = "last"
    select_metric: Optional[str] = None
    save: str = "none"
    log_every: int = 10
    measure_warmup_steps: int = 2
    progress: bool = True
    loss_chunk_tokens: Optional[int] = 256
    checkpoint_every: Optional[int] = None
    keep_checkpoints: Optional[int] = 1
    resume: str = "auto"

    def check(self, key: str) -> None:
        if self.max_steps is not None:
            require(self.max_steps >= 0, f"{key}.max_steps", "must be >= 0 (0 scores the untouched model)")
        if self.max_tokens is not None:
            require(self.max_tokens >= 1, f"{key}.max_tokens", "must be >= 1")
            for other in ("max_steps", "epochs"):
                require(getattr(self, other) is None, f"{key}.max_tokens", f"a budget in tokens and {key}.{other}="
                        f"{getattr(self, other)} both set; give one (null the other)")
        if self.epochs is not None:
            require(self.epochs > 0, f"{key}.epochs", "must be > 0")
        if self.batch_size is not None:
            require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        one_of(self.select, ("last", "best"), f"{key}.select")
        one_of(self.save, ("none", "last", "best"), f"{key}.save")
        require(self.log_every >= 1, f"{key}.log_every", "must be >= 1")
        require(self.measure_warmup_steps >= 0, f"{key}.measure_warmup_steps", "must be >= 0")
        if self.loss_chunk_tokens is not None:
            require(self.loss_chunk_tokens >= 1, f"{key}.loss_chunk_tokens", "must be >= 1, or null for no chunks")
        if self.checkpoint_every is not None:
            require(self.checkpoint_every >= 1, f"{key}.checkpoint_every", "must be >= 1, or null for none")
        if self.keep_checkpoints is not None:
            require(self.keep_checkpoints >= 1, f"{key}.keep_checkpoints", "must be >= 1, or null to keep all")


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: Optional[float] = None
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    min_8bit_size: int = 4096
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: Optional[int] = None

    def check(self, key: str) -> None:
        one_of(self.name, OPTIMIZERS, f"{key}.name")
        one_of(self.scheduler, SCHEDULERS, f"{key}.scheduler")
        if self.lr is not None:
            require(self.lr > 0, f"{key}.lr", f"must be > 0 (got {self.lr})")
        require(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{key}.betas",
                "must be two numbers in [0, 1), e.g. [0.9,0.999]")
        require(self.eps > 0, f"{key}.eps", "must be > 0")
        require(self.momentum >= 0, f"{key}.momentum", "must be >= 0")
        require(self.min_8bit_size >= 1, f"{key}.min_8bit_size", "must be >= 1 (elements)")
        if self.max_grad_norm is not None:
            require(self.max_grad_norm > 0, f"{key}.max_grad_norm", "must be > 0, or null for no clipping")
        require(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", "must be in [0, 1)")
        if self.warmup_steps is not None:
            require(self.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")

    def unused(self, key: str, cfg) -> list[Unused]:
        """The knobs of one optimizer that another optim.name leaves unused (config/unused.py)."""
        found = []
        if self.momentum and self.name != "sgd":
            found.append(Unused(f"{key}.momentum", f"{key}.name=sgd", f"{key}.name={self.name}"))
        if self.name != "adamw8bit":
            found.append(Unused(f"{key}.min_8bit_size", f"{key}.name=adamw8bit", f"{key}.name={self.name}"))
        return found


@dataclass
class HarnessConfig:
    """lm-evaluation-harness after training (tasks/harness.py); no tasks, no harness."""

    tasks: list[str] = field(default_factory=list)
    limit: Optional[int] = None
    num_fewshot: Optional[int] = None
    batch_size: int = 8
    max_gen_toks: Optional[int] = None
    data_dir: str = "../shared/data"
    include_path: Optional[str] = None

    def check(self, key: str) -> None:
        if self.tasks:
            require_extra("lm_eval", f"{key}.tasks")
        for name in ("limit", "batch_size", "max_gen_toks"):
            value = getattr(self, name)
            if value is not None:
                require(value >= 1, f"{key}.{name}", "must be >= 1, or null for the default")
        if self.num_fewshot is not None:
            require(self.num_fewshot >= 0, f"{key}.num_fewshot", "must be >= 0, or null for each task's own")
        if self.include_path is not None:
            require_kind(self.include_path, "folder", f"{key}.include_path",
                         "point it at a folder of harness task YAMLs")


@dataclass
class EvalConfig:
    every_steps: Optional[int] = None
    batch_size: Optional[int] = None
    max_samples: Optional[int] = None
    num_beams: Optional[int] = None
    max_new_tokens: Optional[int] = None
    harness: HarnessConfig = field(default_factory=HarnessConfig)

    def check(self, key: str) -> None:
        for name in ("every_steps", "batch_size", "max_samples", "num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None:
                require(value >= 1, f"{key}.{name}", "must be >= 1, or null for the default")
        self.harness.check(f"{key}.harness")

    def unused(self, key: str, cfg) -> list[Unused]:
        """The decoding knobs under a task that generates no text, and the harness's knobs without harness tasks
        (config/unused.py)."""
        found = []
        task = OmegaConf.to_object(cfg.task)
        if not task.generates():
            here = "task.generate_samples=0" if hasattr(task, "generate_samples") else f"task={task.name}"
            found += [Unused(f"{key}.{name}", "a task that generates text (e.g. task=synthetic_lm)", here)
                      for name in ("num_beams", "max_new_tokens") if getattr(self, name) is not None]
        if not self.harness.tasks:
            found += [Unused(f"{key}.harness.{name}", f"{key}.harness.tasks=[TASK,...]", f"{key}.harness.tasks=[]")
                      for name in ("limit", "num_fewshot", "batch_size", "max_gen_toks", "data_dir", "include_path")
                      if getattr(self.harness, name) is not None]
        return found


@dataclass
class Config:
    method: Any = MISSING
    model: ModelConfig = MISSING
    task: Any = MISSING
    hardware: HardwareConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    mode: str = "train"
    seed: int = 0
    debug: bool = False


def check(cfg: DictConfig, overrides: list[str] = ()) -> None:
    """Reject well-typed but invalid values with a `UserError` naming the key; `overrides`, the command line's
    KEY=VALUE list the config was composed with, for the rules on what the user said (`check_given`)."""
    known = {f.name for f in fields(Config)}
    extra = sorted(set(cfg.keys()) - known - {"hydra"})
    if extra:
        raise UserError(extra[0], f"no such top-level key; valid keys: {', '.join(sorted(known))}")
    check_numbers(cfg)
    one_of(cfg.mode, ("train", "profile", "plan"), "mode")
    check_seed(cfg.seed, "seed")
    for name in ("model", "hardware", "logger", "train", "optim", "eval", "profile", "plan", "method", "task"):
        OmegaConf.to_object(cfg[name]).check(name)
    check_learning_rates(cfg)
    if cfg.mode != "plan" and OmegaConf.to_object(cfg.model).saved_folder():  # a plan loads no weights
        require_weights(cfg.model.path, "model.path")
    OmegaConf.to_object(cfg.method).check_run(cfg)  # what the method cannot train with, set in other groups
    check_sharding(cfg)
    check_given(cfg, given_keys(overrides))
    given = unused.set_keys(overrides, config_dir(), cfg)
    OmegaConf.to_object(cfg.task).check_given("task", given)
    unused.check(cfg, given)
    require(not (cfg.eval.harness.tasks and cfg.hardware.shard == "fsdp"), "eval.harness.tasks",
            "the harness scores the model on rank 0 alone, and hardware.shard=fsdp splits it over the ranks; "
            "export it (train.save=last), then score the export unsharded: model.path=<run>/checkpoint/merged "
            "train.max_steps=0")
    if cfg.mode == "train" and cfg.train.select == "best":
        require(cfg.eval.every_steps is not None, "train.select",
                "best needs periodic evaluations; set eval.every_steps=N (or train.select=last)")
    if cfg.mode == "train":  # the steps the config alone gives (epochs need the data: the job checks again)
        steps, method = settle(cfg).steps, OmegaConf.to_object(cfg.method)
        if not (steps and method.may_refuse_length(steps, cfg.optim)):  # else the job checks the method's first
            within.check(cfg, steps, method.schedule_length(steps) if steps else None)
    if cfg.task.data_dir is not None and cfg.mode == "train":
        require_kind(cfg.task.data_dir, "folder", "task.data_dir", "point it at the folder holding the data files")


def check_seed(seed: int, key: str) -> None:
    """Refuse (`UserError` on `key`) a seed numpy cannot be seeded with: below 0 or above `SEED_MAX`."""
    require(0 <= seed <= SEED_MAX, key, f"{seed} is not between 0 and {SEED_MAX} (2**32 - 1, the seeds numpy "
            "takes); give a seed in that range")


def check_numbers(cfg: DictConfig) -> None:
    """Refuse (`UserError` naming the key) a float anywhere in the config that is not a finite number
    (inf, -inf, nan; in a list, the list's key is named)."""
    groups = {name: OmegaConf.to_container(cfg[name], resolve=True) if OmegaConf.is_config(cfg[name]) else cfg[name]
              for name in cfg.keys() if name != "hydra"}
    for key, value in _leaves(groups, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(key, f"must be finite (got {value}); give a number")


def check_learning_rates(cfg: DictConfig) -> None:
    """Refuse (`UserError` naming the key) a learning rate the optimizer would step with that float32 cannot
    hold (above `FLOAT32_MAX`, or above it once divided by 1 - beta1 as Adam's first step does: each method
    lists its learning rates, `MethodConfig.learning_rates`), and a weight decay that would zero or flip the
    weights at one of them (lr x weight_decay >= 1). Runs after the groups' checks: lr > 0, weight_decay >= 0
    and beta1 < 1 hold here."""
    settings = settle(cfg)
    bias_correction = 1 - cfg.optim.betas[0]  # Adam's first step moves by lr / (1 - beta1)
    for key, value in OmegaConf.to_object(cfg.method).learning_rates(settings.owners["lr"], settings.lr).items():
        require(value <= FLOAT32_MAX, key, f"a learning rate of {value:g} overflows the training dtype (float32 "
                f"holds at most {FLOAT32_MAX:.5g}), so the optimizer cannot step with it; give a smaller one")
        if value * cfg.optim.weight_decay >= 1:
            raise UserError("optim.weight_decay", f"{cfg.optim.weight_decay:g} at {key}={value:g}: each step multiplies "
                            f"a weight by 1 - lr x weight_decay = {1 - value * cfg.optim.weight_decay:.3g}, which "
                            f"zeroes or flips it; give optim.weight_decay below {1 / value:.3g}")
        require(value / bias_correction <= FLOAT32_MAX, key,
                f"a learning rate of {value:g} overflows the training dtype at the first step: an Adam step moves "
                f"by lr / (1 - optim.betas[0]) = {value / bias_correction:.5g}, and float32 holds at most "
                f"{FLOAT32_MAX:.5g}; give a smaller one")


def _leaves(node: Any, key: str):
    """(key, value) of every leaf under `node` (a container); a list's items under the list's key."""
    if isinstance(node, dict):
        for name, child in node.items():
            yield from _leaves(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for child in node:
            yield from _leaves(child, key)
    else:
        yield key, node


def check_sharding(cfg: DictConfig) -> None:
    """hardware.shard=fsdp: refuse, in one line, a method or setting FSDP is not sound for (the method
    declares why on its schema: `fsdp_refusal`; parallel/sharding.py does the sharding)."""
    if cfg.hardware.shard != "fsdp":
        return
    refusal = type(OmegaConf.to_object(cfg.method)).fsdp_refusal
    if refusal is not None:
        raise UserError("hardware.shard", f"{cfg.method.name} cannot be sharded: {refusal}; use hardware.shard=none "
                        "(data parallel), or a method that trains whole parameters (e.g. method=full)")
    if cfg.train.checkpoint_every is not None or cfg.train.select == "best":
        raise UserError("hardware.shard", "sharded runs write no mid-run checkpoint or best snapshot yet; unset "
                        "train.checkpoint_every and use train.select=last, or hardware.shard=none")
