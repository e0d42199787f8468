"""Paired differences over seeds: how `compare` and `report` state that one method differs
from another.

Runs of one seed share their initialisation and data split, so a method is compared with the
reference method (the *baseline*, `imp` unless chosen) seed by seed: at each density, the
differences d_s = method_s - baseline_s over the seeds both have. A seed that only one of the
two has is dropped from that comparison and named. The difference is summarised by its mean
and a 95% Student-t interval, mean ± t(0.975, n-1) · sd / sqrt(n), which is the paired t-test
(the interval leaves out 0 exactly when the two-sided p-value is below 0.05).

Why the t-interval and not a bootstrap: with the 3-5 seeds a study can afford, a bootstrap
has only a handful of distinct resamples (10 for 3 seeds) and its percentile interval is far
too narrow; the t-interval is exact when the differences are normal and honest about how
little n seeds say. Intervals are per density and not corrected for multiple comparisons.

The verdict: "better" or "worse" when the interval leaves out 0 (for accuracy higher is
better; for NLL and ECE lower), "no clear difference" when it covers 0, and "n<2: no
interval" when fewer than two seeds pair up (a mean of one difference is shown, never judged).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping

CONFIDENCE = 0.95
NO_DIFFERENCE = "no clear difference"
TOO_FEW = "n<2: no interval"
# metric -> +1 when higher is better, -1 when lower is better
DIRECTION = {"acc": 1, "nll": -1, "ece": -1, "nll_ts": -1, "mmd": -1, "frechet": -1}


@dataclass(frozen=True)
class Paired:
    """method - baseline over the seeds both have, at one density."""

    n: int
    mean: float
    low: float               # the 95% interval (NaN for n < 2)
    high: float
    p: float                 # two-sided paired t-test (NaN for n < 2)
    verdict: str
    seeds: tuple[int, ...]   # the paired seeds
    dropped: tuple[int, ...]  # seeds that only one of the two has

    @property
    def judged(self) -> bool:
        return self.n >= 2


def paired_difference(method: Mapping[int, float], baseline: Mapping[int, float],
                      direction: int = 1, confidence: float = CONFIDENCE) -> Paired:
    """Pair `method` and `baseline` (seed -> value) by seed; seeds with a missing or NaN value
    on either side are dropped (and named in `dropped`)."""
    from scipy import stats

    def ok(v: float | None) -> bool:
        return v is not None and not math.isnan(v)

    both = sorted(s for s in set(method) & set(baseline) if ok(method[s]) and ok(baseline[s]))
    dropped = tuple(sorted((set(method) | set(baseline)) - set(both)))
    diffs = [method[s] - baseline[s] for s in both]
    n = len(diffs)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan, TOO_FEW, (), dropped)
    mean = statistics.fmean(diffs)
    if n < 2:
        return Paired(n, mean, math.nan, math.nan, math.nan, TOO_FEW, tuple(both), dropped)
    sd = statistics.stdev(diffs)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    if low <= 0 <= high:
        verdict = NO_DIFFERENCE
    else:
        verdict = "better" if (mean > 0) == (direction > 0) else "worse"
    return Paired(n, mean, low, high, p, verdict, tuple(both), dropped)


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t-interval of the mean of `values` (the bands of the figures); (mean, mean) for
    one value, (NaN, NaN) for none. NaN values are left out."""
    from scipy import stats

    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return math.nan, math.nan
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, m
    half = stats.t.ppf(0.5 + confidence / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(
        len(xs))
    return m - half, m + half
