"""The tuning-budget curve against brute force: every ordered draw of k trials with replacement."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from regbench.budget import budget_curve, expected_max


@pytest.mark.parametrize("k", [1, 2, 3])
def test_expected_max_equals_the_mean_over_every_draw(k):
    scores = [0.31, 0.12, 0.55, 0.40, 0.55]
    draws = [max(d) for d in itertools.product(scores, repeat=k)]
    mean, std = expected_max(scores, k)
    assert mean == pytest.approx(np.mean(draws)) and std == pytest.approx(np.std(draws))


def test_the_curve_rises_from_the_mean_to_near_the_best():
    scores = [0.2, 0.5, 0.9, float("nan")]
    curve = budget_curve(scores)
    assert [k for k, _, _ in curve] == [1, 2, 3]
    assert curve[0][1] == pytest.approx(np.mean([0.2, 0.5, 0.9]))
    means = [m for _, m, _ in curve]
    assert means == sorted(means) and means[-1] < 0.9
