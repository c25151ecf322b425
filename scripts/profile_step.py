"""Where a method's training step spends its time: torch.profiler over ftbench's timed steps, at the
`make bench-peers` CPU shape (llama-mini, 4 x 256 tokens, fp32, checkpointing) unless overrides say otherwise.

    PYTHONPATH=src python scripts/profile_step.py sparsegrad              # the step's operators, by share
    PYTHONPATH=src python scripts/profile_step.py sift --top 25 method.weight_grad=dense
    PYTHONPATH=src python scripts/profile_step.py sparsegrad --by-shape       # the products, by operand shapes

Runs one profile job in-process (mode=profile, tracer off, no logger, output in a temporary folder), marks each
optimizer step between the loop's two synchronizations as a `step` range, and sums the self CPU time of
every operator inside the last `--steps` of them. Prints each operator's share of that total, not absolute
times: shares stay comparable on a shared machine, absolute times do not (and the profiler slows every
operator, so the step time it shows is not the benchmark's). `--by-shape` prints the matrix products
instead (`aten::mm`, `aten::addmm`, `aten::bmm`), grouped by operand shapes and the operator that called
them, with milliseconds per call: two methods' tables side by side show which products one adds, and a
product that runs at an unusual rate for its size (e.g. one recomputed or stopped early).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ftbench.bench.peers.timing import DEFAULTS, FIXED, compose, pinned, with_defaults
from ftbench.engine import loop
from ftbench.job.run import run_job


def marked_synchronize(original):
    """`loop.synchronize`, with every other call opening (then closing) a `step` range."""
    open_range = []

    def synchronize(device: torch.device) -> None:
        original(device)
        if open_range:
            open_range.pop().__exit__(None, None, None)
        else:
            mark = record_function("step")
            mark.__enter__()
            open_range.append(mark)
    return synchronize


def step_ranges(events, steps: int) -> list[tuple[int, int]]:
    """(start, end) of the last `steps` `step` ranges (marked_synchronize)."""
    return sorted((e.time_range.start, e.time_range.end) for e in events if e.name == "step")[-steps:]


def shares(prof, steps: int) -> tuple[list[tuple[str, float, float]], float]:
    """(operator, share of the last `steps` steps' self CPU time, calls per step) by decreasing share, and
    that total in ms."""
    events = prof.events()
    ranges = step_ranges(events, steps)
    totals: dict[str, float] = collections.Counter()
    calls: dict[str, int] = collections.Counter()
    for event in events:
        if event.name != "step" and any(a <= event.time_range.start < b for a, b in ranges):
            totals[event.name] += event.self_cpu_time_total
            calls[event.name] += 1
    total = sum(totals.values())
    rows = [(name, t / total, calls[name] / len(ranges)) for name, t in totals.items()]
    return sorted(rows, key=lambda row: -row[1]), total / 1e3


PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm")


def products(prof, steps: int) -> list[tuple[str, str, str, float, float]]:
    """(operator, operand shapes, calling operator, ms per step, calls per step) of every matrix product in
    the last `steps` steps, by decreasing time (the profile must record shapes)."""
    events = prof.events()
    ranges = step_ranges(events, steps)
    totals: dict[tuple[str, str, str], float] = collections.Counter()
    calls: dict[tuple[str, str, str], int] = collections.Counter()
    for event in events:
        if event.name in PRODUCTS and any(a <= event.time_range.start < b for a, b in ranges):
            caller = event.cpu_parent.name if event.cpu_parent is not None else ""
            key = (event.name, " by ".join(" x ".join(map(str, s)) for s in event.input_shapes[:3] if s), caller)
            totals[key] += event.self_cpu_time_total
            calls[key] += 1
    rows = [(*key, t / 1e3 / len(ranges), calls[key] / len(ranges)) for key, t in totals.items()]
    return sorted(rows, key=lambda row: -row[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=3, help="timed steps profiled (after profile.warmup_steps)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by-shape", action="store_true", help="the matrix products by operand shapes instead")
    args = parser.parse_args()
    # the tracer off, as in the benchmark's timed runs (its dispatch mode would be a share of every step)
    overrides = with_defaults(with_defaults([*args.overrides, "logger=none", "profile.trace_memory=false"], FIXED),
                              DEFAULTS)
    overrides = [*overrides, f"method={args.method}", *pinned(args.method), f"profile.steps={args.steps}"]
    cfg = compose(overrides)
    loop.synchronize = marked_synchronize(loop.synchronize)
    with (tempfile.TemporaryDirectory() as out,
          profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof):
        run_job(cfg, Path(out), overrides=overrides)
    if args.by_shape:
        print(f"{args.method}: {args.steps} steps, matrix products (profiled times)")
        print("| operator | operands | called by | ms a step | calls a step | ms a call |\n|---|---|---|---|---|---|")
        for name, shapes, caller, per_step, count in products(prof, args.steps)[:args.top]:
            print(f"| {name} | {shapes} | {caller} | {per_step:.1f} | {count:.0f} | {per_step / count:.2f} |")
        return
    rows, total = shares(prof, args.steps)
    print(f"{args.method}: {args.steps} steps, {total:.0f} ms of operator self time (profiled)")
    print("| operator | share of the step | calls per step |\n|---|---|---|")
    for name, share, per_step in rows[:args.top]:
        print(f"| {name} | {100 * share:.1f} % | {per_step:.0f} |")
    print(f"| (the other {max(0, len(rows) - args.top)}) | {100 * sum(r[1] for r in rows[args.top:]):.1f} % | |")


if __name__ == "__main__":
    main()
