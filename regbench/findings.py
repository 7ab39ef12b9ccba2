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


def format_p(p: float) -> str:
    """A p-value as every table and sentence shows it: three decimals ("0.500", "1.000"), two significant
    digits in scientific notation below 0.001 ("5.8e-05")."""
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"



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
        untrained = [(who, why) for who, why in ((name, row.get("untrained")),
                                                  (base, _untrained_of(part, row["baseline"])))
                     if isinstance(why, str) and why]
        if untrained:  # the difference is the protocol's, not the regimen's
            if len(untrained) == 1:
                what = f"did not train {untrained[0][0]} ({untrained[0][1]})"
            elif untrained[0][1] == untrained[1][1]:
                what = f"trained neither {name} nor {base} ({untrained[0][1]}, both)"
            else:
                what = f"trained neither {name} ({untrained[0][1]}) nor {base} ({untrained[1][1]})"
            out.append(f"{name} vs {base}: not a verdict on the regimen: this protocol {what}; tune the learning "
                       "rate, initialisation or length for each regimen before comparing")
            continue
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
        low, high = row["delta_ci_low"], row["delta_ci_high"]
        if points and (low < -1 or high > 1):  # wider than any difference of two [0, 1] values can be
            interval = "95% CI too wide to read: wider than the metric's whole range"
        else:
            interval = f"95% CI {num(low)} to {num(high)}"
        if p_holm <= ALPHA:
            better = (delta > 0) == higher
            out.append(f"{name}: {num(delta)}{unit} {'over' if delta > 0 else 'under'} {base}, "
                       f"{'better' if better else 'worse'} ({interval}, Holm-adjusted p = {format_p(p_holm)}, {n_text})")
        elif row["p_value"] <= ALPHA:  # significant alone, not over the task's comparisons together
            tested = int(part["p_holm"].notna().sum())
            out.append(f"{name}: no evidence of a difference from {base} at the 5% level: {num(delta)}{unit} "
                       f"({interval}, p = {format_p(row['p_value'])}), but Holm-adjusted over {tested} comparisons "
                       f"p = {format_p(p_holm)} ({n_text})")
        else:
            out.append(f"{name}: no evidence of a difference from {base} ({num(delta)}{unit}, {interval}, "
                       f"Holm-adjusted p = {format_p(p_holm)}, {n_text})")
    for row in part.to_dict("records"):  # a mean over the seeds that finished hides the ones that did not
        diverged = int(row.get("diverged") or 0)
        if diverged:
            out.append(f"{_label(row, keys)}: {diverged} of its {int(row['runs'])} runs diverged (a non-finite "
                       "training loss); its mean and tests are over the other runs only, so they overstate how "
                       "reliably it trains")
    ranked = part.dropna(subset=["mean"])
    if len(ranked) > 1:
        best = ranked.iloc[0]
        tied = ranked[(ranked["mean"] - best["mean"]).abs() <= 1e-12]
        note = "" if baseline else "; no baseline, so no differences are tested"
        value = (f"{best['mean'] * scale:.{digits}f}{' points' if points else ''}" if higher
                 else f"{best['mean']:.4f}")
        word = "highest" if higher else "lowest"
        if len(tied) == len(ranked):
            out.insert(0, f"every group has the same mean {_metric_label(metric)} ({value}): no ranking")
        elif len(tied) > 1:
            names = ", ".join(_label(r, keys) for r in tied.to_dict("records"))
            out.insert(0, f"{word} mean {_metric_label(metric)}, tied: {names} ({value}; ranks alone are not "
                          f"evidence{note})")
        else:
            out.insert(0, f"{word} mean {_metric_label(metric)}: {_label(best, keys)} ({value}; ranks alone are "
                          f"not evidence{note})")
    return out


def _untrained_of(part: pd.DataFrame, baseline: str) -> str:
    key, _, value = baseline.partition("=")
    if "untrained" not in part or key not in part:
        return ""
    rows = part[part[key].astype(str) == value]
    return str(rows["untrained"].iloc[0]) if len(rows) and isinstance(rows["untrained"].iloc[0], str) else ""


def findings(summary: pd.DataFrame, keys: list[str]) -> dict[str, list[str]]:
    """Task -> its sentences (one entry, "", when the runs are not split by task)."""
    if "task" not in summary:
        return {"": task_findings(summary, keys)}
    return {str(task): task_findings(part, keys) for task, part in summary.groupby("task", sort=False)}


def markdown(found: dict[str, list[str]]) -> str:
    """## Findings and its sentences; "" when there is nothing to say (no empty heading)."""
    if not any(found.values()):
        return ""
    lines = ["## Findings", ""]
    for task, sentences in found.items():
        if task:
            lines += [f"**{task}**", ""]
        lines += [f"- {s}" for s in sentences] + [""]
    return "\n".join(lines)
