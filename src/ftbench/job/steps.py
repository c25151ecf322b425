"""The building steps of one job, in the order `run.Job.build` calls them: set-up, data, model,
method and optimizer, the training spec, the data-parallel sync. Each is a plain function of what
the steps before it built; the test helpers (`tests/helpers.py` `train_steps`) and the planner's probes
(`plan/probe.py`) wire a training run from the same pieces (`models.loading.configure_model`,
`methods.base.optimizer_for`, `methods.base.scheduler_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from ftbench.config import within
from ftbench.engine import batches
from ftbench.engine.batches import to_device
from ftbench.engine.hardware import (
    Hardware,
    make_accelerator,
    resolve,
    restored_process_settings,
    split_batch,
)
from ftbench.engine.loop import TrainSpec
from ftbench.engine.loss import make_loss
from ftbench.job import checkpoint, preflight
from ftbench.measure.meters import MemoryMeter
from ftbench.methods import build_method
from ftbench.methods.base import Method, MethodContext, optimizer_for
from ftbench.models.architecture import closing_token
from ftbench.models.loading import configure_model, load_model
from ftbench.parallel import distributed, sharding
from ftbench.plan import micro_batch
from ftbench.progress import Work

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """The job's device and the meters that watch it."""

    hw: Hardware
    accelerator: object  # accelerate.Accelerator
    device: torch.device
    meter: MemoryMeter
    profiling: bool
    sharded: bool = False  # hardware.shard=fsdp on several processes (sharding.py): set once the method is ready


def setup(cfg: DictConfig, job_end: ExitStack) -> Setup:
    """Hardware resolved (restored at the job's end), the seed set, the accelerator made."""
    from accelerate.utils import set_seed

    job_end.enter_context(restored_process_settings())
    hw = resolve(cfg.hardware)
    set_seed(cfg.seed)
    accelerator = make_accelerator(hw.device)
    profiling = cfg.mode == "profile"
    meter = MemoryMeter(accelerator.device, trace=profiling and cfg.profile.trace_memory)
    return Setup(hw, accelerator, accelerator.device, meter, profiling)


def data(cfg: DictConfig) -> preflight.Inputs:
    """Tokenizer and task, checked against the model's config before any weight loads (preflight.py)."""
    return preflight.inputs(cfg)


def model(cfg: DictConfig, inputs: preflight.Inputs, s: Setup) -> torch.nn.Module:
    """The model for the task's head, on the job's device and precision (models.py)."""
    built = load_model(cfg.model, inputs.head, inputs.num_labels, s.device, s.hw.precision,
                       s.hw.attn_implementation, shape_overrides=inputs.shape_overrides)
    return configure_model(built, inputs.pad_id, s.hw.gradient_checkpointing)


class Feed:
    """Where the job's micro-batches come from and what one costs: the training stream (the task's
    shuffled examples, or random tokens when profiling), the loss of one micro-batch under the
    job's autocast, and the micro-batch size that fits (hardware.max_micro_batch_size)."""

    def __init__(self, cfg: DictConfig, inputs: preflight.Inputs, model: torch.nn.Module, s: Setup,
                 batch_size: int):
        self.cfg, self.task, self.head, self.num_labels = cfg, inputs.task, inputs.head, inputs.num_labels
        self.s, self.batch_size, self.vocab = s, batch_size, model.config.vocab_size
        self.model = model
        self.chunk_tokens = cfg.train.loss_chunk_tokens
        self.loss_fn = make_loss(model, inputs.head, self.chunk_tokens)  # serves the model once wrapped too
        self.fits: dict[str, dict] = {}  # hardware.max_micro_batch_size=auto: what the probes measured

    def stream(self, seed: int, micro: int, start: int = 0, split: bool = True) -> Iterator[dict]:
        """Endless micro-batches of `micro` sequences from the `start`-th on (on the CPU); this rank's
        share when data parallel (batches.py), or with `split=False` the same ones on every rank."""
        cfg, s = self.cfg, self.s
        rank, world = (distributed.rank(), distributed.world_size()) if split else (0, 1)
        if s.profiling:
            return batches.random_tokens(micro, cfg.profile.seq_len, self.vocab, self.head, self.num_labels,
                                         seed + 100_003 * rank, start, closing_token(self.model.config, self.head))
        collate = lambda examples: self.task.collate(examples, s.hw.pad_to_multiple_of)  # noqa: E731
        return batches.shuffled(self.task.train_examples(), micro, collate, seed, rank, world, start,
                                key=self.batch_key)

    @property
    def batch_key(self) -> str:
        """The batch size's key the user set: train.batch_size, else task.batch_size."""
        return "train.batch_size" if self.cfg.train.batch_size else "task.batch_size"

    def steps_for_tokens(self, tokens: int, micro: int) -> int:
        """The optimizer steps until the training stream has given `tokens` tokens (train.max_tokens;
        batches.steps_for_tokens), for this run's seed, batch, micro-batch and processes."""
        lengths = [len(e["input_ids"]) for e in self.task.train_examples()]
        return batches.steps_for_tokens(lengths, self.batch_size, micro, self.cfg.seed, tokens,
                                        distributed.world_size(), ("train.max_tokens", self.batch_key, "train.max_steps"))

    def tokens_for_steps(self, steps: int, micro: int) -> int:
        """The fewest tokens a train.max_tokens budget buys `steps` steps with (`steps_for_tokens` read
        backwards: batches.tokens_for_steps): a refusal's advice under a token budget."""
        lengths = [len(e["input_ids"]) for e in self.task.train_examples()]
        return batches.tokens_for_steps(lengths, self.batch_size, micro, self.cfg.seed, steps,
                                        distributed.world_size())

    def micro_loss(self, m: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The loss of one micro-batch (moved to the device) under the job's autocast."""
        with self.s.hw.autocast():
            return self.loss_fn(m, to_device(batch, self.s.device))

    def max_micro(self, what: str, optimizer_state: int = 0) -> int | None:
        """hardware.max_micro_batch_size, or under `auto` the largest that fits (micro_batch.py probes
        the longest sequence; `optimizer_state` bytes are held back for the optimizer)."""
        hw, cfg = self.s.hw, self.cfg
        if hw.max_micro_batch_size != "auto":
            return hw.max_micro_batch_size
        per_rank = split_batch(self.batch_size, None, distributed.world_size())[0]
        sequence = next(self.stream(cfg.seed, 1)) if self.s.profiling else self.task.collate(
            [max(self.task.train_examples(), key=lambda e: len(e["input_ids"]))], hw.pad_to_multiple_of)
        chosen = micro_batch.planned(cfg, hw, self.head, self.model, sequence, per_rank, distributed.world_size(),
                                   what) or \
            micro_batch.batch_fit(self.model, self.micro_loss, sequence, per_rank, self.s.device, optimizer_state, what)
        self.fits[what] = chosen.summary()
        return distributed.smallest(chosen.micro_batch_size, self.s.device)  # ranks must agree: they step together

    def calibration(self, micro: int) -> Callable[[int], Iterator[dict]]:
        """`n -> n` micro-batches on the device, from a stream of their own (never trained on)."""
        cfg = self.cfg

        def calibration_batches(n):
            it = self.stream(cfg.seed + 10_007, micro, split=False)  # every rank selects alike, as one process
            with Work("calibration", n, "batches", cfg.train.progress and distributed.is_main()) as work:
                for _ in range(n):
                    yield to_device(next(it), self.s.device)
                    work.advance()

        return calibration_batches


def method_and_optimizer(cfg: DictConfig, feed: Feed, s: Setup, output_dir: Path, job_end: ExitStack,
                         lr: float) -> tuple[torch.nn.Module, Method, torch.optim.Optimizer, int | None]:
    """Build the method, let it check `feed.model`'s structure (`Method.check_model`: a refusal costs no
    calibration) and prepare it (calibrating on micro-batches of the size that fits, when its settings
    calibrate: `MethodConfig.calibrates`), and make its optimizer. Returns (model, method, optimizer,
    calibration micro-batch size or None when it does not calibrate)."""
    method = build_method(cfg.method)
    job_end.callback(method.close)
    method.check_model(feed.model, feed.head)
    calibration_micro = split_batch(feed.batch_size, feed.max_micro("calibration"), distributed.world_size())[0] \
        if method.cfg.calibrates() else None
    ctx = MethodContext(head=feed.head, device=s.device,
                        precision=s.hw.precision, gradient_checkpointing=s.hw.gradient_checkpointing, seed=cfg.seed,
                        calibration_batches=_undeclared if calibration_micro is None else feed.calibration(
                            calibration_micro), loss=feed.micro_loss,
                        output_dir=output_dir if distributed.is_main() else None)
    model = method.prepare(feed.model, ctx)
    s.sharded = sharding.shard(model, cfg)  # FSDP2 before the optimizer sees the parameters
    feed.model = model
    return model, method, optimizer_for(method, model, cfg.optim, lr), calibration_micro


def _undeclared(n: int) -> Iterator[dict]:
    """The calibration batches of a method whose config says it does not calibrate: drawing one is a bug."""
    raise RuntimeError("prepare drew calibration batches, but the method's config.calibrates() says it does not")


def train_spec(cfg: DictConfig, method: Method, feed: Feed, s: Setup, calibration_micro: int | None,
               steps_asked: int | None, resumed: tuple[Path, int] | None) -> TrainSpec:
    """The micro-batch that fits the optimizer's state too, the steps and the measured window.
    `steps_asked` is the training run's step count (profiling counts its own; None under
    train.max_tokens: counted here, once the micro-batch is known). `resumed`: (checkpoint, the
    micro-batch it was made with) of the run to continue (checkpoint.recorded_micro_batch): under
    `auto` that micro-batch is kept, so the run continues bitwise; raises UserError
    (hardware.max_micro_batch_size) when it no longer fits. The gradients the probes left are dropped."""
    profiling = s.profiling
    optimizer_state = micro_batch.predicted_optimizer_state_bytes(method.trainable_size()[1], cfg.optim)
    scoring_only = not profiling and steps_asked == 0  # no step: the calibration fit (or its own) sizes the eval
    training_micro = (calibration_micro or feed.max_micro("evaluation")) if scoring_only else \
        feed.max_micro("training", optimizer_state)
    if resumed is not None and s.hw.max_micro_batch_size == "auto" and not scoring_only:
        training_micro = checkpoint.kept_micro_batch(*resumed, training_micro)
    micro, accumulation = split_batch(feed.batch_size, training_micro, distributed.world_size())
    method.discard_grads(feed.model)
    if profiling:
        warmup = method.warmup_steps(cfg.profile.warmup_steps, cfg.profile.steps)  # HiFT: past first visits
        steps, measure_from = warmup + cfg.profile.steps, warmup
    else:
        budget = within.STEPS  # what a refusal advises to lengthen the run
        if steps_asked is None:  # train.max_tokens (knobs.settle)
            steps_asked = feed.steps_for_tokens(cfg.train.max_tokens, micro)
            log.info(f"train.max_tokens={cfg.train.max_tokens}: {steps_asked} steps of {feed.batch_size} examples")
            budget = within.Budget(lambda n: feed.tokens_for_steps(n, micro))
        steps, measure_from = steps_asked, min(cfg.train.measure_warmup_steps, steps_asked - 1)
        if steps:  # the method's own schedule first: the run-wide knobs' advice then holds for a run it takes
            method.check_length(steps, cfg.optim, budget)
        within.check(cfg, steps, method.schedule_length(steps), budget)  # knobs the run cannot reach: refused
    return TrainSpec(steps=steps, micro_batch_size=micro, accumulation=accumulation, measure_from=measure_from,
                     max_grad_norm=cfg.optim.max_grad_norm, eval_every=None if profiling else cfg.eval.every_steps,
                     log_every=cfg.train.log_every, progress=cfg.train.progress and distributed.is_main())


def distribute(s: Setup, spec: TrainSpec) -> distributed.GradientSync:
    """Data parallelism when the job runs on several processes: the per-step collectives that sum
    the trainable gradients over ranks (distributed.py; FSDP's own reduce-scatter when sharded). The
    model is not wrapped (DDP's reducer follows neither rotating nor sparse trainable sets)."""
    return distributed.GradientSync(s.device, s.sharded, spec.accumulation)

