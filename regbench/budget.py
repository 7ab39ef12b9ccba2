"""The expected best validation score after k trials (Dodge et al. 2019, "Show Your Work", eq. 1): with the
N trials' scores sorted v(1) <= ... <= v(N), the best of k trials drawn with replacement from them is
v(i) with probability (i/N)^k - ((i-1)/N)^k. Written here because it is one line of arithmetic that no
library we use provides; tested against enumerating every draw."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def expected_max(scores: Sequence[float], k: int) -> tuple[float, float]:
    """(mean, standard deviation) of the best of k trials drawn from `scores`; NaNs are left out."""
    v = np.sort(np.asarray([s for s in scores if s is not None and math.isfinite(s)], dtype=float))
    n = len(v)
    if n == 0 or k < 1:
        return math.nan, math.nan
    i = np.arange(1, n + 1)
    weights = (i / n) ** k - ((i - 1) / n) ** k
    mean = float(np.sum(weights * v))
    return mean, float(math.sqrt(max(float(np.sum(weights * v ** 2)) - mean ** 2, 0.0)))


def budget_curve(scores: Sequence[float]) -> list[tuple[int, float, float]]:
    """(k, expected best, its standard deviation) for k = 1 .. the number of scores."""
    finite = [s for s in scores if s is not None and math.isfinite(s)]
    return [(k, *expected_max(finite, k)) for k in range(1, len(finite) + 1)]
