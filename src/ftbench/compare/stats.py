"""The statistics of a comparison: intervals over seeds, paired tests, the lr choice, time to target.

Sources: the Student's t interval of a mean and the paired t-test (scipy.stats.t, scipy.stats.ttest_rel);
no normality check is possible at n = 3, which is why the report says which interval it draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

SAME = 1e-12  # differences within this fraction of the values' largest magnitude are equal (float rounding)


@dataclass(frozen=True)
class Interval:
    """The mean of `n` values and the half-width of its two-sided `level` Student's t interval
    (None when n < 2)."""

    mean: float
    half_width: float | None
    n: int
    level: float

    def __str__(self) -> str:
        return f"{self.mean:.4f}" if self.half_width is None else f"{self.mean:.4f} ± {self.half_width:.4f}"


def interval(values: list[float], level: float = 0.95) -> Interval:
    """Mean and Student's t interval over seeds. Raises ValueError on no values."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, None, n, level)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n), n, level)


@dataclass(frozen=True)
class Paired:
    """A paired-over-seeds t-test of arm A against arm B: the mean difference A - B, its p-value and
    the verdict in words."""

    difference: float
    p: float | None
    n: int
    verdict: str


def paired(a: dict[int, float], b: dict[int, float], alpha: float, higher_is_better: bool = True) -> Paired:
    """Test the arms' values on the seeds both have (scipy.stats.ttest_rel, two-sided). Fewer than two shared
    seeds give no test. Differences that do not vary over the seeds (to within rounding, SAME) leave the test
    undefined (no spread to weigh the mean difference against): identical values give p = 1 (the limit of the
    test as the differences vanish, the same run under two labels); the same nonzero difference at every seed
    gives no test (p None), never the p = 0 of a t statistic divided by zero."""
    seeds = sorted(set(a) & set(b))
    n = len(seeds)
    diffs = [a[s] - b[s] for s in seeds]
    difference = sum(diffs) / n if n else math.nan
    if n < 2:
        return Paired(difference, None, n, f"no test at n = {n}")
    scale = SAME * max(abs(v) for s in seeds for v in (a[s], b[s]))
    if max(diffs) - min(diffs) <= scale:
        if abs(difference) <= scale:
            return Paired(difference, 1.0, n, f"not distinguishable at n = {n}")
        return Paired(difference, None, n, f"no test at n = {n}: the same difference at every seed")
    p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    if p >= alpha or math.isnan(p):
        return Paired(difference, p, n, f"not distinguishable at n = {n}")
    better = (difference > 0) == higher_is_better
    return Paired(difference, p, n, "better" if better else "worse")


def choose(scores: dict[float, float | None], higher_is_better: bool = True) -> float | None:
    """The lr with the best validation score (None scores: failed runs, left out); on a tie the smaller lr.
    None when no run scored."""
    scored = {lr: v for lr, v in scores.items() if v is not None and not math.isnan(v)}
    if not scored:
        return None
    best = max(scored.values()) if higher_is_better else min(scored.values())
    return min(lr for lr, v in scored.items() if v == best)


def target(fraction: float, full_final: list[float], higher_is_better: bool = True) -> float | None:
    """What time to target waits for: a value within the ratio `fraction` of full fine-tuning's final
    validation (mean over its seeds): `fraction` × it where higher is better (accuracy), it ÷ `fraction` where
    lower is better (a loss, never below 0: reached from above), so that full fine-tuning reaches its own target
    either way. None when there is none to reach: no final validation, or (higher is better) a mean at or below
    0 (an MCC at chance: any fraction of it is reached before training)."""
    if not full_final:
        return None
    reached = sum(full_final) / len(full_final)
    if not higher_is_better:
        return reached / fraction
    return fraction * reached if reached > 0 else None


def time_to_target(history: list[tuple[int, float]], target: float, step_s: float | None,
                   higher_is_better: bool = True) -> float | None:
    """Training seconds until the validation metric first reaches `target`: the step of that validation
    times the median step time (evaluation time excluded). None when it never does (or no step time)."""
    for step, value in history:
        if (value >= target) if higher_is_better else (value <= target):
            return None if step_s is None else step * step_s
    return None


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, quality) no other point beats: at most the cost and at least the
    quality, better in one. Ascending cost."""
    front = [i for i, (c, q) in enumerate(points)
             if not any(c2 <= c and q2 >= q and (c2, q2) != (c, q) for c2, q2 in points)]
    return sorted(front, key=lambda i: points[i][0])
