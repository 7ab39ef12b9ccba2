"""`regbench compare`: read run records from anywhere, group them, aggregate over seeds, test against a
baseline, and write the summary as a terminal table, tidy CSV, Markdown and LaTeX.

Only the run records are read (metrics.json, results.csv, history.csv), never the code that made
them, so runs from different days, machines and regbench versions can be compared. Statistics come
from scipy (Student-t intervals, paired and Welch t-tests); tables from pandas."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from regbench.errors import RegbenchError
from regbench.fileio import write_csv_atomic, write_text_atomic
from regbench.record import COSMETIC_KEYS, METRICS_FILE, STATUSES
from regbench.results import RESULTS_FILE, run_row, sweep_rows

# Always part of a group; other overridden keys join when their value varies across the runs.
BASE_KEYS = ("task", "model", "regularizer", "optimizer")
# Overrides that never make runs different experiments: the seed is what we aggregate over, the rest
# only say where files go or how a run is shown and saved; paths.* also covers the data folder, which
# differs between machines that ran the same experiment.
NOT_GROUPED = ("seed", *COSMETIC_KEYS)
NOT_GROUPED_PREFIXES = ("hydra.", "paths.")
DEFAULT_BASELINE = "regularizer=none"
CONFIDENCE = 0.95
SUMMARY_NAME = "summary"  # summary.csv / summary.md / summary.tex

# Cost columns: (record column, summary column, how the group reduces it)
COST_COLUMNS = (("params", "params", "first"), ("params_trainable", "params_trainable", "first"),
                ("flops_per_example", "flops_per_example", "first"), ("train_time_s", "train_time_s", "mean"),
                ("peak_memory_bytes", "peak_memory_mib", "mean"), ("latency_s_per_batch", "latency_ms", "mean"),
                ("gap", "gap", "mean"), ("best_epoch", "best_epoch", "mean"))


class CompareError(RegbenchError):
    """Nothing to compare, or an option that does not fit the runs; the message says what would."""


# -- reading ---------------------------------------------------------------------------------------
def load_runs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run from any mix of sweep directories, run directories and results.csv files.

    Each row keeps `run_path`, the run's directory (for history.csv) when it can be located, and
    `source`, the input it came from. A run reached twice (a sweep dir and its results.csv) counts once."""
    frames = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file() and path.suffix == ".csv":
            frame = pd.read_csv(path, dtype={"run_dir": str})
            if "run_dir" in frame:
                frame["run_path"] = [str((path.parent / d).resolve()) if isinstance(d, str) else None
                                     for d in frame["run_dir"]]
        elif (path / METRICS_FILE).is_file():
            frame = pd.DataFrame([run_row(path, path)])
            frame["run_path"] = str(path.resolve())
        elif path.is_dir():
            frame = pd.DataFrame(list(sweep_rows(path)))
            if not frame.empty:
                frame["run_path"] = [str((path / d).resolve()) for d in frame["run_dir"]]
        else:
            raise CompareError(f"{raw}: no such sweep directory, run directory or results.csv "
                               f"(give directories that hold {METRICS_FILE} files, or {RESULTS_FILE} files)")
        if frame.empty:
            raise CompareError(f"{raw}: no run records found (no {METRICS_FILE} below it, or an empty CSV)")
        frame["source"] = str(raw)
        frames.append(frame)
    runs = pd.concat(frames, ignore_index=True, sort=False)
    if "run_path" in runs:
        known = runs["run_path"].notna()
        runs = pd.concat([runs[known].drop_duplicates("run_path"), runs[~known]], ignore_index=True)
    if "status" not in runs:
        raise CompareError("the inputs hold no 'status' column: they are not regbench run records")
    return runs


def overridden_keys(runs: pd.DataFrame) -> list[str]:
    """Keys set on the command line of any run, in first-seen order (from the `overrides` column)."""
    keys: list[str] = []
    for line in runs.get("overrides", pd.Series(dtype=object)).dropna():
        for item in str(line).split():
            key = item.partition("=")[0]
            if key and key not in keys:
                keys.append(key)
    return keys


def _canonical(value) -> str:
    """One spelling per value, whether it came from JSON ("0.005"), CSV (0.005) or a missing cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, bool) or str(value).lower() in ("true", "false"):
        return str(value).lower()
    return str(int(number)) if number.is_integer() and "e" not in str(value).lower() else repr(number)


def group_keys(runs: pd.DataFrame, by: Sequence[str] | None = None) -> list[str]:
    if by:
        missing = [k for k in by if k not in runs.columns]
        if missing:
            options = ", ".join(k for k in (*BASE_KEYS, *overridden_keys(runs)) if k in runs.columns)
            raise CompareError(f"--by {', '.join(missing)}: no such column in the run records; "
                               f"choose from {options} (or any column of results.csv)")
        return list(by)
    keys = [k for k in BASE_KEYS if k in runs.columns]
    for key in overridden_keys(runs):
        if key in keys or key in NOT_GROUPED or key.startswith(NOT_GROUPED_PREFIXES) or key not in runs.columns:
            continue
        if runs[key].map(_canonical).nunique() > 1:
            keys.append(key)
    return keys


def metric_columns(runs: pd.DataFrame, metric: str | None) -> pd.Series:
    """The metric column each run is judged on: `test.<its task's primary metric>` by default."""
    if metric is None:
        if "primary_metric" not in runs:
            raise CompareError("the run records name no primary metric: pass --metric (e.g. --metric test.accuracy)")
        return runs["primary_metric"].map(lambda m: f"test.{m}" if isinstance(m, str) else None)
    name = metric if "." in metric else f"test.{metric}"
    if name not in runs.columns:
        available = sorted(c for c in runs.columns if c.split(".")[0] in ("test", "val", "train") and
                           pd.api.types.is_numeric_dtype(runs[c]))
        raise CompareError(f"--metric {metric}: no column {name!r} in the run records; available: "
                           f"{', '.join(available) or '(none)'}")
    return pd.Series(name, index=runs.index)


# -- statistics ------------------------------------------------------------------------------------
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


def difference(group: dict[int, float], baseline: dict[int, float], confidence: float = CONFIDENCE) -> Difference:
    """Compare two sets of per-seed results: a paired t-test when both have the same seeds (the
    seed fixes initialisation and data order, so pairing removes that variance), Welch's t-test otherwise."""
    a, b = list(group.values()), list(baseline.values())
    delta = float(np.mean(a) - np.mean(b)) if a and b else math.nan
    if set(group) == set(baseline) and len(group) >= 2:
        seeds = sorted(group)
        result = stats.ttest_rel([group[s] for s in seeds], [baseline[s] for s in seeds])
        kind, pairs = "paired t", len(seeds)
    elif len(a) >= 2 and len(b) >= 2:
        result = stats.ttest_ind(a, b, equal_var=False)
        kind, pairs = "Welch t", 0
    else:
        return Difference(delta, math.nan, math.nan, math.nan, "", 0)
    interval = result.confidence_interval(confidence)
    return Difference(delta, float(interval.low), float(interval.high), float(result.pvalue), kind, pairs)


# -- the summary -----------------------------------------------------------------------------------
def _higher_is_better(rows: pd.DataFrame, metric: str) -> bool:
    if "higher_is_better" in rows and rows["higher_is_better"].notna().any() and metric.startswith("test."):
        return bool(rows["higher_is_better"].dropna().iloc[0])
    return "loss" not in metric


def _seed_values(rows: pd.DataFrame, metric: str) -> dict[int, float]:
    """Completed runs' finite metric values by seed (a seed run twice keeps its last record)."""
    done = rows[(rows["status"] == "completed")]
    values = {}
    for seed, value in zip(done.get("seed", pd.Series(range(len(done)), index=done.index)), done[metric]):
        if value is not None and np.isfinite(float(value)):
            values[int(seed) if pd.notna(seed) else len(values)] = float(value)
    return values


def summarise(runs: pd.DataFrame, by: Sequence[str] | None = None, metric: str | None = None,
              baseline: str | None = DEFAULT_BASELINE) -> pd.DataFrame:
    """One row per group: status counts, n, mean, std, CI, min/max, cost columns, delta to the baseline
    with its CI and p-value, and the rank within the task (1 = best)."""
    runs = runs.copy()
    keys = group_keys(runs, by)
    runs["_metric"] = metric_columns(runs, metric)
    for key in keys:
        runs[key] = runs[key].map(_canonical)
    base_key, base_value = _parse_baseline(baseline, keys)

    rows, seed_values = [], {}
    for label, group in runs.groupby(keys, sort=False, dropna=False) if keys else [((), runs)]:
        label = label if isinstance(label, tuple) else (label,)
        metric_name = group["_metric"].dropna().iloc[0] if group["_metric"].notna().any() else None
        if metric_name is None or metric_name not in group:
            values = {}
        else:
            group = group.assign(**{metric_name: pd.to_numeric(group[metric_name], errors="coerce")})
            values = _seed_values(group, metric_name)
        interval = mean_interval(list(values.values()))
        x = np.array(list(values.values()), dtype=float)
        row = dict(zip(keys, label))
        row.update(metric=metric_name, higher_is_better=_higher_is_better(group, metric_name or ""),
                   runs=len(group), n=len(values), mean=interval.mean,
                   std=float(x.std(ddof=1)) if len(x) > 1 else math.nan,
                   ci_low=interval.low, ci_high=interval.high,
                   min=float(x.min()) if len(x) else math.nan, max=float(x.max()) if len(x) else math.nan,
                   seeds=" ".join(str(s) for s in sorted(values)))
        for status in STATUSES:
            row[status] = int((group["status"] == status).sum())
        # a seed completed twice in one group (the same run repeated) is averaged once, with its last record
        row["repeated_seeds"] = max(row["completed"] - len(values), 0) if "seed" in group else 0
        completed = group[group["status"] == "completed"]
        for column, name, how in COST_COLUMNS:
            series = pd.to_numeric(completed[column], errors="coerce").dropna() if column in completed else pd.Series()
            value = (series.iloc[0] if how == "first" else series.mean()) if len(series) else math.nan
            if name == "peak_memory_mib":
                value /= 2 ** 20
            elif name == "latency_ms":
                value *= 1000
            row[name] = value
        seed_values[label] = values
        rows.append(row)
    summary = pd.DataFrame(rows)
    _add_differences(summary, keys, seed_values, base_key, base_value)
    return _rank(summary, keys)


def _parse_baseline(baseline: str | None, keys: Sequence[str]) -> tuple[str | None, str | None]:
    if not baseline:
        return None, None
    key, sep, value = baseline.partition("=")
    if not sep or not key:
        raise CompareError(f"--baseline {baseline!r}: write it as KEY=VALUE, e.g. --baseline regularizer=none")
    if key not in keys:
        raise CompareError(f"--baseline {baseline}: {key!r} is not one of the grouping keys ({', '.join(keys)}); "
                           "add it with --by or pick another baseline")
    return key, _canonical(value)


def _add_differences(summary: pd.DataFrame, keys: Sequence[str], seed_values: dict, base_key: str | None,
                     base_value: str | None) -> None:
    columns = {"baseline": [], "delta": [], "delta_ci_low": [], "delta_ci_high": [], "p_value": [], "test": []}
    for _, row in summary.iterrows():
        label = tuple(row[k] for k in keys)
        found = None
        if base_key is not None and row[base_key] != base_value:
            wanted = tuple(base_value if k == base_key else row[k] for k in keys)
            found = seed_values.get(wanted)
        if found and seed_values[label]:
            diff = difference(seed_values[label], found)
            values = (f"{base_key}={base_value}", diff.delta, diff.low, diff.high, diff.p_value, diff.test)
        else:
            values = ("", math.nan, math.nan, math.nan, math.nan, "")
        for column, value in zip(columns, values):
            columns[column].append(value)
    for column, values in columns.items():
        summary[column] = values


def _rank(summary: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rank groups within each task (and metric) by mean, best first; groups with no result rank last."""
    within = [k for k in ("task",) if k in keys] + ["metric"]
    summary["rank"] = 0
    for _, part in summary.groupby(within, sort=False, dropna=False):
        ascending = not bool(part["higher_is_better"].iloc[0])
        order = part["mean"].rank(ascending=ascending, method="min", na_option="bottom")
        summary.loc[part.index, "rank"] = order.astype(int)
    summary = summary.sort_values([*within, "rank"], kind="stable").reset_index(drop=True)
    first = [*keys, "metric", "rank"]
    return summary[first + [c for c in summary.columns if c not in first]]


# -- presentation ----------------------------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def display_table(summary: pd.DataFrame, keys: Sequence[str], baseline: str | None = None) -> pd.DataFrame:
    """The human-readable table: mean ± CI, delta [CI] and p, costs in friendly units, problem runs shown."""
    table = pd.DataFrame()
    for key in keys:
        table[key] = summary[key]
    table["metric"] = summary["metric"].map(lambda m: m if isinstance(m, str) else "–")
    table["rank"] = summary["rank"]
    table["n"] = [f"{n}/{r}" for n, r in zip(summary["n"], summary["runs"])]
    table["mean ± 95% CI"] = [f"{_fmt(m)} ± {_fmt((h - lo) / 2)}" if not math.isnan(lo) else _fmt(m)
                              for m, lo, h in zip(summary["mean"], summary["ci_low"], summary["ci_high"])]
    table["std"] = summary["std"].map(_fmt)
    table["min–max"] = [f"{_fmt(a)}–{_fmt(b)}" for a, b in zip(summary["min"], summary["max"])]
    if summary["baseline"].astype(bool).any():
        base_key, base_value = _parse_baseline(baseline, keys)
        table[f"Δ vs {baseline} [95% CI]"] = [
            "(baseline)" if row[base_key] == base_value else
            "–" if math.isnan(row["delta"]) else
            f"{row['delta']:+.4f} [{row['delta_ci_low']:+.4f}, {row['delta_ci_high']:+.4f}]"
            if not math.isnan(row["delta_ci_low"]) else f"{row['delta']:+.4f}"
            for row in summary.to_dict("records")]
        table["p"] = [f"{p:.3g} ({t})" if t else "–" for p, t in zip(summary["p_value"], summary["test"])]
    table["params"] = summary["params"].map(_count)
    table["FLOPs/ex"] = summary["flops_per_example"].map(_count)
    table["train s"] = summary["train_time_s"].map(lambda v: _fmt(v, 1))
    table["peak MiB"] = summary["peak_memory_mib"].map(lambda v: _fmt(v, 0))
    table["gap"] = summary["gap"].map(_fmt)
    problems = [", ".join([f"{int(row[s])} {s}" for s in STATUSES[1:] if row[s]] +
                          ([f"{int(row['repeated_seeds'])} repeated seed"] if row["repeated_seeds"] else []))
                for _, row in summary.iterrows()]
    if any(problems):
        table["not averaged"] = [p or "" for p in problems]
    return table


def to_latex(table: pd.DataFrame) -> str:
    return table.to_latex(index=False, escape=True).replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


@dataclass
class Comparison:
    runs: pd.DataFrame
    keys: list[str]
    summary: pd.DataFrame
    table: pd.DataFrame

    def status_line(self) -> str:
        counts = self.runs["status"].value_counts()
        parts = [f"{counts.get(s, 0)} {s}" for s in STATUSES if counts.get(s, 0)]
        others = sorted(set(counts.index) - set(STATUSES))
        parts += [f"{counts[s]} {s}" for s in others]
        return (f"{len(self.runs)} runs in {len(self.summary)} groups ({', '.join(parts)}); only completed runs "
                f"are averaged; grouped by {', '.join(self.keys)}")

    def text(self) -> str:
        return self.table.to_string(index=False) + "\n\n" + self.status_line()

    def write(self, out_dir: Path) -> list[Path]:
        """summary.csv (tidy, one row per group, raw numbers), summary.md and summary.tex (the readable table)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / f"{SUMMARY_NAME}.{ext}" for ext in ("csv", "md", "tex")]
        write_csv_atomic(files[0], self.summary)
        markdown = self.table.to_markdown(index=False, disable_numparse=True)  # keep "0.0030" as written
        write_text_atomic(files[1], f"{markdown}\n\n{self.status_line()}\n")
        write_text_atomic(files[2], to_latex(self.table))
        return files


def compare(paths: Iterable[str | Path], by: Sequence[str] | None = None, metric: str | None = None,
            baseline: str | None = DEFAULT_BASELINE) -> Comparison:
    runs = load_runs(list(paths))
    keys = group_keys(runs, by)
    for key in keys:  # one spelling per value, so plots can match runs to their summary row
        runs[key] = runs[key].map(_canonical)
    if baseline and baseline.partition("=")[0] not in keys:
        if baseline == DEFAULT_BASELINE:
            baseline = None  # the default only applies when regularizers are being compared
    summary = summarise(runs, by=keys, metric=metric, baseline=baseline)
    return Comparison(runs=runs, keys=keys, summary=summary, table=display_table(summary, keys, baseline))
