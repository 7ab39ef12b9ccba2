"""What `regbench tune` writes beside its tuned table: the tuning-budget curve per regimen, the learning-rate
sensitivity of every trial, and the fixed-protocol against tuned-protocol difference per regimen where
runs of the fixed protocol (the same command at the task's defaults, on the final seeds) exist."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig

from regbench.budget import budget_curve
from regbench.tables import fmt
from regbench.statistics import difference, mean_interval
from regbench.fileio import write_csv_atomic, write_text_atomic
from regbench.tune_space import Plan


def trial_rows(studies: dict[str, Any]) -> pd.DataFrame:
    """One row per trial: regimen, number, state (complete, pruned, fail; requeued: stopped by a crash or a
    killed process, its point queued again, not counted), validation score (a pruned trial's last report), params."""
    rows = []
    for regimen, study in studies.items():
        for t in study.get_trials(deepcopy=False):
            score = t.value if t.state.name == "COMPLETE" else (
                t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan)
            state = "requeued" if t.system_attrs.get("regbench_requeued") else t.state.name.lower()
            rows.append({"regimen": regimen, "trial": t.number, "state": state, "val_score": score,
                         **{f"param.{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def budget_figure(trials: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (regimen, part) in enumerate(trials.groupby("regimen", sort=False)):
        done = part[part["state"] == "complete"].sort_values("trial")["val_score"].tolist()
        curve = budget_curve(done)
        if not curve:
            continue
        k, mean, std = zip(*curve)
        ax.plot(k, mean, marker="o", markersize=3, color=f"C{i}", label=f"{regimen} ({len(done)} trials)")
        ax.fill_between(k, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=f"C{i}",
                        alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials (k)")
    ax.set_ylabel("expected best validation score (± 1 sd)")
    ax.set_title("Tuning budget: the best of k trials (Dodge et al. 2019)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def sensitivity_figure(trials: pd.DataFrame, key: str = "param.optimizer.lr") -> Figure | None:
    if key not in trials:
        return None
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (regimen, part) in enumerate(trials.groupby("regimen", sort=False)):
        done, pruned = part[part["state"] == "complete"], part[part["state"] == "pruned"]
        ax.scatter(done[key], done["val_score"], color=f"C{i}", s=18, label=regimen)
        if len(pruned):
            ax.scatter(pruned[key], pruned["val_score"], facecolors="none", edgecolors=f"C{i}", s=18)
    ax.set_xscale("log")
    ax.set_xlabel(key.removeprefix("param.") + " (hollow: pruned, its last validation score)")
    ax.set_ylabel("validation score")
    ax.set_title("Learning-rate sensitivity: every trial", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def protocols_table(fixed: dict[str, dict[int, float]], tuned: dict[str, dict[int, float]]) -> pd.DataFrame:
    """Per regimen: the fixed protocol's and the tuned protocol's mean test metric over the final seeds and
    their difference (paired over seeds), where both exist."""
    rows = []
    for regimen, values in tuned.items():
        before = fixed.get(regimen)
        if not before:
            continue
        a, b = mean_interval(list(before.values())), mean_interval(list(values.values()))
        diff = difference(values, before)
        rows.append({"regimen": regimen, "fixed": a.mean, "fixed_n": len(before), "tuned": b.mean,
                     "tuned_n": len(values), "tuned_minus_fixed": diff.delta, "ci_low": diff.low,
                     "ci_high": diff.high, "p_value": diff.p_value})
    return pd.DataFrame(rows)


def write(folder: Path, studies: dict[str, Any], protocols: pd.DataFrame) -> list[Path]:
    """trials.csv, budget_curve.png/svg, lr_sensitivity.png/svg and, where fixed runs exist, protocols.csv/md."""
    trials = trial_rows(studies)
    files = [folder / "trials.csv"]
    write_csv_atomic(files[0], trials)
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for name, figure in (("budget_curve", budget_figure(trials)), ("lr_sensitivity", sensitivity_figure(trials))):
        if figure is None:
            continue
        for ext in ("png", "svg"):
            figure.savefig(plots / f"{name}.{ext}", dpi=120)
            files.append(plots / f"{name}.{ext}")
    if len(protocols):
        write_csv_atomic(folder / "protocols.csv", protocols)
        shown = protocols.assign(**{c: protocols[c].map(fmt) for c in ("fixed", "tuned", "tuned_minus_fixed")},
                                 ci=[f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(protocols["ci_low"],
                                                                                 protocols["ci_high"])])
        write_text_atomic(folder / "protocols.md", shown[["regimen", "fixed", "fixed_n", "tuned", "tuned_n",
                                                         "tuned_minus_fixed", "ci"]].to_markdown(index=False) + "\n")
        files += [folder / "protocols.csv", folder / "protocols.md"]
    else:  # a table of an earlier invocation whose fixed runs are no longer found would read as this one's
        for name in ("protocols.csv", "protocols.md"):
            (folder / name).unlink(missing_ok=True)
    return files


def test_values(folder: Path) -> dict[int, float]:
    """seed -> the primary test metric of the completed runs under `folder`."""
    from regbench.record import read_metrics

    out = {}
    for path in sorted(folder.glob("*/metrics.json")):
        record = read_metrics(path.parent)
        value = record.get("test", {}).get(record.get("primary_metric"))
        if record.get("status") == "completed" and value is not None:
            out[int(record["seed"])] = float(value)
    return out


def fixed_values(plan: Plan, tune: DictConfig) -> dict[int, float]:
    """seed -> the test metric of the fixed protocol's run of this regimen (the same command without the
    tuned keys) on each final seed, found through the run index, or among tune.fixed's runs (the regimen's
    completed runs of the same task); {} unless every final seed has one."""
    from regbench import checkpoints
    from regbench.preflight import compose_config, merge_overrides
    from regbench.record import read_metrics

    if tune.fixed is not None:
        return _fixed_values_in([Path(str(f)).expanduser() for f in tune.fixed], plan, list(tune.final_seeds))
    out = {}
    for seed in tune.final_seeds:
        cfg = compose_config(merge_overrides(plan.overrides, [f"seed={seed}"]))
        earlier = checkpoints.find_earlier(cfg, checkpoints.run_id(cfg), Path("/nonexistent"))
        if earlier is None or not earlier.final:
            return {}
        record = read_metrics(earlier.run_dir)
        value = record.get("test", {}).get(record.get("primary_metric"))
        if record.get("status") != "completed" or value is None:
            return {}
        out[int(seed)] = float(value)
    return out


def _fixed_values_in(sources: list[Path], plan: Plan, seeds: list[int]) -> dict[int, float]:
    """seed -> the primary test metric of `plan`'s regimen among the records under `sources` (its task,
    completed; of several runs of one seed, the latest)."""
    import pandas as pd

    from regbench.runs import load_runs

    runs = load_runs(sources)
    mine = runs[(runs["task"] == plan.cfg.task.name) & (runs["regularizer"] == plan.regimen)
                & (runs["status"] == "completed") & runs["seed"].isin(seeds)]
    if "started_at" in mine:
        mine = mine.sort_values("started_at", kind="stable")
    out = {}
    for _, row in mine.iterrows():  # in start order: a seed's latest run is the one kept
        value = row.get(f"test.{row['primary_metric']}")
        if pd.notna(value):
            out[int(row["seed"])] = float(value)
    return out if set(out) == set(seeds) else {}
