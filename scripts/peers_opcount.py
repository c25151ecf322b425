"""Operators per training step: ftbench's loop against a peer's, counted, not timed (noise-free).

    PYTHONPATH=src python scripts/peers_opcount.py full torch      # lora peft | badam badam

A shared machine makes step times noisy; the operators a step dispatches are
not. Each side runs in this process under a counting dispatch mode, once with
2 and once with 1 profile step; the difference is one step's operators. Prints
both totals and every operator whose count differs. Shape: llama-mini, 2 x 32
tokens, fp32, checkpointing (the operator sequence does not depend on sizes).
"""

from __future__ import annotations

import collections
import shutil
import sys
import tempfile
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

from ftbench.bench.peers.loop import train
from ftbench.bench.peers.timing import FIXED, Benchmark, compose, pinned
from ftbench.job.run import run_job

SHAPE = ["model=llama-mini", "profile.batch_size=2", "profile.seq_len=32", "hardware.gradient_checkpointing=true",
         "profile.warmup_steps=0"]


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.name()] += 1
        return func(*args, **(kwargs or {}))


def ftbench_ops(method: str, steps: int, out: Path) -> collections.Counter:
    cfg = compose([*SHAPE, *FIXED, f"method={method}", *pinned(method), f"profile.steps={steps}",
                   "profile.trace_memory=false"])
    with Count() as count:
        run_job(cfg, out / f"{method}-{steps}")
    return count.ops


def peer_ops(method: str, peer: str, steps: int, out: Path) -> collections.Counter:
    spec = Benchmark([method], SHAPE, out, 1, 0).spec(peer, trace=False, steps=steps)
    with Count() as count:
        train(spec)
    return count.ops


def main(method: str, peer: str) -> None:
    out = Path(tempfile.mkdtemp())
    try:
        ours = ftbench_ops(method, 2, out)
        ours.subtract(ftbench_ops(method, 1, out))
        theirs = peer_ops(method, peer, 2, out)
        theirs.subtract(peer_ops(method, peer, 1, out))
    finally:
        shutil.rmtree(out)
    print(f"operators per step: ftbench {method} {sum(ours.values())}, peer {peer} {sum(theirs.values())}")
    for name in sorted(set(ours) | set(theirs)):
        if ours[name] != theirs[name]:
            print(f"  {name}: ftbench {ours[name]}, peer {theirs[name]}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
