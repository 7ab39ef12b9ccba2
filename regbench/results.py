"""A sweep's results.csv: one flat row per run record, rebuilt from the runs' metrics.json files under a
lock, so jobs finishing at the same moment (or on other nodes) cannot lose rows."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from regbench.fileio import locked, write_csv_atomic
from regbench.record import METRICS_FILE, flatten, read_metrics

RESULTS_FILE = "results.csv"


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
