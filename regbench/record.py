"""The run record: the interface between training and everything after it (compare, plots, report,
trackers). One schema (`RunRecord`, written as metrics.json), one status enum, and one writer that
writes only on the process that owns the run directory (rank 0 under torchrun).

Readers never import the code that trained: metrics.json is plain JSON, history.csv plain CSV."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regbench.fileio import write_atomic, write_csv_atomic, write_json_atomic

METRICS_FILE = "metrics.json"
# metrics.json's schema version. 1: every record written before the field existed (2026-12-06); 2: adds
# record_version and metric_directions. upgrade() brings any earlier record to this one; every reader calls it.
RECORD_VERSION = 2
LOWER_IS_BETTER = ("loss", "nll", "ece", "brier")  # what version 1 records are read with: the names to minimise
HISTORY_FILE = "history.csv"
# The final model's test predictions, what `regbench ensemble` averages; "kind" says which arrays it holds:
#   classification: probs (float32, N x C), labels (int64, N), in the test set's order
#   tagging: probs (float32, tokens x tags: CRF marginals or the softmax), labels (int64, tokens), lengths
#            (int64, sentences; tokens in sentence order), tag_names (str, tags), span (bool: score chunk F1)
#   ranking: scores (float32, test users x items; -inf on the user's train and validation items), relevant
#            (int64, pairs x 2: row in scores, item), ks (int64)
TEST_OUTPUTS_FILE = "test_outputs.npz"

# Config keys that never change what a run computes: where outputs and caches go, how progress is
# shown, how often state is saved; the CPU's threads and its treatment of subnormal floats change no more
# than the order of a sum does (the record says what they were: threads, flush_denormal). A run's id
# leaves them out and compare never groups by them.
COSMETIC_KEYS = ("paths.output_dir", "paths.cache_dir", "trainer.progress", "trainer.threads",
                 "trainer.save_checkpoint", "trainer.resume", "trainer.checkpoint_every", "trainer.test_outputs",
                 "trainer.test_outputs_max_mb", "logger", "trainer.flush_denormal")
# Keys added after runs were first recorded, at the value that keeps the earlier behaviour. A run with
# such a key at that value is the run it always was: checkpoints.identity leaves the key out (the run
# id stays what it was) and compare reads a record without the key as having that value.
ADDED_KEYS: dict[str, Any] = {
    "regularizer.norm.groups": 8, "regularizer.label_smoothing": 0.0, "regularizer.mixup.alpha": 0.0,
    "regularizer.cutmix.alpha": 0.0, "regularizer.ema.decay": 0.0, "regularizer.stochastic_depth": 0.0,
    "regularizer.extra": [], "optimizer._target_": None, "optimizer.decay_norm_and_bias": True,
    "trainer.compression.prune": [], "trainer.compression.int8": False,
}
FLOPS_COUNTING = "FLOPs of one forward pass, one multiply-add = 2 FLOPs (MACs = FLOPs / 2)"


class Status(str, Enum):
    """How a run ended (or that it has not): a str, so it is written and compared as its value."""

    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"  # a tuning trial stopped early by the pruner: never a finished result
    RUNNING = "running"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        """A finished run that a re-run reuses; anything else is resumed or trained again."""
        return self in (Status.COMPLETED, Status.DIVERGED, Status.PRUNED)


STATUSES = tuple(s.value for s in Status)  # completed first: compare lists the others as "not averaged"


@dataclass
class RunRecord:
    """metrics.json, key by key, in the order they are written. docs/run-record.md says what each means."""

    status: Status = Status.RUNNING
    record_version: int = RECORD_VERSION
    task: str | None = None
    model: str | None = None
    regularizer: str | None = None
    optimizer: str | None = None
    schedule: str | None = None
    seed: int | None = None
    primary_metric: str | None = None
    higher_is_better: bool | None = None
    # every test metric's direction as the task declares it (Task.metric_directions): True = higher is better
    metric_directions: dict[str, bool] = field(default_factory=dict)
    losses: dict[str, str] = field(default_factory=dict)  # what train_loss and val_loss measure
    best_epoch: int | None = None
    epochs_run: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    val: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    gap: float | None = None
    params: int | None = None
    params_trainable: int | None = None
    flops_per_example: int | None = None
    flops_counting: str = FLOPS_COUNTING
    latency_s_per_batch: float | None = None
    latency_batch_size: int | None = None
    latency_repeats: int | None = None
    model_size_bytes: int | None = None
    checkpoint_bytes: int | None = None
    gradients: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] | None = None  # trainer.compression: the test metrics of pruned / int8 copies
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    wall_time_s: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    device: str | None = None
    threads: int | None = None
    # the machine's load around the run (regbench.machine_load): cpus, threads, loadavg_start/end,
    # other_cpus (CPUs other processes kept busy), contended (its times are not the regimen's alone)
    load: dict[str, Any] | None = None
    precision: str | None = None
    flush_denormal: bool | None = None  # subnormal floats were treated as zero on the CPU (trainer.flush_denormal)
    data: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    git_dirty: bool | None = None
    # the user's source files that a _target_ loaded (regbench.code_identity): key, target, path, sha256
    code: list[dict[str, Any]] = field(default_factory=list)
    # normalisation and dropout modules the model holds that the regimen did not place ({class: count})
    model_own_regularization: dict[str, int] = field(default_factory=dict)
    host: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    compile_time_s: float | None = None
    run_id: str | None = None
    distributed: dict[str, Any] | None = None
    resumed_from: str | None = None
    reused_from: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    # The resolved configuration that identifies the run (checkpoints.identity: everything but where files
    # go and how progress shows); compare groups runs by it.
    config: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None  # written only when the run failed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = Status(self.status).value
        if out["traceback"] is None:
            del out["traceback"]
        return out


RECORD_KEYS = tuple(f.name for f in fields(RunRecord))


class RecordWriter:
    """Writes a run's metrics.json and history.csv atomically; a no-op on a process that does not own
    the run directory (ranks other than 0 under torchrun), so callers never check."""

    def __init__(self, run_dir: Path, owner: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.owner = owner
        self.started = time.time()

    def write(self, record: RunRecord | dict[str, Any]) -> None:
        if not self.owner:
            return
        if isinstance(record, RunRecord):
            record.wall_time_s = round(time.time() - self.started, 3)
            record = record.to_dict()
        write_json_atomic(self.run_dir / METRICS_FILE, record)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        if not self.owner or not rows:
            return
        write_csv_atomic(self.run_dir / HISTORY_FILE, pd.DataFrame(rows))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's metrics.json, upgraded to the current RECORD_VERSION."""
    with open(Path(run_dir) / METRICS_FILE, encoding="utf-8") as fh:
        return upgrade(json.load(fh))


def legacy_direction(metric: str, primary: str | None, higher_is_better: bool | None) -> bool:
    """How version 1 records (no metric_directions) were read: lower is better for losses and calibration
    errors, the record's own direction for its primary metric, higher for the rest."""
    name = metric.rsplit(".", 1)[-1]
    if name in LOWER_IS_BETTER or "loss" in metric:
        return False
    if primary is not None and higher_is_better is not None and name == primary:
        return bool(higher_is_better)
    return True


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """Any earlier record in the current version's shape (in place, and returned): the one place that knows
    what each version lacked. Version 1 gets metric_directions from legacy_direction and `upgraded_from`."""
    version = int(record.get("record_version") or 1)
    if version < 2:
        primary, higher = record.get("primary_metric"), record.get("higher_is_better")
        metrics = [k for k in flatten(record.get("test") or {}) if not k.startswith("per_type.")]
        record["metric_directions"] = {m: legacy_direction(m, primary, higher) for m in metrics}
        record["upgraded_from"] = version
        record["record_version"] = RECORD_VERSION
    return record


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """history.csv's rows (one per epoch), or [] when the run has none."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file() or not path.stat().st_size:
        return []
    return pd.read_csv(path).to_dict("records")


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


def write_test_outputs(run_dir: Path, outputs: Mapping[str, Any]) -> None:
    """test_outputs.npz, atomically: any tool can recompute the test metrics from it (see TEST_OUTPUTS_FILE)."""
    write_atomic(Path(run_dir) / TEST_OUTPUTS_FILE, lambda fh: np.savez(fh, **outputs))


def read_test_outputs(run_dir: Path) -> dict[str, Any] | None:
    """The arrays of a run's test_outputs.npz with "kind" as a str, or None when the run has none. Files
    from before the kinds existed are classification outputs."""
    path = Path(run_dir) / TEST_OUTPUTS_FILE
    if not path.is_file():
        return None
    with np.load(path) as stored:
        outputs = {key: stored[key] for key in stored.files}
    outputs["kind"] = str(outputs.get("kind", "classification"))
    return outputs


def classification_outputs(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {"kind": "classification", "probs": probs.astype(np.float32), "labels": labels.astype(np.int64)}
