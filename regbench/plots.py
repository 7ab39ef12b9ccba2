"""The comparison's pictures (matplotlib, PNG and SVG): learning curves, the test metric with confidence
intervals, quality against cost, and gradient flow. Built from a `Comparison` (compare.py) and the runs'
history.csv files; a run whose history is missing is left out of the curves, never guessed.

Uses matplotlib's object API (`Figure`) rather than pyplot, so nothing depends on a display or on
global plotting state."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from regbench.compare import BASE_KEYS
from regbench.gradients import LAYER_MEAN_PREFIX
from regbench.record import HISTORY_FILE

FORMATS = ("png", "svg")
COST_AXES = (("params", "parameters", True), ("flops_per_example", "forward FLOPs per example", True),
             ("train_time_s", "training time (s)", False))
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
    """A short legend label per group: the keys that vary within its task, a regularizer or model as
    its name ("bn_dropout"), any other key as name=value with the name's last part ("lr=0.005")."""
    labels = {}
    for task in _tasks(summary):
        part = _task_rows(summary, task)
        varying = [k for k in keys if k != "task" and part[k].nunique() > 1] or \
            [k for k in ("regularizer", "model") if k in keys][:1]
        for _, row in part.iterrows():
            words = [str(row[k]) if k in BASE_KEYS else f"{k.rsplit('.', 1)[-1]}={row[k]}"
                     for k in varying if row[k] != "-"]
            labels[tuple(row[k] for k in keys)] = " ".join(words) or task
    return labels


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


def metric_bars(summary: pd.DataFrame, keys: list[str]) -> Figure:
    tasks = _tasks(summary)
    labels = group_labels(summary, keys)
    sizes = [len(_task_rows(summary, t)) for t in tasks]
    fig = Figure(figsize=(2.5 * len(tasks) + 1.15 * sum(sizes), 5.0), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False, gridspec_kw={"width_ratios": [s + 2 for s in sizes]})[0]
    for ax, task in zip(axes, tasks):
        part = _task_rows(summary, task).sort_values("rank")
        mean = part["mean"].to_numpy(float)
        low = np.where(np.isnan(part["ci_low"]), mean, part["ci_low"])
        high = np.where(np.isnan(part["ci_high"]), mean, part["ci_high"])
        x = np.arange(len(part))
        colors = [COLORS[i % 10] for i in range(len(part))]
        ax.bar(x, mean, color=colors, alpha=0.85)
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="black", capsize=4, lw=1.2)
        for xi, m, n, hi in zip(x, mean, part["n"], high):
            if not math.isnan(m):
                ax.annotate(f"{m:.3f}\nn={n}", (xi, hi), textcoords="offset points", xytext=(0, 3), ha="center",
                            va="bottom", fontsize=8)
        ax.set_xticks(x, [labels[tuple(r[k] for k in keys)].replace(" ", "\n") for _, r in part.iterrows()],
                      fontsize=8)
        finite = mean[~np.isnan(mean)]
        if len(finite):
            spread = max(np.nanmax(high) - np.nanmin(low), 1e-3)
            ax.set_ylim(max(0.0, np.nanmin(low) - 0.6 * spread), np.nanmax(high) + 0.5 * spread)
        ax.set_ylabel(f"test {_metric_name(part)} (mean, 95% CI)")
        ax.set_title(task)
        ax.grid(axis="y", alpha=0.3)
    return fig


def quality_vs_cost(summary: pd.DataFrame, keys: list[str]) -> Figure:
    tasks = _tasks(summary)
    labels = group_labels(summary, keys)
    fig = Figure(figsize=(13, 3.6 * len(tasks)), layout="constrained")
    grid = fig.subplots(len(tasks), len(COST_AXES), squeeze=False)
    for r, (axes, task) in enumerate(zip(grid, tasks)):
        part = _task_rows(summary, task)
        for ax, (column, title, log) in zip(axes, COST_AXES):
            for i, (_, row) in enumerate(part.iterrows()):
                x, y = row.get(column, math.nan), row["mean"]
                if x is None or math.isnan(x) or math.isnan(y) or (log and x <= 0):
                    continue
                err = [[y - row["ci_low"]], [row["ci_high"] - y]] if not math.isnan(row["ci_low"]) else None
                ax.errorbar([x], [y], yerr=err, fmt="o", color=COLORS[i % 10], capsize=3,
                            label=labels[tuple(row[k] for k in keys)])
            xs = [x for line in ax.get_lines() for x in line.get_xdata()]
            if log and xs and max(xs) > 10 * min(xs):  # log only when the costs span a decade
                ax.set_xscale("log")
            ax.xaxis.set_major_formatter(EngFormatter())
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
    fig = Figure(figsize=(5.5 * len(tasks), 7.5), layout="constrained")
    grid = fig.subplots(2, len(tasks), squeeze=False)
    for col, task in enumerate(tasks):
        part = _task_rows(summary, task)
        metric = _metric_name(part)
        train_loss, val_loss = _loss_names(_task_rows(comparison.runs, task))
        # Two different quantities (MovieLens: a sampled training loss, a full-ranking validation loss)
        # never share an axis: the validation loss gets its own, on the right.
        val_axis = grid[0, col] if train_loss == val_loss else grid[0, col].twinx()
        for i, (_, row) in enumerate(part.iterrows()):
            label = tuple(row[k] for k in keys)
            frames = [histories[p] for p in members.get(label, []) if p in histories]
            if not frames:
                continue
            color = COLORS[i % 10]
            for ax, quantity in ((grid[0, col], "loss"), (grid[1, col], metric)):
                for split, style in (("train", "-"), ("val", "--")):
                    if quantity == "loss" and split == "val":
                        ax = val_axis
                    column = f"{split}_{quantity}"
                    series = [f.set_index("epoch")[column] for f in frames if column in f]
                    if not series:
                        continue
                    table = pd.concat(series, axis=1)
                    first_line = quantity == "loss" and split == "train"
                    ax.plot(table.index, table.mean(axis=1), style, color=color, lw=1.4,
                            label=f"{labels[label]} (n={len(series)})" if first_line else None)
                    if len(series) > 1:
                        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.15)
        grid[0, col].set_title(f"{task}")
        if val_axis is grid[0, col]:
            grid[0, col].set_ylabel(f"loss: {train_loss}" if train_loss else "loss", fontsize=8)
        else:
            grid[0, col].set_ylabel(f"train loss (solid): {train_loss}", fontsize=8)
            val_axis.set_ylabel(f"val loss (dashed): {val_loss}", fontsize=8)
        grid[1, col].set_ylabel(f"{metric} (solid train, dashed val)")
        for ax in grid[:, col]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        if grid[0, col].has_data():
            grid[1, col].legend(*grid[0, col].get_legend_handles_labels(), fontsize=7, loc="upper center",
                                bbox_to_anchor=(0.5, -0.18), ncol=1 if len(part) > 4 else 2)
    fig.suptitle("Learning curves: solid = train, dashed = validation; mean over seeds, band = min–max",
                 fontsize=10)
    return fig


def gradient_flow(comparison, histories: dict[str, pd.DataFrame], task: str) -> Figure | None:
    """Per-layer mean gradient norm (log10, before clipping) for each epoch, one panel per group,
    averaged over the group's seeds. Layers run from the input (top) to the output (bottom)."""
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
        mean = stacked.groupby(level=0).mean()
        panels.append((labels[label], mean))
    if not panels:
        return None
    logs = [np.log10(np.clip(m.to_numpy(float).T, 1e-12, None)) for _, m in panels]
    vmin, vmax = min(np.nanmin(x) for x in logs), max(np.nanmax(x) for x in logs)
    n_layers = max(len(m.columns) for _, m in panels)
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols + 1.2, max(2.5, 0.22 * n_layers + 1.4) * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for ax, (name, mean), values in zip(axes, panels, logs):
        epochs = mean.index.to_numpy()
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest",
                          extent=(epochs.min() - 0.5, epochs.max() + 0.5, len(mean.columns) - 0.5, -0.5))
        ax.set_yticks(range(len(mean.columns)), [c[len(LAYER_MEAN_PREFIX):] for c in mean.columns], fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes[:len(panels)].tolist(), label="log10 mean gradient norm per layer")
    fig.suptitle(f"{task}: gradient flow (per-layer gradient norm before clipping, input layers at the top)",
                 fontsize=10)
    return fig


def write_plots(comparison, out_dir: Path) -> list[Path]:
    """Every plot the comparison supports, as PNG and SVG under out_dir; returns the files written."""
    files = _save(metric_bars(comparison.summary, comparison.keys), out_dir / "test_metric")
    files += _save(quality_vs_cost(comparison.summary, comparison.keys), out_dir / "quality_vs_cost")
    histories = run_histories(comparison.runs)
    if histories:
        files += _save(learning_curves(comparison, histories), out_dir / "learning_curves")
        for task in _tasks(comparison.summary):
            fig = gradient_flow(comparison, histories, task)
            if fig is not None:
                files += _save(fig, out_dir / f"gradient_flow_{task}")
    return files
