"""The comparison's pictures (matplotlib, PNG and SVG): learning curves, the test metric with confidence
intervals, quality against cost, gradient flow, and reliability diagrams (from test_outputs.npz). Built from a `Comparison` (compare.py) and the runs'
history.csv files; a run whose history is missing is left out of the curves, never guessed.

Uses matplotlib's object API (`Figure`) rather than pyplot, so nothing depends on a display or on
global plotting state."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from regbench.calibration import ECE_BINS, calibration, reliability
from regbench.gradients import LAYER_MEAN_PREFIX
from regbench.record import HISTORY_FILE, TEST_OUTPUTS_FILE, read_test_outputs

FORMATS = ("png", "svg")
COST_AXES = (("params", "parameters", True), ("flops_per_example", "forward FLOPs per example", True),
             ("train_time_s", "training time", False))
COLORS = [f"C{i}" for i in range(10)]


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths


def _tasks(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(summary["task"])) if "task" in summary else ["(all)"]


def _task_rows(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[frame["task"] == task] if "task" in frame else frame


def group_labels(summary: pd.DataFrame, keys: list[str]) -> dict[tuple, str]:
    """A short legend label per group: the keys that vary within its task, a config group (regularizer,
    model) as its name ("bn_dropout"), any other key as name=value with the name's last part ("lr=0.005")."""
    labels = {}
    for task in _tasks(summary):
        part = _task_rows(summary, task)
        varying = [k for k in keys if k != "task" and part[k].nunique() > 1] or \
            [k for k in ("regularizer", "model") if k in keys][:1]
        for _, row in part.iterrows():
            words = [str(row[k]) if "." not in k else f"{k.rsplit('.', 1)[-1]}={row[k]}"
                     for k in varying if row[k] != "-"]
            labels[tuple(row[k] for k in keys)] = " ".join(words) or task
    return labels


def group_colors(summary: pd.DataFrame, keys: list[str]) -> dict[tuple, str]:
    """One colour per group, the same in every plot (by the summary's order within each task)."""
    colors = {}
    for task in _tasks(summary):
        for i, (_, row) in enumerate(_task_rows(summary, task).iterrows()):
            colors[tuple(row[k] for k in keys)] = COLORS[i % 10]
    return colors


def run_histories(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """history.csv of every completed run whose directory is known and still on disk."""
    out = {}
    if "run_path" not in runs:
        return out
    for path in runs.loc[runs["status"] == "completed", "run_path"].dropna():
        file = Path(path) / HISTORY_FILE
        if file.is_file():
            frame = pd.read_csv(file)
            if not frame.empty and "epoch" in frame:
                out[path] = frame
    return out


def _group_runs(runs: pd.DataFrame, keys: list[str]) -> dict[tuple, list[str]]:
    members: dict[tuple, list[str]] = {}
    if "run_path" not in runs:
        return members
    for _, row in runs[runs["status"] == "completed"].iterrows():
        if isinstance(row["run_path"], str):
            members.setdefault(tuple(row[k] for k in keys), []).append(row["run_path"])
    return members


def _metric_name(summary_rows: pd.DataFrame) -> str:
    metric = summary_rows["metric"].dropna()
    return metric.iloc[0].split(".", 1)[1] if len(metric) and "." in metric.iloc[0] else "metric"


def _bounds(metric: str) -> tuple[float, float | None]:
    """The range a metric can take: losses are >= 0, every other metric regbench computes lies in [0, 1]."""
    return (0.0, None) if "loss" in metric else (0.0, 1.0)


def metric_bars(summary: pd.DataFrame, keys: list[str]) -> Figure:
    """The test metric per group, one panel per task. Bars start at 0 in every panel (a bar's length is
    its value); the 95% interval is clipped to the metric's range, and a group of one run gets no
    interval at all, just its n."""
    tasks = _tasks(summary)
    labels = group_labels(summary, keys)
    sizes = [len(_task_rows(summary, t)) for t in tasks]
    fig = Figure(figsize=(2.5 * len(tasks) + 1.15 * sum(sizes), 5.0), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False, gridspec_kw={"width_ratios": [s + 2 for s in sizes]})[0]
    for ax, task in zip(axes, tasks):
        part = _task_rows(summary, task).sort_values("rank")
        lowest, highest = _bounds(str(part["metric"].dropna().iloc[0]) if part["metric"].notna().any() else "")
        mean = part["mean"].to_numpy(float)
        low = np.clip(part["ci_low"].to_numpy(float), lowest, highest)
        high = np.clip(part["ci_high"].to_numpy(float), lowest, highest)
        has_interval = ~np.isnan(low)
        x = np.arange(len(part))
        colors = group_colors(summary, keys)
        ax.bar(x, np.nan_to_num(mean), color=[colors[tuple(r[k] for k in keys)] for _, r in part.iterrows()],
               alpha=0.85)
        if has_interval.any():
            ax.errorbar(x[has_interval], mean[has_interval],
                        yerr=[mean[has_interval] - low[has_interval], high[has_interval] - mean[has_interval]],
                        fmt="none", ecolor="black", capsize=4, lw=1.2)
        top = np.where(has_interval, high, mean)
        for xi, m, n, hi in zip(x, mean, part["n"], top):
            if not math.isnan(m):
                ax.annotate(f"{m:.3f}\nn={n}", (xi, hi), textcoords="offset points", xytext=(0, 3), ha="center",
                            va="bottom", fontsize=8)
        ax.set_xticks(x, [labels[tuple(r[k] for k in keys)].replace(" ", "\n") for _, r in part.iterrows()],
                      fontsize=8)
        finite = top[~np.isnan(top)]
        ceiling = float(finite.max()) * 1.18 if len(finite) and finite.max() > 0 else 1.0
        ax.set_ylim(0.0, min(ceiling, highest * 1.12) if highest else ceiling)
        ax.set_ylabel(f"test {_metric_name(part)} (mean, 95% CI)")
        ax.set_title(task)
        ax.grid(axis="y", alpha=0.3)
    return fig


def _dodge(xs: list[float], log: bool) -> list[float]:
    """Spread groups that share a cost (equal parameters or FLOPs: `none` and `dropout`) side by side, so
    that no point hides another: a few percent of the axis, in log space on a log axis."""
    out = list(xs)
    if not xs:
        return out
    finite = [x for x in xs if x > 0] if log else xs
    span = (math.log10(max(finite)) - math.log10(min(finite))) if log and finite else (max(xs) - min(xs))
    step = max(span, 0.2 if log else (abs(max(xs)) or 1.0) * 0.2) * 0.025
    for value in set(xs):
        same = [i for i, x in enumerate(xs) if x == value]
        for k, i in enumerate(same):
            shift = (k - (len(same) - 1) / 2) * step
            out[i] = value * 10 ** shift if log and value > 0 else value + shift
    return out


def quality_vs_cost(summary: pd.DataFrame, keys: list[str]) -> Figure:
    """Test metric against parameters, FLOPs per example and training time, one row per task. Intervals are
    clipped to the metric's range (as in test_metric); groups of equal cost are drawn side by side, each
    with its own marker; a group whose cost cannot be drawn on a log axis (popularity: 0 parameters) is
    named in the panel, not dropped without a word."""
    tasks = _tasks(summary)
    labels = group_labels(summary, keys)
    colors = group_colors(summary, keys)
    markers = dict(zip(labels, "osD^vP*Xhp<>" * 4))
    fig = Figure(figsize=(13, 3.6 * len(tasks)), layout="constrained")
    grid = fig.subplots(len(tasks), len(COST_AXES), squeeze=False)
    for r, (axes, task) in enumerate(zip(grid, tasks)):
        part = _task_rows(summary, task)
        lowest, highest = _bounds(str(part["metric"].dropna().iloc[0]) if part["metric"].notna().any() else "")
        for ax, (column, title, log) in zip(axes, COST_AXES):
            left_out, points = [], []
            for _, row in part.iterrows():
                x, y = row.get(column, math.nan), row["mean"]
                key = tuple(row[k] for k in keys)
                if x is None or math.isnan(x) or math.isnan(y):
                    continue
                if log and x <= 0:
                    left_out.append(f"{labels[key]} ({x:g})")
                    continue
                points.append((key, float(x), float(y), row["ci_low"], row["ci_high"]))
            costs = [x for _, x, _, _, _ in points]
            use_log = log and bool(costs) and max(costs) > 10 * min(costs)  # log only when the costs span a decade
            for (key, _, y, low, high), x in zip(points, _dodge(costs, use_log)):
                err = None
                if not math.isnan(low):
                    low, high = float(np.clip(low, lowest, highest)), float(np.clip(high, lowest, highest))
                    err = [[max(y - low, 0.0)], [max(high - y, 0.0)]]
                ax.errorbar([x], [y], yerr=err, fmt=markers[key], color=colors[key], capsize=3, label=labels[key],
                            alpha=0.9)
            if use_log:
                ax.set_xscale("log")
            else:  # a few ticks: EngFormatter's labels ("16.25 s") overlap at matplotlib's default density
                ax.xaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
            if left_out:
                ax.text(0.02, 0.02, "not on this axis: " + ", ".join(left_out), transform=ax.transAxes, fontsize=7,
                        va="bottom", ha="left", color="0.35")
            contended = int(part["contended"].sum()) if "contended" in part else 0
            if column == "train_time_s" and contended:
                ax.text(0.98, 0.02, f"{contended} run{'s' if contended != 1 else ''} timed under contention",
                        transform=ax.transAxes, fontsize=7, va="bottom", ha="right", color="C3")
            ax.xaxis.set_major_formatter(EngFormatter(unit="s" if column == "train_time_s" else ""))
            ax.set_xlabel(title)
            ax.set_ylabel(f"{task}: test {_metric_name(part)}")
            if r == 0:
                ax.set_title(f"quality vs {title.split(' (')[0]}", fontsize=10)
            ax.grid(alpha=0.3)
        if axes[0].has_data():
            axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def _loss_names(runs: pd.DataFrame) -> tuple[str, str]:
    """What the task's train_loss and val_loss measure, from the records (empty for older records)."""
    def first(column: str) -> str:
        values = runs[column].dropna() if column in runs else pd.Series(dtype=object)
        return str(values.iloc[0]) if len(values) else ""
    return first("losses.train"), first("losses.val")


def learning_curves(comparison, histories: dict[str, pd.DataFrame]) -> Figure:
    """Rows: loss, then the task's metric; one panel column per task. Solid = train, dashed = validation;
    the line is the mean over seeds and the band spans the seeds' min to max."""
    summary, keys = comparison.summary, comparison.keys
    tasks = _tasks(summary)
    labels = group_labels(summary, keys)
    members = _group_runs(comparison.runs, keys)
    colors = group_colors(summary, keys)
    fig = Figure(figsize=(5.5 * len(tasks), 7.5), layout="constrained")
    grid = fig.subplots(2, len(tasks), squeeze=False)
    for col, task in enumerate(tasks):
        part = _task_rows(summary, task)
        metric = _metric_name(part)
        train_loss, val_loss = _loss_names(_task_rows(comparison.runs, task))
        last_epoch = 1
        drawn: set[tuple[str, str]] = set()  # (quantity, split) that have a curve: the labels name only those
        # Two different quantities (MovieLens: a sampled training loss, a full-ranking validation loss)
        # never share an axis: the validation loss gets its own, on the right.
        val_axis = grid[0, col] if train_loss == val_loss else grid[0, col].twinx()
        for i, (_, row) in enumerate(part.iterrows()):
            label = tuple(row[k] for k in keys)
            frames = [histories[p] for p in members.get(label, []) if p in histories]
            if not frames:
                continue
            color = colors[label]
            for ax, quantity in ((grid[0, col], "loss"), (grid[1, col], metric)):
                for split, style, marker in (("train", "-", "o"), ("val", "--", "s")):
                    if quantity == "loss" and split == "val":
                        ax = val_axis
                    column = f"{split}_{quantity}"
                    series = [f.set_index("epoch")[column] for f in frames if column in f]
                    if not series:
                        continue
                    table = pd.concat(series, axis=1)
                    drawn.add((quantity, split))
                    first_line = quantity == "loss" and split == "train"
                    # markers: a group of one epoch is a point, not an invisible line
                    ax.plot(table.index, table.mean(axis=1), style, color=color, lw=1.4, marker=marker,
                            markersize=4, markerfacecolor=color if split == "train" else "white",
                            label=f"{labels[label]} (n={len(series)})" if first_line else None)
                    last_epoch = max(last_epoch, int(table.index.max()))
                    if len(series) > 1:
                        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.15)
        grid[0, col].set_title(f"{task}")
        if val_axis is grid[0, col]:
            grid[0, col].set_ylabel(f"loss: {train_loss}" if train_loss else "loss", fontsize=8)
        else:
            grid[0, col].set_ylabel(textwrap.fill(f"train loss (solid, filled): {train_loss}", 45), fontsize=8)
            val_axis.set_ylabel(textwrap.fill(f"val loss (dashed, hollow): {val_loss}", 45), fontsize=8)
        styles = [text for split, text in (("train", "solid train"), ("val", "dashed val")) if (metric, split) in drawn]
        grid[1, col].set_ylabel(f"{metric} ({', '.join(styles)})" if styles else metric, fontsize=9)
        for ax in grid[:, col]:
            ax.set_xlim(0.5, last_epoch + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        if grid[0, col].has_data():
            grid[1, col].legend(*grid[0, col].get_legend_handles_labels(), fontsize=7, loc="upper center",
                                bbox_to_anchor=(0.5, -0.18), ncol=1 if len(part) > 4 else 2)
    fig.suptitle("Learning curves: solid/filled = train, dashed/hollow = validation;\nmean over seeds, band = min–max",
                 fontsize=10)
    return fig


def merged_order(orders: list[list[str]]) -> list[str]:
    """One order that keeps every list's own order: the layers of all panels, input side first (a model
    with BN has layers the one without lacks; each goes right after its predecessor)."""
    merged: list[str] = []
    for order in orders:
        for i, name in enumerate(order):
            if name in merged:
                continue
            before = next((order[j] for j in range(i - 1, -1, -1) if order[j] in merged), None)
            merged.insert(merged.index(before) + 1 if before is not None else 0, name)
    return merged


def gradient_flow(comparison, histories: dict[str, pd.DataFrame], task: str) -> Figure | None:
    """Per-layer mean gradient norm (log10, before clipping) for each epoch, one panel per group,
    averaged over the group's seeds. Layers run from the input (top) to the output (bottom); every panel
    has the same rows, so a layer lines up across panels (a layer a group lacks is a blank row)."""
    summary, keys = comparison.summary, comparison.keys
    labels = group_labels(summary, keys)
    members = _group_runs(comparison.runs, keys)
    panels = []
    for _, row in _task_rows(summary, task).iterrows():
        label = tuple(row[k] for k in keys)
        frames = [histories[p] for p in members.get(label, []) if p in histories]
        layer_columns = [c for c in frames[0].columns if c.startswith(LAYER_MEAN_PREFIX)] if frames else []
        if not layer_columns:
            continue
        stacked = pd.concat([f.set_index("epoch")[layer_columns] for f in frames if set(layer_columns) <= set(f)])
        panels.append((labels[label], stacked.groupby(level=0).mean()))
    if not panels:
        return None
    layers = merged_order([list(mean.columns) for _, mean in panels])
    panels = [(name, mean.reindex(columns=layers)) for name, mean in panels]
    logs = [np.log10(np.clip(m.to_numpy(float).T, 1e-12, None)) for _, m in panels]
    vmin, vmax = min(np.nanmin(x) for x in logs), max(np.nanmax(x) for x in logs)
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.8 * cols + 1.2, max(2.5, 0.22 * len(layers) + 1.6) * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for i, (ax, (name, mean), values) in enumerate(zip(axes, panels, logs)):
        epochs = mean.index.to_numpy()
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest",
                          extent=(epochs.min() - 0.5, epochs.max() + 0.5, len(layers) - 0.5, -0.5))
        if i % cols == 0:  # the same rows in every panel: name them once per row of panels
            ax.set_yticks(range(len(layers)), [c[len(LAYER_MEAN_PREFIX):] for c in layers], fontsize=7)
        else:
            ax.set_yticks(range(len(layers)), [])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_title(textwrap.fill(name, 34), fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes[:len(panels)].tolist(), label="log10 mean gradient norm per layer")
    fig.suptitle(f"{task}: gradient flow (per-layer gradient norm before clipping, input layers at the top)",
                 fontsize=10)
    return fig


def pooled_test_outputs(runs: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The test probabilities and labels of a group's runs, pooled (every seed's examples together); tagging
    runs' are per token. None when no run stored probabilities (MovieLens stores scores)."""
    parts = [p for p in map(read_test_outputs, runs) if p is not None and "probs" in p]
    if not parts:
        return None
    return np.concatenate([p["probs"] for p in parts]), np.concatenate([p["labels"] for p in parts])


def reliability_diagrams(comparison, task: str) -> Figure | None:
    """One panel per group: accuracy against mean confidence in each of the ECE's 15 bins, over the test
    outputs of every completed run of the group pooled across seeds; the diagonal is perfect calibration,
    bars below it are over-confidence. None when no run of the task wrote test_outputs.npz."""
    keys = comparison.keys
    part = _task_rows(comparison.summary, task)
    labels = group_labels(comparison.summary, keys)
    members = _group_runs(comparison.runs, keys)
    panels = []
    for _, row in part.iterrows():
        key = tuple(row[k] for k in keys)
        runs = members.get(key, [])
        stored = [run for run in runs if (Path(run) / TEST_OUTPUTS_FILE).is_file()]
        pooled = pooled_test_outputs(stored)
        if pooled is not None:  # the runs counted are those whose predictions are in the panel
            shown = f"{len(stored)}" if len(stored) == len(runs) else f"{len(stored)} of {len(runs)}"
            panels.append((labels[key], shown, len(runs), *pooled))
    if not panels:
        return None
    columns = min(len(panels), 4)
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(3.2 * columns, 3.3 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    width = 1 / ECE_BINS
    for ax, (name, shown, n_runs, probs, truth) in zip(axes, panels):
        diagram = reliability(probs, truth)
        centres = diagram["edges"][:-1] + width / 2
        ax.bar(centres, np.nan_to_num(diagram["accuracy"]), width=width * 0.95, color="C0", alpha=0.8,
               label="accuracy")
        ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-label probability)")
        ax.set_ylabel("accuracy in the bin")
        ece = calibration(probs, truth)["ece"]
        ax.set_title(textwrap.fill(f"{name}: ECE {ece:.3f} ({shown} run{'s' if n_runs != 1 else ''}, "
                                   f"{len(truth)} predictions)", 40), fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{task}: reliability on the test set, seeds pooled", fontsize=10)
    return fig


@dataclass
class Plots:
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what could not be drawn, and why


def write_plots(comparison, out_dir: Path) -> Plots:
    """Every plot the comparison supports, as PNG and SVG under out_dir: the files written, and a note for
    each plot that the records could not support (no history.csv at hand: a results.csv from elsewhere)."""
    out = Plots(_save(metric_bars(comparison.summary, comparison.keys), out_dir / "test_metric"))
    out.files += _save(quality_vs_cost(comparison.summary, comparison.keys), out_dir / "quality_vs_cost")
    for task in _tasks(comparison.summary):
        fig = reliability_diagrams(comparison, task)
        if fig is not None:
            out.files += _save(fig, out_dir / f"reliability_{task}")
    histories = run_histories(comparison.runs)
    if not histories:
        out.notes.append("no completed run's history.csv is at hand (curves are drawn for completed runs only, and "
                         "a results.csv alone carries none): the learning curves and the gradient-flow plots are "
                         "left out; give the sweep or run directories")
        return out
    out.files += _save(learning_curves(comparison, histories), out_dir / "learning_curves")
    for task in _tasks(comparison.summary):
        fig = gradient_flow(comparison, histories, task)
        if fig is not None:
            out.files += _save(fig, out_dir / f"gradient_flow_{task}")
    return out
