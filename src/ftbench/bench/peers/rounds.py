"""How many timed rounds the peers benchmark runs: rounds until every time ratio is known closely.

A round runs, for every method, one process in which ftbench and the method's peers take turns step
by step (paired.py), the methods in reverse order on odd rounds. A round gives one ratio per row:
the median, over its timed steps, of ftbench's step time / the time of the peer's step of the same
turn (every peer steps once, in order, just before each of ftbench's steps; with two peers, the
first one's pair has the second's step between). Adjacent steps share the machine's state of that
second, so what slows the machine for a few seconds slows both sides of a pair and cancels in it; a
ratio of the two sides' medians keeps it wherever it hit one side's steps more than the other's (on
a contended 2-core machine, one run's rounds of full fine-tuning against the plain loop: 0.97–1.12
as a ratio of medians, 0.96–0.99 as the median of step ratios; docs/results/peers.md, run 7). The
row's ratio is the mean over rounds and its spread the half-width of the 95 % confidence interval of
that mean (Student's t, scipy). Rounds go on until every row's half-width is at most `half_width`,
after an even number of rounds (whole forward-and-reverse pairs) and at least two (one round has no
spread), or until `max_rounds`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

HALF_WIDTH = 0.015  # the aim: two runs of the benchmark within ±0.03 of each other
MAX_ROUNDS = 16
CONFIDENCE = 0.95


def round_ratios(a: list[list[float] | None], b: list[list[float] | None]) -> list[float]:
    """One ratio per round in which both sides ran (None: that round's run failed): `step_ratio` of that
    round's step times, a[i] for ftbench and b[i] for the peer."""
    return [step_ratio(x, y) for x, y in zip(a, b) if x and y]


def step_ratio(ours: list[float], peer: list[float]) -> float:
    """The median of ours[j] / peer[j]: each timed step over the peer's step of the same turn, taken before it.
    Raises ValueError when the two sides timed different numbers of steps (they step in turn)."""
    if len(ours) != len(peer):
        raise ValueError(f"{len(ours)} steps timed against the peer's {len(peer)}: the sides step in turn")
    return statistics.median(x / y for x, y in zip(ours, peer))


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
