"""`regbench compare`: the runs (runs.py) grouped and aggregated over seeds, tested against a baseline, and
written as a terminal table, tidy CSV, Markdown and LaTeX (tables.py).

Statistics come from statistics.py (Student-t intervals, paired and Welch t-tests, Holm, bootstrap); the
rules of grouping, from runs.py; the findings in sentences, from findings.py."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from regbench.errors import CompareError
from regbench.fileio import write_csv_atomic, write_text_atomic
from regbench.record import STATUSES, legacy_direction
from regbench.runs import canonical, key_values, label_keys, load_runs, metric_columns
from regbench.statistics import bootstrap_interval, difference, holm, mean_interval
from regbench.tables import TERMINAL_WIDTH, display_table, plural, to_latex

__all__ = ["CompareError", "Comparison", "compare", "summarise"]

DEFAULT_BASELINE = "regularizer=none"
SUMMARY_NAME = "summary"  # summary.csv / summary.md / summary.tex

# Cost columns: (record column, summary column, how the group reduces it)
COST_COLUMNS = (("params", "params", "first"), ("params_trainable", "params_trainable", "first"),
                ("flops_per_example", "flops_per_example", "first"), ("train_time_s", "train_time_s", "mean"),
                ("peak_memory_bytes", "peak_memory_mib", "mean"), ("latency_s_per_batch", "latency_ms", "mean"),
                ("gap", "gap", "mean"), ("best_epoch", "best_epoch", "mean"))



def _higher_is_better(rows: pd.DataFrame, metric: str) -> bool:
    """The metric's direction as the records' tasks declared it (record.metric_directions); for rows that
    carry none (a results.csv written before version 2 of the record), version 1's rule."""
    name = metric.split(".", 1)[1] if metric.startswith(("test.", "val.", "train.")) else metric
    column = f"metric_directions.{name}"
    if column in rows and rows[column].notna().any():
        return bool(rows[column].dropna().iloc[0])
    primary = rows["primary_metric"].dropna() if "primary_metric" in rows else pd.Series(dtype=object)
    higher = rows["higher_is_better"].dropna() if "higher_is_better" in rows else pd.Series(dtype=object)
    return legacy_direction(metric, primary.iloc[0] if len(primary) else None,
                            bool(higher.iloc[0]) if len(higher) else None)


def _averaged(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The runs a group's mean is over: completed, with a finite metric, one per seed (the latest)."""
    done = rows[rows["status"] == "completed"].copy()
    done["_value"] = pd.to_numeric(done[metric], errors="coerce")
    done = done[np.isfinite(done["_value"])]
    if "seed" in done and done["seed"].notna().all():
        order = [c for c in ("started_at",) if c in done]
        done = done.sort_values(order, kind="stable") if order else done
        done = done.drop_duplicates("seed", keep="last")
    return done


CHANCE_TOLERANCE = 0.005  # half a point of accuracy: a group this close to 1/classes on every seed never trained


def _untrained(members: pd.DataFrame, metric: str | None, values: np.ndarray) -> str:
    """Why a group's runs show that this protocol did not train them, or "": an accuracy at chance
    (1/classes, the record's data.classes) on every seed, or an F1 of 0 on every seed (a tagger that
    never predicts an entity). Its comparison then says nothing about the regimen."""
    if not metric or not len(values):
        return ""
    name = metric.rsplit(".", 1)[-1]
    classes = pd.to_numeric(members.get("data.classes", pd.Series(dtype=float)), errors="coerce").dropna()
    if name == "accuracy" and len(classes) and classes.nunique() == 1 and classes.iloc[0] > 1:
        chance = 1 / float(classes.iloc[0])
        if np.all(np.abs(values - chance) <= CHANCE_TOLERANCE):
            return f"accuracy at chance (1/{int(classes.iloc[0])}) on every seed"
    if name == "f1" and np.all(values == 0):
        return "F1 0 on every seed (no entity predicted)"
    return ""


def _seed_values(members: pd.DataFrame) -> dict[int, float]:
    seeds = members["seed"] if "seed" in members else pd.Series(range(len(members)), index=members.index)
    return {int(s) if pd.notna(s) else i: float(v) for i, (s, v) in enumerate(zip(seeds, members["_value"]))}


def summarise(runs: pd.DataFrame, by: Sequence[str], metric: str | None = None,
              baseline: str | None = DEFAULT_BASELINE, bootstrap: int = 0) -> pd.DataFrame:
    """One row per group of `runs` (grouped by the columns `by`): status counts, n, mean, std, CI,
    min/max, cost columns over exactly the runs averaged, delta to the baseline with its CI, p-value and
    Holm-adjusted p-value, and the rank within the task (1 = best). `bootstrap` > 0 adds percentile
    bootstrap intervals with that many resamples (boot_ci_low/high, delta_boot_low/high)."""
    runs = runs.copy()
    keys = list(by)
    runs["_metric"] = metric_columns(runs, metric)
    base_key, base_value = _parse_baseline(baseline, keys, runs)

    rows, seed_values = [], {}
    for label, group in runs.groupby(keys, sort=False, dropna=False) if keys else [((), runs)]:
        label = label if isinstance(label, tuple) else (label,)
        metric_name = group["_metric"].dropna().iloc[0] if group["_metric"].notna().any() else None
        members = _averaged(group, metric_name) if metric_name in group else group.iloc[0:0].assign(_value=[])
        values = _seed_values(members)
        interval = mean_interval(list(values.values()))
        x = np.array(list(values.values()), dtype=float)
        row = dict(zip(keys, label))
        row.update(metric=metric_name, higher_is_better=_higher_is_better(group, metric_name or ""),
                   runs=len(group), n=len(values), mean=interval.mean,
                   std=float(x.std(ddof=1)) if len(x) > 1 else math.nan,
                   ci_low=interval.low, ci_high=interval.high,
                   min=float(x.min()) if len(x) else math.nan, max=float(x.max()) if len(x) else math.nan,
                   seeds=" ".join(str(s) for s in sorted(values)))
        row["untrained"] = _untrained(members, metric_name, x)
        # runs whose costs were measured while other processes took CPUs they needed (record's load)
        row["contended"] = int(members["load.contended"].fillna(False).astype(bool).sum()) \
            if "load.contended" in members else 0
        for status in STATUSES:
            row[status] = int((group["status"] == status).sum())
        # a seed completed by two different runs of one group (e.g. with --by) is averaged once, its latest
        row["repeated_seeds"] = max(row["completed"] - len(values), 0) if "seed" in group else 0
        for column, name, how in COST_COLUMNS:  # over exactly the runs the metric averages
            series = pd.to_numeric(members[column], errors="coerce").dropna() if column in members else pd.Series()
            value = (series.iloc[0] if how == "first" else series.mean()) if len(series) else math.nan
            if name == "peak_memory_mib":
                value /= 2 ** 20
            elif name == "latency_ms":
                value *= 1000
            row[name] = value
        if bootstrap:
            row["boot_ci_low"], row["boot_ci_high"] = bootstrap_interval([x], bootstrap)
        seed_values[label] = values
        rows.append(row)
    summary = pd.DataFrame(rows)
    _add_differences(summary, keys, seed_values, base_key, base_value, bootstrap)
    return _rank(summary, keys)


def _parse_baseline(baseline: str | None, keys: Sequence[str],
                    runs: pd.DataFrame) -> tuple[str | None, str | None]:
    if not baseline:
        return None, None
    key, sep, value = baseline.partition("=")
    if not sep or not key:
        raise CompareError(f"--baseline {baseline!r}: write it as KEY=VALUE, e.g. --baseline regularizer=none")
    if key not in keys:
        raise CompareError(f"--baseline {baseline}: {key!r} is not one of the grouping keys ({', '.join(keys)}); "
                           "add it with --by or pick another baseline")
    value = canonical(value)
    present = list(dict.fromkeys(runs[key].map(canonical)))
    if value not in present:
        raise CompareError(f"--baseline {baseline}: no group has {key}={value}; the groups have {key} = "
                           f"{', '.join(present)}")
    return key, value


def _add_differences(summary: pd.DataFrame, keys: Sequence[str], seed_values: dict, base_key: str | None,
                     base_value: str | None, bootstrap: int = 0) -> None:
    columns = {"baseline": [], "delta": [], "delta_ci_low": [], "delta_ci_high": [], "p_value": [], "test": [],
               "n_pairs": []}
    if bootstrap:
        columns.update(delta_boot_low=[], delta_boot_high=[])
    for _, row in summary.iterrows():
        label = tuple(row[k] for k in keys)
        found = None
        if base_key is not None and row[base_key] != base_value:
            wanted = tuple(base_value if k == base_key else row[k] for k in keys)
            found = seed_values.get(wanted)
        values: tuple = ("", math.nan, math.nan, math.nan, math.nan, "", 0)
        if found and seed_values[label]:
            diff = difference(seed_values[label], found)
            values = (f"{base_key}={base_value}", diff.delta, diff.low, diff.high, diff.p_value, diff.test,
                      diff.n_pairs)
            if bootstrap:
                group, base = seed_values[label], found
                if diff.n_pairs:
                    seeds = sorted(group)
                    values += bootstrap_interval([[group[s] for s in seeds], [base[s] for s in seeds]], bootstrap,
                                                 paired=True)
                else:
                    values += bootstrap_interval([list(group.values()), list(base.values())], bootstrap)
        elif bootstrap:
            values += (math.nan, math.nan)
        for column, value in zip(columns, values):
            columns[column].append(value)
    for column, values in columns.items():
        summary[column] = values
    # Holm over the comparisons against the baseline within a task (and metric): a grid of many groups
    # makes some unadjusted p < 0.05 by chance alone
    summary["p_holm"] = math.nan
    within = [k for k in ("task",) if k in keys] + ["metric"]
    if len(summary):
        for _, part in summary.groupby(within, sort=False, dropna=False):
            summary.loc[part.index, "p_holm"] = holm(part["p_value"].tolist())


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
@dataclass
class Comparison:
    runs: pd.DataFrame
    keys: list[str]
    summary: pd.DataFrame
    table: pd.DataFrame
    wide_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    baseline: str | None = None
    findings: dict[str, list[str]] = field(default_factory=dict)  # task -> sentences (regbench.findings)

    def status_line(self) -> str:
        counts = self.runs["status"].value_counts()
        parts = [f"{counts.get(s, 0)} {s}" for s in STATUSES if counts.get(s, 0)]
        parts += [f"{counts[s]} {s}" for s in sorted(set(counts.index) - set(STATUSES))]
        metrics = ", ".join(dict.fromkeys(m for m in self.summary["metric"] if isinstance(m, str)))
        tests = set(self.summary.get("test", pd.Series(dtype=object))) - {""}
        duplicates = self.runs.attrs.get("duplicates", 0)
        line = (f"{plural(len(self.runs), 'run')} in {plural(len(self.summary), 'group')} ({', '.join(parts)}); "
                f"metric: {metrics or '–'}; only completed runs are averaged; grouped by {', '.join(self.keys)}")
        if duplicates:
            line += f"; {plural(duplicates, 'repeated record')} of the same runs counted once"
        contended = int(self.summary["contended"].sum()) if "contended" in self.summary else 0
        if contended:
            line += (f"; costs of {plural(contended, 'run')} measured under contention (other processes took "
                     "CPUs they needed: their times are not the regimen's; see the contended column)")
        if tests & {"paired t", "Welch t"}:
            line += "; p: paired t-test over seeds" + (" (Welch's t where the seeds differ)" if "Welch t" in tests
                                                       else "") + ", Holm-adjusted over each task's comparisons"
        return line

    def findings_text(self, width: int = 100) -> str:
        import textwrap

        if not any(self.findings.values()):
            return ""
        lines = ["Findings:"]
        for task, sentences in self.findings.items():
            indent = "  "
            if task and len(self.findings) > 1:
                lines.append(f"  {task}")
                indent = "    "
            for sentence in sentences:
                lines += textwrap.wrap(sentence, width, initial_indent=f"{indent}- ",
                                       subsequent_indent=f"{indent}  ", break_on_hyphens=False)
        return "\n".join(lines)

    def text(self, wide: bool = False) -> str:
        import textwrap

        table = (self.wide_table if wide else self.table).to_string(index=False, line_width=TERMINAL_WIDTH)
        status = textwrap.fill(self.status_line(), TERMINAL_WIDTH, break_on_hyphens=False)
        return "\n\n".join(p for p in (table, self.findings_text(), status) if p)

    def write(self, out_dir: Path) -> list[Path]:
        """summary.csv (tidy, one row per group, raw numbers), summary.md (the readable table, then the
        full one) and summary.tex (the readable table)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / f"{SUMMARY_NAME}.{ext}" for ext in ("csv", "md", "tex")]
        write_csv_atomic(files[0], self.summary)
        compact = self.table.to_markdown(index=False, disable_numparse=True)  # keep "0.0030" as written
        full = self.wide_table.to_markdown(index=False, disable_numparse=True)
        from regbench.findings import markdown

        write_text_atomic(files[1], f"{compact}\n\n{self.status_line()}\n\n{markdown(self.findings)}\n"
                                    f"Every column:\n\n{full}\n")
        write_text_atomic(files[2], to_latex(self.table))
        return files



def compare(paths: Iterable[str | Path], by: Sequence[str] | None = None, metric: str | None = None,
            baseline: str | None = DEFAULT_BASELINE, bootstrap: int = 0) -> Comparison:
    from regbench.findings import findings

    runs = load_runs(list(paths))
    keys = list(by) if by else label_keys(runs)
    for key in keys:  # one spelling per value, so plots and tables match runs to their summary row
        runs[key] = key_values(runs, key)
    if baseline == DEFAULT_BASELINE and ("regularizer" not in keys or "none" not in set(runs["regularizer"])):
        baseline = None  # the default applies only where regularizers are compared against none
    if bootstrap < 0:
        raise CompareError(f"--bootstrap {bootstrap}: give a number of resamples, e.g. --bootstrap 10000 (0 = none)")
    summary = summarise(runs, by=keys, metric=metric, baseline=baseline, bootstrap=bootstrap)
    return Comparison(runs=runs, keys=keys, summary=summary, table=display_table(summary, keys, baseline,
                                                                                 bootstrap=bootstrap),
                      wide_table=display_table(summary, keys, baseline, wide=True, bootstrap=bootstrap),
                      baseline=baseline, findings=findings(summary, keys))
