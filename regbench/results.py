"""The run record on disk: metrics.json, history.csv and the sweep's results.csv.

Every file is written atomically (temporary file, flush, fsync, rename): a crash at any instant
leaves either the old or the new file. results.csv is rebuilt from the runs' metrics.json files
under a lock, so jobs finishing at the same moment (or on other nodes) cannot lose rows."""
from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from regbench.data.files import locked, write_atomic

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
RESULTS_FILE = "results.csv"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.pt"   # the best-validation weights
LAST_CHECKPOINT = "last.pt"   # everything an unfinished run needs to continue (resume.py)

# Config keys that never change what a run computes: where outputs and caches go, how progress is
# shown, how often state is saved. A run's id leaves them out (resume.py) and compare never groups by them.
COSMETIC_KEYS = ("paths.output_dir", "paths.cache_dir", "trainer.progress", "trainer.threads",
                 "trainer.save_checkpoint", "trainer.resume", "trainer.checkpoint_every")


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def _json_safe(value: Any) -> Any:
    """NaN/Inf are not JSON: store them as null (a diverged run's loss) so any reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n")


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"test": {"accuracy": 0.9}} -> {"test.accuracy": 0.9}; lists become JSON strings."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def read_metrics(run_dir: Path) -> dict[str, Any]:
    with open(run_dir / METRICS_FILE, encoding="utf-8") as fh:
        return json.load(fh)


def run_row(run_dir: Path, relative_to: Path) -> dict[str, Any]:
    """One flat row for one run record: the metrics plus the overrides that made the run, each override
    also as its own column (`optimizer.lr`), and "overrides" as the `key=value ...` line."""
    record = read_metrics(run_dir)
    overrides = record.pop("overrides", {}) or {}
    row = {"run_dir": str(run_dir.relative_to(relative_to)) if run_dir != relative_to else "."}
    row.update(flatten(record))
    for key, value in overrides.items():
        row.setdefault(key, value)
    row["overrides"] = " ".join(f"{k}={v}" for k, v in overrides.items())
    return row


def sweep_rows(sweep_dir: Path) -> Iterator[dict[str, Any]]:
    """One flat row per run record below sweep_dir."""
    for metrics_file in sorted(sweep_dir.rglob(METRICS_FILE), key=lambda p: str(p)):
        try:
            yield run_row(metrics_file.parent, sweep_dir)
        except (OSError, json.JSONDecodeError):
            continue  # a run being written right now; the next update picks it up


def update_sweep_results(sweep_dir: Path) -> pd.DataFrame:
    """Rebuild sweep_dir/results.csv from every run record in the sweep; return it."""
    sweep_dir = Path(sweep_dir)
    with locked(sweep_dir / ".results.lock"):
        frame = pd.DataFrame(list(sweep_rows(sweep_dir)))
        if not frame.empty:
            first = [c for c in ("run_dir", "status", "task", "model", "regularizer", "optimizer", "seed")
                     if c in frame.columns]
            frame = frame[first + [c for c in frame.columns if c not in first]]
        write_csv_atomic(sweep_dir / RESULTS_FILE, frame)
    return frame


def summary_table(frame: pd.DataFrame) -> str:
    """A short, readable table of a sweep for the terminal."""
    if frame.empty:
        return "(no finished runs)"
    primary = frame["primary_metric"].iloc[0] if "primary_metric" in frame else "accuracy"
    columns = [c for c in ("task", "regularizer", "optimizer", "seed", "status", "best_epoch",
                           f"train.{primary}", f"val.{primary}", f"test.{primary}", "gap", "params",
                           "train_time_s") if c in frame.columns]
    table = frame[columns].copy()
    for c in table.columns:
        if table[c].dtype.kind == "f":
            table[c] = table[c].map(lambda v: f"{v:.4f}" if c != "train_time_s" else f"{v:.1f}")
    return table.to_string(index=False)
