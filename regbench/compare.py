"""`regbench compare`: read run records from anywhere, group them, aggregate over seeds, test against a
baseline, and write the summary as a terminal table, tidy CSV, Markdown and LaTeX.

Only the run records are read (metrics.json, results.csv, history.csv), never the code that made
them, so runs from different days, machines and regbench versions can be compared. Statistics come
from scipy (Student-t intervals, paired and Welch t-tests); tables from pandas.

What makes a group: runs are grouped by the resolved values of every key of their identity (the
record's `config`: the run id's keys), minus the seed, which is what a group averages over, and minus
`paths.*` (where the data lives differs between machines that ran the same experiment). A group is
labelled by the keys whose values differ between the runs of a task, with their real values; a config
group whose `name` decides all its differing keys shows as that name (`regularizer`, `optimizer`).
Every run counts once: attempts of one run id (a re-run that reused it, an interrupted attempt that a
later one completed) are one run, its latest attempt. Records written before the `config` key existed
are grouped by their names and command-line overrides, as regbench did then."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from regbench.errors import RegbenchError
from regbench.fileio import write_csv_atomic, write_text_atomic
from regbench.findings import format_p
from regbench.record import ADDED_KEYS, COSMETIC_KEYS, METRICS_FILE, STATUSES, flatten, legacy_direction
from regbench.results import RESULTS_FILE, run_row, sweep_rows
from regbench.statistics import CONFIDENCE, bootstrap_interval, difference, holm, mean_interval

CONFIG = "config."  # the record's resolved identity, flattened into results.csv columns
# Always part of a group of records without `config`; other overridden keys join when their value varies.
BASE_KEYS = ("task", "model", "regularizer", "optimizer")
NOT_GROUPED = ("seed", *COSMETIC_KEYS)
NOT_GROUPED_PREFIXES = ("hydra.", "paths.", "logger.")
DEFAULT_BASELINE = "regularizer=none"
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
    `source`, the input it came from. Each run counts once: a run reached twice (a sweep dir and its
    results.csv) or attempted twice (the same run id) is its latest attempt; `runs.attrs["duplicates"]`
    says how many rows that dropped."""
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
    if "status" not in runs:
        raise CompareError("the inputs hold no 'status' column: they are not regbench run records")
    before = len(runs)
    runs = _each_run_once(runs)
    runs = with_configs(runs)
    runs.attrs["duplicates"] = before - len(runs)
    return runs


def _each_run_once(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the same directory read twice counts once, and of the attempts of one run id
    (a reused copy, an interrupted attempt and the one that completed it) the latest counts."""
    if "run_path" in runs:
        known = runs["run_path"].notna()
        runs = pd.concat([runs[known].drop_duplicates("run_path", keep="last"), runs[~known]], ignore_index=True)
    if "run_id" not in runs:
        return runs.reset_index(drop=True)
    keyed = runs["run_id"].notna()
    order = [c for c in ("started_at", "finished_at") if c in runs]
    latest = runs[keyed].sort_values(order, kind="stable", na_position="first") if order else runs[keyed]
    latest = latest.drop_duplicates("run_id", keep="last")
    return pd.concat([latest, runs[~keyed]]).sort_index().reset_index(drop=True)


def with_configs(runs: pd.DataFrame) -> pd.DataFrame:
    """Records written before `config` existed: the resolved identity from the run's .hydra/config.yaml,
    where the run directory is at hand."""
    columns = _identity_columns(runs)
    missing = runs[columns].isna().all(axis=1) if columns else pd.Series(True, index=runs.index)
    if "run_path" not in runs or not missing.any():
        return _with_added_keys(runs)
    rows = {}
    for index in runs.index[missing]:
        path = runs.at[index, "run_path"]
        config = Path(path) / ".hydra" / "config.yaml" if isinstance(path, str) else None
        if config is not None and config.is_file():
            loaded = OmegaConf.to_container(OmegaConf.load(config), resolve=False) or {}
            rows[index] = flatten({k: v for k, v in loaded.items() if k != "hydra"}, CONFIG)
    if not rows:
        return _with_added_keys(runs)
    extra = pd.DataFrame.from_dict(rows, orient="index")
    runs = runs.combine_first(extra)[list(runs.columns) + [c for c in extra.columns if c not in runs.columns]]
    return _with_added_keys(runs)


def _with_added_keys(runs: pd.DataFrame) -> pd.DataFrame:
    """A run recorded without a key added since (or at its off value, which its identity leaves out) has
    that key at its off value: `regularizer.label_smoothing` reads 0, not `-`, beside runs that set it."""
    columns = _identity_columns(runs)
    if not columns:
        return runs
    described = runs[columns].notna().any(axis=1)  # runs whose identity is known at all
    for key, off in ADDED_KEYS.items():
        column = CONFIG + key
        if column in runs:  # element by element: an off value may be a list (trainer.compression.prune)
            runs[column] = [off if known and _missing(value) else value
                            for value, known in zip(runs[column].tolist(), described)]
    return runs


def _identity_columns(runs: pd.DataFrame) -> list[str]:
    """The config.* columns that make runs different experiments (not the seed, not where files go)."""
    out = []
    for column in runs.columns:
        if not column.startswith(CONFIG):
            continue
        key = column[len(CONFIG):]
        if key in NOT_GROUPED or key.startswith(NOT_GROUPED_PREFIXES):
            continue
        out.append(column)
    return out


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


def _task_of(runs: pd.DataFrame) -> pd.Series:
    for column in (f"{CONFIG}task.name", "task"):
        if column in runs:
            return runs[column].map(_canonical)
    return pd.Series("-", index=runs.index)


def _described_by_config(runs: pd.DataFrame) -> bool:
    columns = _identity_columns(runs)
    return bool(columns) and not runs[columns].isna().all(axis=1).any()


def label_keys(runs: pd.DataFrame) -> list[str]:
    """The keys that tell this comparison's groups apart: `task`, then every identity key whose value
    differs between the runs of a task, a config group shown by its name when the name decides them."""
    if not _described_by_config(runs):
        return _legacy_keys(runs)
    columns = _identity_columns(runs)
    canon = runs[columns].apply(lambda column: column.map(_canonical))
    task = _task_of(runs)
    varying = [c for c in columns if canon.groupby(task)[c].nunique().max() > 1]
    keys = ["task"] if "task" in runs or f"{CONFIG}task.name" in runs else []
    for group in dict.fromkeys(c[len(CONFIG):].split(".")[0] for c in varying):
        members = [c for c in varying if c[len(CONFIG):].split(".")[0] == group]
        name = f"{CONFIG}{group}.name"
        decided = []
        if name in columns:  # what the group's name decides within each task is shown as the name
            by_name = canon.groupby([task, canon[name]])
            decided = [c for c in members if c == name or by_name[c].nunique().max() <= 1]
            if name in members and group != "task":
                keys.append(group)
        keys += [c[len(CONFIG):] for c in members if c not in decided]
    return _without_decided_code(keys, canon, task)


def _without_decided_code(keys: list[str], canon: pd.DataFrame, task: pd.Series) -> list[str]:
    """The `code.*` keys (hashes of a user's source files) only where they tell groups apart that the other
    keys do not: a regularizer.extra entry that differs already names the other code."""
    code = [k for k in keys if k.startswith("code.")]
    others = [k for k in keys if not k.startswith("code.")]
    if not code or others == ["task"] or not others:
        return keys

    def column(key: str) -> pd.Series:
        if key == "task":
            return task
        return canon[f"{CONFIG}{key}.name"] if f"{CONFIG}{key}.name" in canon else canon[f"{CONFIG}{key}"]

    parts = [column(k) for k in others]
    needed = [k for k in code if canon.groupby(parts)[f"{CONFIG}{k}"].nunique().max() > 1]
    return [k for k in keys if not k.startswith("code.") or k in needed]


def _legacy_keys(runs: pd.DataFrame) -> list[str]:
    keys = [k for k in BASE_KEYS if k in runs.columns and (k == "task" or runs[k].map(_canonical).nunique() > 1)]
    for key in overridden_keys(runs):
        if key in keys or key in NOT_GROUPED or key.startswith(NOT_GROUPED_PREFIXES) or key not in runs.columns:
            continue
        if runs[key].map(_canonical).nunique() > 1:
            keys.append(key)
    return keys


def key_values(runs: pd.DataFrame, key: str) -> pd.Series:
    """A grouping key's value for every run: a config group's name (`regularizer`), a config key
    (`optimizer.lr`), or any other column of the records; canonical spellings."""
    for column in (f"{CONFIG}{key}.name", f"{CONFIG}{key}", key):
        if column in runs:
            if column == f"{CONFIG}task.name" and runs[column].isna().any() and "task" in runs:
                return runs[column].fillna(runs["task"]).map(_canonical)
            return runs[column].map(_canonical)
    options = ", ".join(dict.fromkeys(label_keys(runs) + list(BASE_KEYS)))
    raise CompareError(f"--by {key}: no such key in the run records; choose from {options}, any config key "
                       "(e.g. optimizer.lr) or any column of results.csv")


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
    value = _canonical(value)
    present = list(dict.fromkeys(runs[key].map(_canonical)))
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
TERMINAL_WIDTH = 100  # what regbench prints fits a terminal this wide (wider tables wrap into blocks)
def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(value, digits: int = 4) -> str:
    """A number for a table: fixed point, or scientific when fixed point would be unreadable (a diverged
    loss of 2.9e26, a tiny p); "–" for a missing or non-finite value."""
    if _missing(value):
        return "–"
    value = float(value)
    if value != 0 and (abs(value) >= 1e6 or (digits >= 3 and abs(value) < 10 ** -digits)):
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    if _missing(value):
        return "–"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _p(p: float, test: str) -> str:
    if test == "no spread":
        return "– (no spread)"
    if not test or _missing(p):
        return "–"
    return format_p(p)


def _delta(row: dict, base_key: str, base_value: str) -> str:
    if row[base_key] == base_value:
        return "(baseline)"
    if _missing(row["delta"]):
        return "–"
    if _missing(row["delta_ci_low"]):
        return f"{row['delta']:+.4f}"
    return f"{row['delta']:+.4f} [{row['delta_ci_low']:+.4f}, {row['delta_ci_high']:+.4f}]"


def _problems(summary: pd.DataFrame) -> list[str]:
    return [", ".join([f"{int(row[s])} {s}" for s in STATUSES[1:] if row[s]] +
                      ([f"{int(row['repeated_seeds'])} repeated seed"] if row["repeated_seeds"] else []))
            for _, row in summary.iterrows()]


def display_table(summary: pd.DataFrame, keys: Sequence[str], baseline: str | None = None,
                  wide: bool = False, bootstrap: int = 0) -> pd.DataFrame:
    """The human-readable table. The compact one (what the terminal and the report show, about 100
    characters): the keys, n, mean ± CI, the difference to the baseline with its CI, p; `wide` adds the
    metric, rank, std, min–max and the cost columns."""
    table = pd.DataFrame()
    for key in keys:
        table[key] = summary[key]
    if wide or summary["metric"].dropna().nunique() > 1:  # tasks of different metrics: each row names its own
        table["metric"] = summary["metric"].map(lambda m: m if isinstance(m, str) else "–")
    if wide:
        table["rank"] = summary["rank"]
    table["n"] = [f"{n}/{r}" for n, r in zip(summary["n"], summary["runs"])]
    table["mean ± 95% CI"] = [f"{fmt(m)} ± {fmt((h - lo) / 2)}" if not _missing(lo) else fmt(m)
                              for m, lo, h in zip(summary["mean"], summary["ci_low"], summary["ci_high"])]
    if bootstrap:
        table[f"95% bootstrap CI ({bootstrap})"] = [f"[{fmt(lo)}, {fmt(h)}]" if not _missing(lo) else "–"
                                                   for lo, h in zip(summary["boot_ci_low"], summary["boot_ci_high"])]
    if wide:
        table["std"] = summary["std"].map(fmt)
        table["min–max"] = [f"{fmt(a)}–{fmt(b)}" if not _missing(a) else "–" for a, b in zip(summary["min"], summary["max"])]
    if summary["baseline"].astype(bool).any():
        base_key, _, base_value = baseline.partition("=")
        base_value = _canonical(base_value)
        table[f"Δ vs {baseline} [95% CI]"] = [_delta(row, base_key, base_value) for row in summary.to_dict("records")]
        table["p"] = [_p(p, t) if not wide or not t or t == "no spread" else f"{_p(p, t)} ({t})"
                      for p, t in zip(summary["p_value"], summary["test"])]
        table["p (Holm)"] = [_p(p, t) if t != "no spread" else "–" for p, t in zip(summary["p_holm"], summary["test"])]
        if bootstrap:
            table["Δ bootstrap CI"] = [f"[{lo:+.4f}, {h:+.4f}]" if not _missing(lo) else "–"
                                       for lo, h in zip(summary["delta_boot_low"], summary["delta_boot_high"])]
    if wide:
        table["params"] = summary["params"].map(_count)
        table["FLOPs/ex"] = summary["flops_per_example"].map(_count)
        table["train s"] = summary["train_time_s"].map(lambda v: fmt(v, 1))
        table["peak MiB"] = summary["peak_memory_mib"].map(lambda v: fmt(v, 0))
        table["gap"] = summary["gap"].map(fmt)
        if summary["contended"].any():
            table["contended"] = [f"{c}/{n}" if c else "" for c, n in zip(summary["contended"], summary["n"])]
    problems = _problems(summary)
    if any(problems):
        table["not averaged"] = [p or "" for p in problems]
    return table


def to_latex(table: pd.DataFrame) -> str:
    return table.to_latex(index=False, escape=True).replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


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
        line = (f"{_plural(len(self.runs), 'run')} in {_plural(len(self.summary), 'group')} ({', '.join(parts)}); "
                f"metric: {metrics or '–'}; only completed runs are averaged; grouped by {', '.join(self.keys)}")
        if duplicates:
            line += f"; {_plural(duplicates, 'repeated record')} of the same runs counted once"
        contended = int(self.summary["contended"].sum()) if "contended" in self.summary else 0
        if contended:
            line += (f"; costs of {_plural(contended, 'run')} measured under contention (other processes took "
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


def files_line(files: Sequence[Path], verb: str = "wrote") -> str:
    """"wrote 13 files in DIR: a.csv, b.md, ..." folded at TERMINAL_WIDTH (it was one 800-column line)."""
    import os
    import textwrap

    files = [Path(f) for f in files]
    if not files:
        return f"{verb} nothing"
    folder = Path(os.path.commonpath([str(f.parent) for f in files])) if len(files) > 1 else files[0].parent
    names = ", ".join(f.relative_to(folder).as_posix() for f in files)
    line = f"{verb} {_plural(len(files), 'file')} in {folder}: {names}"
    return textwrap.fill(line, TERMINAL_WIDTH, subsequent_indent="  ", break_on_hyphens=False,
                         break_long_words=False)


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
