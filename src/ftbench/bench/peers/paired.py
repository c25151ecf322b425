"""One ftbench method and its peers timed in one process, step by step.

    python -m ftbench.bench.peers.paired SPEC.json     # timing.py writes SPEC and reads what this writes

Two runs of the same workload in two processes one after the other differ on a
shared CPU by up to ±5 % in step time (cache, frequency and allocator state of
each process), so a ratio of two processes' medians carries that noise. Here
the peers step inside ftbench's own run: ftbench's loop draws a step's
micro-batches before it starts the step's clock, and the training stream
(`Job.training_batches`) is wrapped so that drawing the first micro-batch of
each step first runs one step of every peer (each timed by its own loop,
`loop.PeerRun`). The sides alternate, peer, ftbench, peer, ftbench, ..., in one
process: whatever drifts falls on both within a second.

Both sides are otherwise what they are alone: ftbench's run is `mode=profile`
as its CLI runs it (the same config, result.json in the spec's folder), the
peer keeps a random state of its own (its dropout never draws from ftbench's),
and each peer takes as many steps as ftbench, so its LR schedule has ftbench's
length. A peer's step time is the median over the steps paired with ftbench's
measured ones (those after its warm-up). Memory is not measured here (both
models are held at once): timing.py measures it in a process per entry.

Writes `peers.json` in the folder: per peer, status, error, the measured step
times and their median, the first and last loss, trainable count, package.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

from ftbench.bench.peers.loop import PeerRun
from ftbench.errors import exception_line
from ftbench.job.run import Job

FILENAME = "peers.json"


class Paced:
    """One peer stepped beside ftbench: its run (None until built, or once it failed), its times, its error."""

    def __init__(self, spec: dict):
        self.spec, self.run, self.times, self.error = spec, None, [], None

    def build(self, total_steps: int) -> None:
        try:
            self.run = PeerRun(self.spec, total_steps)
        except Exception as exc:  # the table shows why a peer cannot run
            self.fail(exc)

    def step(self) -> None:
        if self.run is None:
            return
        try:
            self.times.append(self.run.step())
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: Exception) -> None:
        self.run, self.error = None, exception_line(exc)
        print(f"peer {self.spec['peer']}: {self.error}", file=sys.stderr)

    def record(self, measure_from: int) -> dict:
        """What timing.py reads (records.peer_record; no peak: memory is measured apart): the steps paired
        with ftbench's measured steps (from `measure_from` on)."""
        times = self.times[measure_from:]
        ok = self.error is None and bool(times)
        run = self.run
        return {"peer": self.spec["peer"], "status": "ok" if ok else "failed",
                "error": self.error or (None if ok else "no step ran"), "step_times_s": times,
                "step_time_s_p50": statistics.median(times) if ok else None,
                "loss_first": run.losses[0] if ok else None, "loss_last": run.losses[-1] if ok else None,
                "trainable": sum(p.numel() for p in run.model.parameters() if p.requires_grad) if ok else None,
                "package": run.trainable.package if ok else None, "peak_bytes": None}


class PairedJob(Job):
    """ftbench's job, with a step of every peer before each of its own steps (outside its clock)."""

    def __init__(self, cfg, output_dir: Path, overrides: list[str], peers: list[Paced]):
        super().__init__(cfg, output_dir, overrides)
        self.peers = peers

    def training_batches(self, start: int) -> Iterator[dict]:
        for peer in self.peers:  # built now: their schedules take the job's step count
            peer.build(self.spec.steps)
        return paced(super().training_batches(start), self.spec.accumulation, self.peers)


def paced(batches: Iterator[dict], accumulation: int, peers: list[Paced]) -> Iterator[dict]:
    """`batches`, with one step of every peer before each `accumulation`-th micro-batch (a step's first)."""
    for i, batch in enumerate(batches):
        if i % accumulation == 0:
            for peer in peers:
                peer.step()
        yield batch


def main(argv: list[str] | None = None) -> int:
    """Run SPEC.json's pair ({overrides, folder, peers: [peer spec]}); exit with ftbench's exit code."""
    # timing.py's compose (Hydra's, as the benchmark composes every run); timing.py imports this module
    from ftbench.bench.peers.timing import compose
    from ftbench.quiet import quiet_libraries, quiet_transformers

    spec = json.loads(Path((argv if argv is not None else sys.argv[1:])[0]).read_text())
    quiet_libraries()
    quiet_transformers()
    folder = Path(spec["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    peers = [Paced(peer) for peer in spec["peers"]]
    job = PairedJob(compose(spec["overrides"]), folder, spec["overrides"], peers)
    code = job.run()
    measure_from = job.spec.measure_from if hasattr(job, "spec") else 0
    (folder / FILENAME).write_text(json.dumps([p.record(measure_from) for p in peers], indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
