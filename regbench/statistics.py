"""The statistics behind every comparison, pure functions of numbers (numpy and scipy; no pandas, no records):
the mean with its Student-t interval, the difference of a group from its baseline (paired t-test on shared
seeds, Welch's otherwise), Holm's adjustment, and percentile bootstrap intervals. compare.py applies them
to groups of runs; tune_report.py to the fixed and tuned protocols."""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean with its Student-t confidence interval (NaN bounds for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan)
    if _no_spread(x):  # equal values: no interval to speak of (not a std of 1e-17 from rounding)
        return Interval(mean, mean, mean)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    delta: float      # mean(group) - mean(baseline)
    low: float        # its confidence interval
    high: float
    p_value: float
    test: str         # "paired t" (same seeds in both) | "Welch t" | "" (too few runs)
    n_pairs: int


def _no_spread(values: np.ndarray) -> bool:
    """All equal, up to float rounding (0.6 - 0.5 and 0.7 - 0.6 differ in the 17th digit)."""
    return float(np.ptp(values)) <= 1e-12 * max(1.0, float(np.abs(values).max()))


@contextmanager
def _exact_variance_zero_is_fine() -> Iterator[None]:
    """scipy warns of "catastrophic cancellation" whenever a sample's values are all equal (0.1 three times:
    its float mean is not exactly 0.1), though a variance of ~1e-33 for 0 changes no statistic: a group at
    chance on every seed against a trained one is a valid Welch test. The warning would be noise on the
    user's terminal, so it is silenced here and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        yield


def difference(group: dict[int, float], baseline: dict[int, float], confidence: float = CONFIDENCE) -> Difference:
    """Compare two sets of per-seed results: a paired t-test when both have the same seeds (the
    seed fixes initialisation and data order, so pairing removes that variance), Welch's t-test otherwise.
    Differences without any spread (all seeds differ by exactly the same amount) have no test: the
    interval is the difference itself and p is left empty rather than NaN."""
    a, b = list(group.values()), list(baseline.values())
    delta = float(np.mean(a) - np.mean(b)) if a and b else math.nan
    if set(group) == set(baseline) and len(group) >= 2:
        seeds = sorted(group)
        diffs = np.array([group[s] - baseline[s] for s in seeds])
        if _no_spread(diffs):
            return Difference(delta, delta, delta, math.nan, "no spread", len(seeds))
        with _exact_variance_zero_is_fine():
            result = stats.ttest_rel([group[s] for s in seeds], [baseline[s] for s in seeds])
        kind, pairs = "paired t", len(seeds)
    elif len(a) >= 2 and len(b) >= 2:
        if _no_spread(np.array(a)) and _no_spread(np.array(b)):
            return Difference(delta, delta, delta, math.nan, "no spread", 0)
        with _exact_variance_zero_is_fine():
            result = stats.ttest_ind(a, b, equal_var=False)
        kind, pairs = "Welch t", 0
    else:
        return Difference(delta, math.nan, math.nan, math.nan, "", 0)
    interval = result.confidence_interval(confidence)
    return Difference(delta, float(interval.low), float(interval.high), float(result.pvalue), kind, pairs)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down): the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) * p_(j)). NaN p-values (no test) stay NaN and are not counted.
    Written here: it is five lines, and statsmodels would be a dependency for it."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


BOOTSTRAP_SEED = 0  # the resampling is seeded: the same runs give the same intervals


def bootstrap_interval(samples: Sequence[Sequence[float]], resamples: int, paired: bool = False,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval (scipy.stats.bootstrap) of the mean of one sample, or of the
    difference of means of two (paired: the per-seed differences are resampled together). NaN when a
    sample has fewer than two values or no spread."""
    data = [np.asarray(x, dtype=float) for x in samples]
    if any(len(x) < 2 for x in data):
        return math.nan, math.nan
    if len(data) == 2 and paired:
        data = [data[0] - data[1]]
    if len(data) == 1 and _no_spread(data[0]):
        return math.nan, math.nan
    statistic = (lambda x, axis: np.mean(x, axis=axis)) if len(data) == 1 else \
        (lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis))
    with np.errstate(invalid="ignore"):
        result = stats.bootstrap(tuple(data), statistic, n_resamples=resamples, confidence_level=confidence,
                                 method="percentile", vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


# -- the summary -----------------------------------------------------------------------------------
