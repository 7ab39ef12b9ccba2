"""MLflow: `regbench export mlflow RUNS_OR_SWEEPS...` copies run records into an MLflow tracking store,
and logger=mlflow logs a single run while it trains through the same code.

One MLflow run per regbench run, found by its tag `regbench.run_id`, so exporting twice updates rather
than duplicates:
- params: the run's resolved identity config, flattened (`optimizer.lr`, `regularizer.dropout.p`, ...);
  a run id always has the same identity, so re-logging them never conflicts;
- metrics: every number of history.csv with the epoch as its step (`train_loss`, `val_accuracy`, `lr`,
  `grad_norm_mean`, ...), plus the final record (`test.accuracy`, `val.f1`, `compression.prune_at_0.5.accuracy`,
  `train_time_s`, `gap`, ...) at step = epochs run. MLflow names may not contain "@": it is written
  "_at_" (`test.ndcg_at_10`). A step already in MLflow is not logged again, so a resumed run or a
  second export adds only what is new;
- tags: status, task, model, regimen, seed, regbench.run_id, regbench.run_dir; the MLflow status is
  FINISHED for completed and diverged runs, FAILED, KILLED (interrupted) or RUNNING;
- artifacts: history.csv, metrics.json, the run's other outputs (test_predictions.txt, test_topk.csv),
  and the plots `regbench compare --plots` draws for the run alone (under plots/).

The default store is `sqlite:///<paths.output_dir>/mlflow.db` (MLflow's file store is deprecated); an
experiment created here keeps its artifacts beside the database, in mlartifacts/."""
from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from regbench.errors import RegbenchError
from regbench.record import HISTORY_FILE, METRICS_FILE, flatten, read_history, read_metrics
from regbench.tracking import require, scalars

log = logging.getLogger(__name__)
RUN_ID_TAG = "regbench.run_id"
STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED",
          "running": "RUNNING"}
FINAL_SPLITS = ("test", "val", "train")
FINAL_NUMBERS = ("best_epoch", "epochs_run", "gap", "train_time_s", "eval_time_s", "params", "flops_per_example",
                 "latency_s_per_batch", "peak_memory_bytes", "checkpoint_bytes")
OTHER_ARTIFACTS = ("test_predictions.txt", "test_topk.csv")
BATCH = 500  # MLflow takes at most 1000 metrics, 100 params and 100 tags per call


def mlflow_name(key: str) -> str:
    """A key as MLflow allows names (alphanumerics and _ - . space : /): `ndcg@10` -> `ndcg_at_10`, a list
    entry's `regularizer.extra[0]._target_` -> `regularizer.extra.0._target_`."""
    return re.sub(r"\[(\d+)\]", r".\1", key.replace("@", "_at_"))


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).expanduser().resolve() / 'mlflow.db'}"


def regbench_run_id(record: dict[str, Any]) -> str:
    """The record's run id; records from before run ids existed get a stable one from what they hold, so
    exporting them twice still finds the same MLflow run."""
    if record.get("run_id"):
        return str(record["run_id"])
    import hashlib

    facts = [record.get(k) for k in ("task", "model", "regularizer", "optimizer", "seed", "started_at", "overrides")]
    return "legacy-" + hashlib.sha1(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _millis(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


class Store:
    """An MLflow client on one experiment (created when missing)."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        require("mlflow", "MLflow tracking")
        from mlflow.tracking import MlflowClient

        database = Path(tracking_uri.removeprefix("sqlite:///")).expanduser() \
            if tracking_uri.startswith("sqlite:///") else None
        if database is not None:  # SQLite creates the file but not its folder
            database.parent.mkdir(parents=True, exist_ok=True)

        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:  # a SQLite store keeps its artifacts beside the database, not in ./mlruns
            location = (database.parent / "mlartifacts").resolve().as_uri() if database is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def run_for(self, record: dict[str, Any]) -> tuple[str, bool]:
        """(MLflow run id, created) of the regbench run `record`."""
        rid = regbench_run_id(record)
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{rid}'",
                                        max_results=1)
        if found:
            return found[0].info.run_id, False
        name = f"{record.get('task')} {record.get('model')} {record.get('regularizer')} seed={record.get('seed')}"
        run = self.client.create_run(self.experiment_id, start_time=_millis(record.get("started_at")),
                                     tags={RUN_ID_TAG: rid}, run_name=name)
        return run.info.run_id, True

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}


@dataclass
class RunLog:
    """What is logged into one MLflow run, remembering which steps are there already."""
    store: Store
    run_id: str
    known: dict[str, set[int]] = field(default_factory=dict)

    def metrics(self, values: dict[str, float], step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        new = []
        for key, value in values.items():
            name = mlflow_name(key)
            if name not in self.known:
                self.known[name] = self.store.logged_steps(self.run_id, name)
            if step not in self.known[name]:
                new.append(Metric(name, value, timestamp, step))
                self.known[name].add(step)
        for i in range(0, len(new), BATCH):
            self.store.client.log_batch(self.run_id, metrics=new[i:i + BATCH])

    def params_and_tags(self, record: dict[str, Any], run_dir: Path) -> None:
        from mlflow.entities import Param, RunTag

        # records from before `config` existed have only their command-line overrides
        settings = record.get("config") or record.get("overrides") or {}
        params = [Param(mlflow_name(k), str(v)[:6000]) for k, v in flatten(settings).items()]
        tags = {"status": record.get("status"), "task": record.get("task"), "model": record.get("model"),
                "regimen": record.get("regularizer"), "seed": record.get("seed"), RUN_ID_TAG: regbench_run_id(record),
                "regbench.run_dir": str(run_dir.resolve())}
        tags = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        for i in range(0, max(len(params), len(tags)), 100):
            self.store.client.log_batch(self.run_id, params=params[i:i + 100], tags=tags[i:i + 100])

    def history(self, rows: list[dict[str, Any]], start_ms: int) -> None:
        for row in rows:
            epoch = int(row["epoch"])
            self.metrics({k: v for k, v in scalars(row).items() if k != "epoch"}, epoch, start_ms + epoch)

    def final(self, record: dict[str, Any], finished_ms: int) -> None:
        values = {}
        for split in FINAL_SPLITS:
            values.update(scalars(flatten(record.get(split) or {}, f"{split}.")))
        values.update(scalars(flatten(record.get("compression") or {}, "compression.")))
        values.update(scalars({k: record.get(k) for k in FINAL_NUMBERS}))
        self.metrics(values, int(record.get("epochs_run") or 0), finished_ms)

    def artifacts(self, run_dir: Path, plots: bool) -> None:
        for name in (HISTORY_FILE, METRICS_FILE, *OTHER_ARTIFACTS):
            if (run_dir / name).is_file():
                self.store.client.log_artifact(self.run_id, str(run_dir / name))
        if plots:
            with tempfile.TemporaryDirectory() as tmp:
                for path in run_plots(run_dir, Path(tmp)):
                    self.store.client.log_artifact(self.run_id, str(path), artifact_path="plots")

    def status(self, record: dict[str, Any]) -> None:
        status = STATUS.get(str(record.get("status")), "RUNNING")
        if status == "RUNNING":
            self.store.client.update_run(self.run_id, status="RUNNING")
        else:
            self.store.client.set_terminated(self.run_id, status=status, end_time=_millis(record.get("finished_at")))


def run_plots(run_dir: Path, out: Path) -> list[Path]:
    """The PNGs `regbench compare --plots` draws for this run alone (learning curves, gradient flow,
    reliability); none when the run has no history yet."""
    from regbench.compare import compare
    from regbench.plots import write_plots

    try:
        return [p for p in write_plots(compare([run_dir], baseline=None), out).files if p.suffix == ".png"]
    except RegbenchError:
        return []


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return read_metrics(run_dir), read_history(run_dir)


def export_run(store: Store, run_dir: Path, plots: bool = True, logged: RunLog | None = None) -> bool:
    """Copy one run directory's record into the store; True when its MLflow run was created. `logged`: the
    run's MLflow run as a live logger already holds it (no search, and the steps it logged are known)."""
    record, rows = read_run(run_dir)
    created = False
    if logged is None:
        run_id, created = store.run_for(record)
        logged = RunLog(store, run_id)
    logged.params_and_tags(record, run_dir)
    start = _millis(record.get("started_at")) or 0
    logged.history(rows, start)
    if record.get("status") != "running":
        logged.final(record, _millis(record.get("finished_at")) or start)
    logged.artifacts(run_dir, plots)
    logged.status(record)
    return created


@dataclass
class Exported:
    created: int = 0
    updated: int = 0
    skipped: list[str] = field(default_factory=list)


def run_dirs(paths: list[Path]) -> list[Path]:
    """Every run directory (one with metrics.json) under the given run or sweep directories."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise RegbenchError(f"{path} does not exist: give run or sweep directories")
        if (path / METRICS_FILE).is_file():
            found.append(path)
            continue
        inside = sorted(p.parent for p in path.glob(f"**/{METRICS_FILE}"))
        if not inside:
            raise RegbenchError(f"{path} holds no run records ({METRICS_FILE}): give run or sweep directories")
        found += inside
    return list(dict.fromkeys(found))


def export(paths: list[Path], tracking_uri: str, experiment: str, plots: bool = True,
           progress: bool = False) -> Exported:
    from tqdm import tqdm

    dirs = run_dirs(paths)
    store = Store(tracking_uri, experiment)
    result = Exported()
    for run_dir in tqdm(dirs, desc="export", unit="run", disable=not progress):
        try:
            created = export_run(store, run_dir, plots)
        except (OSError, ValueError, KeyError) as err:  # an unreadable record is named, the rest go on
            result.skipped.append(f"{run_dir} ({type(err).__name__}: {err})")
            continue
        if created:
            result.created += 1
        else:
            result.updated += 1
    return result


class MLflowLogger:
    """logger=mlflow in a single run: params and tags at the start, each epoch as it ends, and the whole
    record (final metrics, artifacts, status) at the end, all into the run's one MLflow run."""

    def __init__(self, tracking_uri: str, experiment: str, run_dir: Path, record: dict[str, Any]) -> None:
        self.store = Store(tracking_uri, experiment)
        self.run_dir = Path(run_dir)
        run_id, _ = self.store.run_for(record)
        self.log = RunLog(self.store, run_id)
        self.log.params_and_tags(record, self.run_dir)
        self.start = _millis(record.get("started_at")) or 0

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.log.history([row], self.start)

    def finish(self, record: dict[str, Any]) -> None:
        export_run(self.store, self.run_dir, logged=self.log)
