"""Findings: a comparison's answer in sentences, written from its statistics alone, never claiming more
than they hold. The rules (docs/compare.md, "Findings"):

- A group is said to differ from the baseline only when its Holm-adjusted p-value is at most ALPHA and
  it has at least 2 runs (and the baseline too). The sentence gives the difference, its 95% interval,
  the adjusted p and n, and says whether the difference is better or worse for the metric.
- Otherwise the sentence says "no evidence of a difference", with the same numbers (and, where the
  unadjusted p alone is below ALPHA, both p-values, so the reader sees why), or that there are too few
  runs to test (n below 2, or no spread to test: every seed gave the same difference).
- Without a baseline, only the ranking is stated, and it is said that ranks are not tested.
Metrics that live in [0, 1] and are maximised (accuracy, F1, NDCG, ...) are written in points (x 100),
as papers do; everything else (losses, NLL, ECE, times) in its own units."""
from __future__ import annotations

import math

import pandas as pd

ALPHA = 0.05


def _is_fraction(part: pd.DataFrame) -> bool:
    means = part["mean"].dropna()
    return bool(part["higher_is_better"].iloc[0]) and len(means) > 0 and bool(((means >= 0) & (means <= 1)).all())


def _metric_label(metric: str) -> str:
    name = metric.split(".", 1)[1] if metric.startswith(("test.", "val.", "train.")) else metric
    upper = {"f1": "F1", "nll": "NLL", "ece": "ECE"}
    head, at, k = name.partition("@")
    return upper.get(head, head.upper() if at else head) + (f"@{k}" if at else "")


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _label(row: dict, keys: list[str]) -> str:
    shown = [k for k in keys if k != "task"]
    if len(shown) == 1:
        return str(row[shown[0]])
    return ", ".join(f"{k}={row[k]}" for k in shown) or str(row.get("task", "all runs"))


def task_findings(part: pd.DataFrame, keys: list[str]) -> list[str]:
    """The sentences for one task's rows of a summary (compare.summarise)."""
    metric = next((m for m in part["metric"] if isinstance(m, str)), None)
    if metric is None:
        return ["no completed runs with a value of the metric"]
    points = _is_fraction(part)
    scale, unit = (100.0, f" {_metric_label(metric)} points") if points else (1.0, f" {_metric_label(metric)}")
    digits = 1 if points else 4

    def num(x: float) -> str:
        return f"{x * scale:+.{digits}f}"

    higher = bool(part["higher_is_better"].iloc[0])
    out = []
    baseline = next((b for b in part.get("baseline", pd.Series(dtype=object)) if isinstance(b, str) and b), None)
    for row in part.to_dict("records"):
        if not row.get("baseline"):
            continue
        name, base = _label(row, keys), row["baseline"].partition("=")[2]
        n, delta, p_holm = int(row["n"]), row["delta"], row.get("p_holm", math.nan)
        base_row = part[part[row["baseline"].partition("=")[0]] == base] if row["baseline"] else part.iloc[0:0]
        n_base = int(base_row["n"].iloc[0]) if len(base_row) else 0
        pairs = int(row.get("n_pairs") or 0)
        n_text = f"n = {pairs} paired seeds" if pairs else f"n = {n} and {n_base} runs"
        if n < 2 or n_base < 2 or math.isnan(delta):
            out.append(f"{name}: too few runs to test against {base} (n = {n} and {n_base}; a test needs 2 each)")
            continue
        if not math.isfinite(p_holm):
            if abs(delta) < 1e-12:
                out.append(f"{name}: the same result as {base} on every seed ({n_text}): no spread, so no test")
            else:
                out.append(f"{name}: {num(delta)}{unit} {'over' if delta > 0 else 'under'} {base} on every seed, "
                           f"the same difference each time ({n_text}): no spread, so no test")
            continue
        interval = f"95% CI {num(row['delta_ci_low'])} to {num(row['delta_ci_high'])}"
        if p_holm <= ALPHA:
            better = (delta > 0) == higher
            out.append(f"{name}: {num(delta)}{unit} {'over' if delta > 0 else 'under'} {base}, "
                       f"{'better' if better else 'worse'} ({interval}, Holm-adjusted p = {_p(p_holm)}, {n_text})")
        elif row["p_value"] <= ALPHA:  # significant alone, not over the task's comparisons together
            tested = int(part["p_holm"].notna().sum())
            out.append(f"{name}: no evidence of a difference from {base} at the 5% level: {num(delta)}{unit} "
                       f"({interval}, p = {_p(row['p_value'])}), but Holm-adjusted over {tested} comparisons "
                       f"p = {_p(p_holm)} ({n_text})")
        else:
            out.append(f"{name}: no evidence of a difference from {base} ({num(delta)}{unit}, {interval}, "
                       f"Holm-adjusted p = {_p(p_holm)}, {n_text})")
    ranked = part.dropna(subset=["mean"])
    if len(ranked) > 1:
        best = ranked.iloc[0]
        note = "" if baseline else "; no baseline, so no differences are tested"
        out.insert(0, f"highest mean {_metric_label(metric)}: {_label(best, keys)} "
                      f"({best['mean'] * scale:.{digits}f}{' points' if points else ''}; ranks alone are not "
                      f"evidence{note})" if higher else
                      f"lowest mean {_metric_label(metric)}: {_label(best, keys)} ({best['mean']:.4f}; ranks alone "
                      f"are not evidence{note})")
    return out


def findings(summary: pd.DataFrame, keys: list[str]) -> dict[str, list[str]]:
    """Task -> its sentences (one entry, "", when the runs are not split by task)."""
    if "task" not in summary:
        return {"": task_findings(summary, keys)}
    return {str(task): task_findings(part, keys) for task, part in summary.groupby("task", sort=False)}


def markdown(found: dict[str, list[str]]) -> str:
    lines = ["## Findings", ""]
    for task, sentences in found.items():
        if task:
            lines += [f"**{task}**", ""]
        lines += [f"- {s}" for s in sentences] + [""]
    return "\n".join(lines)
