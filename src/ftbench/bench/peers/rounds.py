"""How many timed rounds the peers benchmark runs: rounds until every time ratio is known closely.

A round runs, for every method, one process in which ftbench and the method's peers take turns
step by step (paired.py), the methods in reverse order on odd rounds. A round gives one ratio per
row (ftbench's median step time / the peer's, both from that process); the row's ratio is the mean
over rounds and its spread the half-width of the 95 % confidence interval of that mean (Student's
t, scipy). Rounds go on until every row's half-width is at most `half_width`, after an even number
of rounds (whole forward-and-reverse pairs) and at least two (one round has no spread), or until
`max_rounds`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

HALF_WIDTH = 0.015  # the aim: two runs of the benchmark within ±0.03 of each other
MAX_ROUNDS = 16
CONFIDENCE = 0.95


def paired_ratios(a: list[float | None], b: list[float | None]) -> list[float]:
    """a[i] / b[i] for every round i in which both sides ran (None: that round's run failed)."""
    return [x / y for x, y in zip(a, b) if x is not None and y]


def spread(ratios: list[float]) -> dict:
    """Mean, 95 % half-width (None below two rounds), lowest and highest of per-round ratios."""
    n = len(ratios)
    half = None
    if n >= 2:
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * statistics.stdev(ratios) / math.sqrt(n)
    return {"mean": statistics.fmean(ratios), "half_width": half, "low": min(ratios), "high": max(ratios),
            "rounds": n}


@dataclass(frozen=True)
class Rounds:
    """The stopping rule: `done(spreads, rounds)` with one spread (or None: a row that did not run) per row."""

    max_rounds: int = MAX_ROUNDS
    half_width: float = HALF_WIDTH

    def done(self, spreads: list[dict | None], rounds: int) -> bool:
        if rounds >= self.max_rounds:
            return True
        if rounds < 2 or rounds % 2:
            return False
        return all(s["half_width"] <= self.half_width for s in spreads if s is not None and s["rounds"] >= 2)
