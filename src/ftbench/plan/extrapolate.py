"""Extrapolating traced step timelines op by op: in width, in micro-batch, in layers.

A timeline is the bytes live after every operator of the traced steps (plan_probe.py).
The peak of a larger run is not the extrapolated peak of the probes: where it
falls moves (the loss's backward at 1 layer, the last layer's backward at 32).
So every op is extrapolated, and the peak is taken afterwards.

To do that, an op of one probe is paired with the same op of the other:

- width: probes at widths w1 > w2 > w3 run the same ops; bytes after each op are
  a quadratic in w (weight-like tensors ~w², per-token ones ~w), interpolated
  through the three points and evaluated at w = 1.
- micro-batch and layers: a larger probe runs the same ops with repeats inserted
  (one more decoder layer in every pass, more loss chunks). Ops are paired from
  the front (the common prefix of op names) and from the back (the common
  suffix); an op both ways (a probe's only layer is its first and its last)
  takes the larger extrapolation. Bytes are linear in the layer count and in
  the micro-batch at a fixed position from either end, so a straight line
  through the two probes gives them at the planned size. Ops paired neither way
  (a data-dependent branch of an optimizer: one op more in one probe) move with
  the highest point of their phase run (an optimizer step's bytes barely move
  with the micro-batch, a backward's do).
- steps: a rotating method's probe traces one step per group; a step is paired
  with the other probe's step at the same position from the front or the back,
  whichever shares more ops.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Step:
    values: np.ndarray  # bytes live after each op
    phases: np.ndarray  # phase index of each op
    ops: list[str]
    sizes: list[int]  # elements of each op's (first) output: tells a layer's ops from the head's


def steps_of(points: list[tuple[int, int, str, int, int]]) -> list[Step]:
    """Split a probe's points (bytes, phase, op, step, output size) into steps."""
    out: dict[int, list] = {}
    for point in points:
        out.setdefault(point[3], []).append(point)
    return [Step(np.array([p[0] for p in pts], dtype=np.float64), np.array([p[1] for p in pts]),
                 [p[2] for p in pts], [p[4] for p in pts]) for _, pts in sorted(out.items())]


def lagrange_at_one(widths: list[float]) -> list[float]:
    """Weights that evaluate the polynomial through (w_i, v_i) at w = 1."""
    return [math.prod((1 - wj) / (wi - wj) for j, wj in enumerate(widths) if j != i) for i, wi in enumerate(widths)]


def at_full_width(runs: list[list[Step]], widths: list[float]) -> tuple[list[Step], bool]:
    """One timeline at width 1 from probes at `widths` (the first is the widest); and whether every
    op was paired across the widths. Where a step's op counts differ (a data-dependent branch in an
    optimizer: APOLLO's norm-growth limiter divides by a tensor or by a number), ops are paired within
    each phase run by aligning their names (`_width_pairs`); an op paired in every probe takes the
    quadratic, the others of the widest probe move with their step's extrapolated peak."""
    if len(runs) == 1:
        return runs[0], True
    weights = lagrange_at_one(widths)
    aligned, out = True, []
    for k, base in enumerate(runs[0]):
        others = [r[k] for r in runs]
        if all(len(s.ops) == len(base.ops) for s in others):
            values = sum(w * s.values for w, s in zip(weights, others))
        else:
            aligned = False
            peak = sum(w * s.values.max() for w, s in zip(weights, others))
            values = base.values + (peak - base.values.max())
            index = np.stack([_width_pairs(base, s) for s in others])
            paired = (index >= 0).all(axis=0)
            if paired.any():
                values[paired] = sum(w * s.values[index[i, paired]] for i, (w, s) in enumerate(zip(weights, others)))
        out.append(Step(values, base.phases, base.ops, base.sizes))
    return out, aligned


def _width_pairs(a: Step, b: Step) -> np.ndarray:
    """For each op of `a`, its index in `b` (-1: unpaired): within each phase run, the ops of the
    longest matching runs of op names (difflib's alignment: a few extra ops anywhere, e.g. one per
    tensor an optimizer branches on, leave every other op paired)."""
    index = np.full(len(a.ops), -1)
    runs_a, runs_b = _segments(a.phases), _segments(b.phases)
    if len(runs_a) != len(runs_b):
        runs_a, runs_b = [(0, len(a.ops))], [(0, len(b.ops))]
    for (sa, ea), (sb, eb) in zip(runs_a, runs_b):
        matcher = difflib.SequenceMatcher(None, a.ops[sa:ea], b.ops[sb:eb], autojunk=False)
        for i, j, size in matcher.get_matching_blocks():
            index[sa + i:sa + i + size] = np.arange(sb + j, sb + j + size)
    return index


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _segments(phases: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of one phase: forward, backward[, forward, backward...], optimizer step."""
    cuts = [0, *(np.flatnonzero(np.diff(phases)) + 1).tolist(), len(phases)]
    return list(zip(cuts[:-1], cuts[1:]))


def _pair(keys_a: list, keys_b: list) -> tuple[np.ndarray, np.ndarray]:
    """Ops of `a` paired with ops of `b`: (index into b from the front or -1, from the back or -1)."""
    n = len(keys_a)
    front = min(_common_prefix(keys_a, keys_b), n)
    back = min(_common_prefix(keys_a[::-1], keys_b[::-1]), n)
    by_front, by_back = np.full(n, -1), np.full(n, -1)
    by_front[:front] = np.arange(front)
    if back and len(keys_b) >= n:
        by_back[n - back:] = np.arange(n - back, n) + len(keys_b) - n
    return by_front, by_back


def extrapolate_step(a: Step, b: Step, xa: float, xb: float, x: float, by_size: bool) -> tuple[Step, float]:
    """Step `a` (at size xa) carried to size x through its pairing with step `b` (at size xb);
    and the share of `a`'s ops that were paired. Ops pair within the same phase run (forward,
    backward, optimizer step). `by_size`: ops pair only with ops of the same output size
    (between layer counts, where sizes do not change: the optimizer's identical per-tensor
    ops must not pair a layer's tensor with the head's)."""
    n = len(a.ops)
    t = (x - xa) / (xb - xa)
    keys_a = list(zip(a.ops, a.sizes)) if by_size else a.ops
    keys_b = list(zip(b.ops, b.sizes)) if by_size else b.ops
    runs_a, runs_b = _segments(a.phases), _segments(b.phases)
    if len(runs_a) != len(runs_b):
        runs_a, runs_b = [(0, n)], [(0, len(b.ops))]
    values = np.full(n, -np.inf)
    for (sa, ea), (sb, eb) in zip(runs_a, runs_b):
        for paired in _pair(keys_a[sa:ea], keys_b[sb:eb]):
            mine = np.flatnonzero(paired >= 0)
            if mine.size:
                va, vb = a.values[sa + mine], b.values[sb + paired[mine]]
                values[sa + mine] = np.maximum(values[sa + mine], va + t * (vb - va))
    unpaired = np.isneginf(values)
    for (sa, ea), (sb, eb) in zip(runs_a, runs_b):  # they move with their phase run's highest point
        lost = sa + np.flatnonzero(unpaired[sa:ea])
        if lost.size:
            values[lost] = a.values[lost] + t * (b.values[sb:eb].max() - a.values[sa:ea].max())
    return Step(values, a.phases, a.ops, a.sizes), 1 - unpaired.mean() if n else 1.0


def extrapolate(a: list[Step], b: list[Step], xa: float, xb: float, x: float, by_size: bool) -> list[Step]:
    """Timeline `a` (size xa) carried to size x through timeline `b` (size xb), step by step."""
    out = []
    for k, step in enumerate(a):
        candidates = {k, k + len(b) - len(a)} & set(range(len(b)))
        tried = [extrapolate_step(step, b[j], xa, xb, x, by_size) for j in sorted(candidates)]
        best = max(share for _, share in tried)
        chosen = [s for s, share in tried if share == best]
        out.append(Step(np.maximum.reduce([s.values for s in chosen]), step.phases, step.ops, step.sizes))
    return out


def peak(timeline: list[Step]) -> tuple[float, int, str]:
    """(bytes, phase index, op) at the highest point."""
    k = max(range(len(timeline)), key=lambda i: timeline[i].values.max())
    step = timeline[k]
    i = int(np.argmax(step.values))
    return float(step.values[i]), int(step.phases[i]), step.ops[i]


def phase_peaks(timeline: list[Step], phases: int) -> list[tuple[float, str]]:
    """The highest point of each phase: (bytes, op); (0, '') for a phase without ops."""
    out = []
    for phase in range(phases):
        best = (0.0, "")
        for step in timeline:
            where = np.flatnonzero(step.phases == phase)
            if where.size:
                i = where[int(np.argmax(step.values[where]))]
                if step.values[i] > best[0]:
                    best = (float(step.values[i]), step.ops[i])
        out.append(best)
    return out
