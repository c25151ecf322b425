"""Data parallel training over processes (torchrun, `accelerate launch`, SLURM tasks).

Every rank holds the whole model and trains on its own micro-batches (batches.py
deals micro-batch i of the one-process stream to rank i mod world size). After a
step's last micro-batch, `GradientSync.reduce` sums over ranks exactly the
gradients the optimizer is about to use (`method.optimizer_parameters()`), with
torch.distributed collectives (NCCL on GPUs, gloo on the CPU):

- dense gradients (full, LoRA, SIFT's and S2FT's trainable entries, the active
  group of HiFT/BAdam/LISA, fp32 masters of bf16 weights): one all-reduce (sum)
  per tensor, launched together and waited for together. Traffic is the
  trainable gradient, never the model: SIFT/S2FT send their selected entries
  only, and the rotating methods send whatever group is active at that step (the
  set follows each switch; nothing is registered ahead, as DDP's reducer would);
- sparse COO gradients (SparseGrad, MeProp: the top-k of each micro-batch): the
  indices and values of every rank are all-gathered and concatenated, exactly as
  one process concatenates its accumulated micro-batches.

Each micro-batch's loss is weighted by its share of the *global* step's loss
positions (one all-reduce of four counts before the forward), so the summed
gradient and the logged loss (`mean_loss`) are those of one process running the
whole batch. DDP (accelerate's `prepare_model`) is not used: its reducer
averages rather than follows a rotating trainable set, cannot see gradients the
fp32 masters' hooks take off the weights, and reduces sparse gradients densely.
What it would buy, the overlap of communication with the backward, is lost:
the reduction runs after the backward.

Single-process runs get the same object with every collective a no-op.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from ftbench.errors import UserError
from ftbench.measure.meters import tensor_bytes
from ftbench.results import Memory


def active() -> bool:
    """Whether this process is one rank of an initialized process group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes result.json, logs, checkpoints and exports."""
    return rank() == 0


def broadcast_object(value):
    """Rank 0's `value` on every rank (a picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work):
    """`work()` on rank 0 (e.g. moving a run's old files aside), its value (or the UserError it
    raised) on every rank."""
    outcome = None
    if is_main():
        try:
            outcome = work()
        except UserError as exc:
            outcome = exc
    return broadcast_object(outcome)


def scratch(job_end) -> Path:
    """A private folder, removed when the job ends: where ranks other than 0 put what an
    evaluation writes (generations), so only rank 0's files reach the run's folder."""
    return Path(job_end.enter_context(tempfile.TemporaryDirectory(prefix="ftbench-rank-")))


def gather_objects(value) -> list | None:
    """Every rank's `value`, in rank order, on rank 0 (None on the others)."""
    if not active():
        return [value]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(value, out, dst=0)
    return out


def smallest(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value` (e.g. the micro-batch each rank's memory allows)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


class GradientSync:
    """The per-step collectives of data parallel training (module docstring); no-ops on one process.

    `step_bytes` lists, per optimizer step, the bytes this rank sent into the gradient
    collectives (all-reduce: the gradients' bytes; all-gather: its indices and values)."""

    def __init__(self, device: torch.device, sharded: bool = False, accumulation: int = 1):
        self.size = world_size()
        self.sharded, self.accumulation = sharded, accumulation  # sharded: FSDP reduces during the backward
        self.device = device  # the process group's backend serves it: NCCL on a GPU, gloo on the CPU
        self.step_bytes: list[int] = []

    def total_counts(self, local: list[int]) -> list[int]:
        """Element-wise sum over ranks of a few step counts (samples, tokens, loss positions)."""
        if self.size == 1:
            return list(local)
        t = torch.tensor(local, dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def mean_loss(self, step_loss: torch.Tensor) -> torch.Tensor:
        """The global step loss: each rank's share is already weighted by global loss positions, so it is a sum."""
        if self.size == 1:
            return step_loss
        t = step_loss.detach().float().to(self.device)
        dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a stop requested by a signal to one rank)."""
        if self.size == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def reduce(self, params: list[torch.Tensor]) -> None:
        """Sum the gradients of `params` over ranks, in place. Every rank must pass the same tensors
        in the same order with the same gradients present (the method's optimizer parameters are)."""
        if self.size == 1:
            return
        grads = [p for p in params if p.grad is not None]
        if self.sharded:  # FSDP reduce-scattered each micro-batch's whole gradient (sharding.py)
            self.step_bytes.append(self.accumulation * sum(tensor_bytes(p.grad) for p in grads))
            return
        dense = [p.grad for p in grads if not p.grad.is_sparse]
        sent = 0
        works = []
        for g in dense:
            staged = g if g.device == self.device else g.to(self.device)
            works.append((dist.all_reduce(staged, async_op=True), g, staged))
            sent += tensor_bytes(g)
        for p in grads:
            if p.grad.is_sparse:
                sent += tensor_bytes(p.grad)
                p.grad = self._gather_sparse(p.grad)
        for work, g, staged in works:
            work.wait()
            if staged is not g:
                g.copy_(staged)
        self.step_bytes.append(sent)

    def _gather_sparse(self, grad: torch.Tensor) -> torch.Tensor:
        """A COO gradient holding every rank's entries, rank by rank (duplicates are summed by its reader)."""
        # _indices/_values: the public indices()/values() demand a coalesced tensor, and coalescing here
        # would sort and sum entries only for the receiver to do it again.
        indices, values = grad._indices(), grad._values()
        n = torch.tensor([values.shape[0]], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.size)]
        dist.all_gather(sizes, n)
        longest = int(max(s.item() for s in sizes))
        padded_i = torch.zeros((indices.shape[0], longest), dtype=indices.dtype, device=self.device)
        padded_v = torch.zeros((longest,), dtype=values.dtype, device=self.device)
        padded_i[:, :indices.shape[1]] = indices.to(self.device)
        padded_v[:values.shape[0]] = values.to(self.device)
        all_i = [torch.empty_like(padded_i) for _ in range(self.size)]
        all_v = [torch.empty_like(padded_v) for _ in range(self.size)]
        dist.all_gather(all_i, padded_i)
        dist.all_gather(all_v, padded_v)
        kept = [int(s.item()) for s in sizes]
        cat_i = torch.cat([i[:, :k] for i, k in zip(all_i, kept)], dim=1).to(grad.device)
        cat_v = torch.cat([v[:k] for v, k in zip(all_v, kept)]).to(grad.device)
        return torch.sparse_coo_tensor(cat_i, cat_v, grad.shape, check_invariants=False)

    def summary(self) -> dict:
        """result.json's `distributed` section (without the per-rank peaks, which `record` adds)."""
        steps = self.step_bytes
        return {"world_size": self.size, "sharding": "fsdp" if self.sharded else None, "rank_split": "micro-batch i of the one-process stream goes to rank i mod world_size",
                "backend": str(dist.get_backend()) if self.size > 1 else None,
                "reduced_bytes_per_step": {"mean": sum(steps) / len(steps) if steps else 0,
                                           "max": max(steps, default=0), "first_steps": steps[:32]}}


def record(sync: GradientSync, memory: Memory) -> dict:
    """result.json's `distributed` section: world size, gradient bytes per step and every rank's peaks
    (bytes, gathered to rank 0; a collective: every rank calls it)."""
    mine = {"rank": rank(), "train_peak_allocated_bytes": memory.train_peak_allocated_bytes,
            "cpu_peak_rss_bytes": memory.cpu_peak_rss_bytes}
    return {**sync.summary(), "rank_peaks": gather_objects(mine)}


def launch_overrides(argv: list[str], config_file: Path) -> list[str]:
    """Hydra overrides that make the ranks of one launch (torchrun, `accelerate launch`: WORLD_SIZE
    in the environment) one run: the process group is started (accelerate's PartialState, from
    the launcher's variables), every rank takes rank 0's clock for `${now:...}` in
    hydra.run.dir / hydra.sweep.dir (so all write into one folder), and ranks other than 0 write
    no Hydra files, no log file and no sweep report. No overrides on one process."""
    import os
    import re
    from datetime import datetime

    from accelerate import PartialState
    from omegaconf import OmegaConf

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    PartialState()  # init_process_group from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    now = datetime.fromisoformat(broadcast_object(datetime.now().isoformat()))
    hydra_cfg = OmegaConf.to_container(OmegaConf.load(config_file).hydra, resolve=False)
    given = {key: value for key, _, value in (a.lstrip("+").partition("=") for a in argv if "=" in a)}
    out = []
    for key, default in (("hydra.run.dir", hydra_cfg["run"]["dir"]), ("hydra.sweep.dir", hydra_cfg["sweep"]["dir"])):
        folder = re.sub(r"\$\{now:([^}]*)\}", lambda m: now.strftime(m.group(1)), given.get(key, default))
        out.append(f"{key}={folder}")
    if not is_main():
        out += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none",
                "~hydra.callbacks.report"]
    return out


def join_job_tasks() -> None:
    """Inside a submitit job of several tasks (hydra/launcher=submitit_slurm with tasks_per_node or nodes
    above 1, conf/hydra/launcher/slurm.yaml): each task is one rank. Export what torchrun would
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, from submitit's reading of SLURM's
    variables) and start the process group. Elsewhere (one task, torchrun, no submitit) nothing."""
    import os

    if "SUBMITIT_EXECUTOR" not in os.environ or dist.is_initialized():
        return
    import submitit
    from accelerate import PartialState

    if submitit.JobEnvironment().num_tasks <= 1:
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # LOCAL_RANK picks the GPU
    PartialState()
    if not is_main():  # Hydra set up this task's log file before it became a rank: only rank 0 keeps one
        import logging

        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
