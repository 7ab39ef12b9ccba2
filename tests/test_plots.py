"""The comparison's plots from real (tiny) runs, checked as a reader would read them."""
from __future__ import annotations

from regbench.compare import compare
from regbench.plots import learning_curves, run_histories


def test_movielens_losses_that_measure_different_things_get_their_own_axes(small_run, tmp_path):
    """A two-tower model trains on an in-batch softmax and is validated by a cross-entropy over all items:
    the two never share an axis, and each axis says what it shows."""
    for seed in (0, 1):
        small_run("movielens", f"seed={seed}", name=f"sweep/{seed}")
    comparison = compare([tmp_path / "sweep"])
    figure = learning_curves(comparison, run_histories(comparison.runs))
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert "train loss (solid): in-batch softmax cross-entropy (log-Q corrected)" in labels
    assert "val loss (dashed): cross-entropy of each held-out item against all items" in labels
    assert len(figure.axes) == 3  # loss, its twin for the validation loss, and the metric


def test_losses_of_one_kind_share_an_axis(small_run, tmp_path):
    small_run("cifar10", name="sweep/0")
    comparison = compare([tmp_path / "sweep"])
    figure = learning_curves(comparison, run_histories(comparison.runs))
    assert [ax.get_ylabel() for ax in figure.axes][0] == "loss: cross-entropy" and len(figure.axes) == 2
