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
    labels = [label.replace("\n", " ") for label in labels]
    assert "train loss (solid, filled): in-batch softmax cross-entropy (log-Q corrected)" in labels
    assert "val loss (dashed, hollow): cross-entropy of each held-out item against all items" in labels
    assert len(figure.axes) == 3  # loss, its twin for the validation loss, and the metric
    histories = run_histories(comparison.runs)
    metric_axis = figure.axes[1]
    has_train_metric = any(f"train_{comparison.summary['metric'].iloc[0].split('.', 1)[1]}" in h for h in
                           histories.values())
    assert ("solid train" in metric_axis.get_ylabel()) == has_train_metric  # no legend for a curve not drawn
    assert "dashed val" in metric_axis.get_ylabel()


def test_losses_of_one_kind_share_an_axis(small_run, tmp_path):
    small_run("cifar10", name="sweep/0")
    comparison = compare([tmp_path / "sweep"])
    figure = learning_curves(comparison, run_histories(comparison.runs))
    assert [ax.get_ylabel() for ax in figure.axes][0] == "loss: cross-entropy" and len(figure.axes) == 2


import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from regbench.plots import gradient_flow, metric_bars, quality_vs_cost, write_plots  # noqa: E402


def summary_row(task, regularizer, mean, low, high, n, **costs):
    return {"task": task, "regularizer": regularizer, "metric": "test.accuracy", "mean": mean, "ci_low": low,
            "ci_high": high, "n": n, "rank": 1, "params": costs.get("params", 1000),
            "flops_per_example": costs.get("flops", 5000), "train_time_s": 10.0}


def test_bars_start_at_zero_intervals_stay_in_range_and_one_run_has_none():
    summary = pd.DataFrame([summary_row("a", "none", 0.05, -0.10, 0.20, 3), summary_row("a", "bn", 0.10, np.nan,
                                                                                        np.nan, 1),
                            summary_row("b", "none", 0.2570, 0.2568, 0.2578, 3)])
    figure = metric_bars(summary, ["task", "regularizer"])
    for ax in figure.axes:
        assert ax.get_ylim()[0] == 0.0  # every panel starts at 0: a bar's length is its value
    caps = [c for c in figure.axes[0].collections]  # the error bars of panel a: one group has an interval
    segments = np.concatenate([c.get_segments() for c in caps])
    assert len(segments) == 1 and segments[:, :, 1].min() >= 0.0  # clipped at 0, not drawn for n = 1


def test_a_cost_a_log_axis_cannot_show_is_named_not_dropped():
    summary = pd.DataFrame([summary_row("movielens", "two_tower", 0.30, 0.29, 0.31, 3, params=200_000, flops=80_000),
                            summary_row("movielens", "popularity", 0.14, 0.14, 0.14, 3, params=0, flops=0)])
    figure = quality_vs_cost(summary, ["task", "regularizer"])
    notes = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert sum("not on this axis: popularity (0)" in n for n in notes) == 2  # parameters and FLOPs panels


def test_one_epoch_curves_are_visible_and_gradient_flow_rows_line_up(small_run, tmp_path):
    small_run("cifar10", "regularizer=none", name="sweep/0")
    small_run("cifar10", "regularizer=bn", name="sweep/1")
    comparison = compare([tmp_path / "sweep"])
    histories = run_histories(comparison.runs)
    curves = learning_curves(comparison, histories)
    lines = [line for line in curves.axes[0].get_lines() if len(line.get_xdata()) == 1]
    assert lines and all(line.get_marker() not in ("None", None, "") for line in lines)
    ticks = [t for t in curves.axes[0].get_xticks() if 0.5 <= t <= 1.5]
    assert curves.axes[0].get_xlim() == (0.5, 1.5) and ticks == [1.0]  # one epoch, one tick, no 0.945-1.05
    flow = gradient_flow(comparison, histories, "cifar10")
    panels = [ax for ax in flow.axes if ax.get_images()]
    assert len({p.get_images()[0].get_array().shape for p in panels}) == 1  # BN layers are blank rows without BN
    rows = [t.get_text() for t in panels[0].get_yticklabels()]
    assert "features.bn1" in rows and rows.index("features.conv1") < rows.index("features.bn1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a report must not print matplotlib's warnings
        plotted = write_plots(comparison, tmp_path / "plots")
    assert {p.stem for p in plotted.files} == {"test_metric", "quality_vs_cost", "learning_curves",
                                               "gradient_flow_cifar10", "reliability_cifar10"} and not plotted.notes


def test_plots_from_a_results_csv_alone_say_what_they_leave_out(small_run, tmp_path):
    small_run("cifar10", name="sweep/0")
    from regbench.results import update_sweep_results

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    update_sweep_results(tmp_path / "sweep").to_csv(elsewhere / "results.csv", index=False)
    plotted = write_plots(compare([elsewhere / "results.csv"]), tmp_path / "plots")
    assert len(plotted.notes) == 1 and "learning curves and the gradient-flow plots are left out" in plotted.notes[0]


def test_quality_vs_cost_clips_intervals_spreads_equal_costs_and_thins_time_ticks():
    """Until 2026-12-05 intervals reached below 0 (accuracy -0.12, F1 -1.5 to +1.8), CoNLL's time ticks
    overlapped ("16.25 s16.5 s16.75 s") and `none` sat hidden under `dropout` (equal parameters and FLOPs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = [summary_row("conll", name, mean, mean - 1.6, mean + 0.9, 3, params=50_000, flops=90_000)
            for name, mean in (("none", 0.10), ("dropout", 0.10), ("bn", 0.40))]
    for row, seconds in zip(rows, (16.2, 16.5, 16.8)):
        row["train_time_s"] = seconds
    figure = quality_vs_cost(pd.DataFrame(rows), ["task", "regularizer"])
    FigureCanvasAgg(figure).draw()
    for ax in figure.axes[:3]:
        points = []
        for container in ax.containers:  # one errorbar container per group
            line, _, bars = container.lines
            points.append(tuple(np.round(ax.transData.transform((line.get_xdata()[0], line.get_ydata()[0])))))
            for segment in (s for collection in bars for s in collection.get_segments()):
                assert segment[:, 1].min() >= 0.0 and segment[:, 1].max() <= 1.0
        assert len(set(points)) == 3, ax.get_xlabel()  # every group visible
    time_axis = figure.axes[2]
    boxes = [t.get_window_extent() for t in time_axis.get_xticklabels() if t.get_text() and t.get_visible()]
    boxes = [b for b, t in zip(boxes, time_axis.get_xticks()) if time_axis.get_xlim()[0] <= t <= time_axis.get_xlim()[1]]
    assert 2 <= len(boxes) <= 5
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_the_reliability_diagram_counts_the_runs_whose_predictions_it_shows(small_run, tmp_path):
    from regbench.plots import reliability_diagrams

    for seed in (0, 1):
        small_run("cifar10", f"seed={seed}", name=f"sweep/{seed}")
    (tmp_path / "sweep" / "1" / "test_outputs.npz").unlink()
    figure = reliability_diagrams(compare([tmp_path / "sweep"]), "cifar10")
    title = figure.axes[0].get_title().replace("\n", " ")
    assert "1 of 2 runs, 30 predictions" in title
