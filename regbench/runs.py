"""The run records as one table: read from any mix of sweep directories, run directories and results.csv
files, each run once, and the keys that tell its groups apart.

Only the run records are read (metrics.json, results.csv, .hydra/config.yaml), never the code that made
them, so runs from different days, machines and regbench versions can be read together. compare.py,
ensemble.py and the sweep's runs table (callbacks.py) group what this module reads.

What makes a group: runs are grouped by the resolved values of every key of their identity (the
record's `config`: the run id's keys), minus the seed, which is what a group averages over, and minus
`paths.*` (where the data lives differs between machines that ran the same experiment). A group is
labelled by the keys whose values differ between the runs of a task, with their real values; a config
group whose `name` decides all its differing keys shows as that name (`regularizer`, `optimizer`).
Every run counts once: attempts of one run id (a re-run that reused it, an interrupted attempt that a
later one completed) are one run, its latest attempt. Records written before the `config` key existed
are grouped by their names and command-line overrides, as regbench did then; rows of results.csv files
written before a key existed read it at its off value (the table's counterpart of record.upgrade)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from regbench.errors import CompareError
from regbench.record import ADDED_KEYS, COSMETIC_KEYS, METRICS_FILE, flatten
from regbench.results import RESULTS_FILE, run_row, sweep_rows

CONFIG = "config."  # the record's resolved identity, flattened into results.csv columns
# Always part of a group of records without `config`; other overridden keys join when their value varies.
BASE_KEYS = ("task", "model", "regularizer", "optimizer")
NOT_GROUPED = ("seed", *COSMETIC_KEYS)
NOT_GROUPED_PREFIXES = ("hydra.", "paths.", "logger.")


def _with_columns(frame: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    """`frame` with `columns` added (or replaced) at once: a record's many string columns are one block each,
    and inserting into such a frame makes pandas warn of fragmentation on the user's terminal."""
    added = pd.DataFrame(columns, index=frame.index)
    return pd.concat([frame.drop(columns=[c for c in columns if c in frame]), added], axis=1)


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
                frame = _with_columns(frame, run_path=[str((path.parent / d).resolve()) if isinstance(d, str)
                                                       else None for d in frame["run_dir"]])
        elif (path / METRICS_FILE).is_file():
            frame = _with_columns(pd.DataFrame([run_row(path, path)]), run_path=str(path.resolve()))
        elif path.is_dir():
            frame = pd.DataFrame(list(sweep_rows(path)))
            if not frame.empty:
                frame = _with_columns(frame, run_path=[str((path / d).resolve()) for d in frame["run_dir"]])
        else:
            raise CompareError(f"{raw}: no such sweep directory, run directory or results.csv "
                               f"(give directories that hold {METRICS_FILE} files, or {RESULTS_FILE} files)")
        if frame.empty:
            raise CompareError(f"{raw}: no run records found (no {METRICS_FILE} below it, or an empty CSV)")
        frames.append(_with_columns(frame, source=str(raw)))
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
            runs[column] = [off if known and is_missing(value) else value
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


def canonical(value) -> str:
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
            return runs[column].map(canonical)
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
    canon = runs[columns].apply(lambda column: column.map(canonical))
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
    keys = [k for k in BASE_KEYS if k in runs.columns and (k == "task" or runs[k].map(canonical).nunique() > 1)]
    for key in overridden_keys(runs):
        if key in keys or key in NOT_GROUPED or key.startswith(NOT_GROUPED_PREFIXES) or key not in runs.columns:
            continue
        if runs[key].map(canonical).nunique() > 1:
            keys.append(key)
    return keys


def key_values(runs: pd.DataFrame, key: str) -> pd.Series:
    """A grouping key's value for every run: a config group's name (`regularizer`), a config key
    (`optimizer.lr`), or any other column of the records; canonical spellings."""
    for column in (f"{CONFIG}{key}.name", f"{CONFIG}{key}", key):
        if column in runs:
            values = runs[column]
            if column != key and key in runs and values.isna().any():
                values = values.fillna(runs[key])  # records without `config` (version 1) beside newer ones
            return values.map(canonical)
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


def is_missing(value) -> bool:
    """No number: None, NaN or an infinity (a cell of a results.csv, a summary's empty difference)."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))
