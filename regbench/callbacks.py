"""Hydra callbacks: keep a sweep's results.csv current; when the sweep ends, show it, write the grouped
summary (summary.csv/.md/.tex, as `regbench compare SWEEP_DIR` would) into the sweep directory, and name
every run that failed or could not start, with exit status 1, so that a script sees a sweep that went wrong."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from regbench.record import METRICS_FILE
from regbench.results import RESULTS_FILE, update_sweep_results

log = logging.getLogger(__name__)


class SweepResultsCallback(Callback):
    """After every job of a multirun, rebuild <sweep dir>/results.csv from the run records; at the end
    of the sweep, print the table. Works whatever launcher ran the jobs, in whatever order they end."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            update_sweep_results(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        frame = update_sweep_results(sweep_dir)
        print(f"\n{_runs_table(frame)}\n\n{len(frame)} run{'s' if len(frame) != 1 else ''}; results: "
              f"{sweep_dir / RESULTS_FILE}")
        if not frame.empty:
            self._write_summary(sweep_dir)
        if config.get("logger", {}).get("name") == "mlflow":
            self._export_mlflow(config, sweep_dir)
        failures = failed_runs(sweep_dir)
        if failures:
            # Other launchers' workers may print nowhere the user looks: say here what went wrong, in one place.
            for run_dir, why in failures:
                print(f"regbench: run {run_dir} failed: {why}", file=sys.stderr)
            runs = sum(1 for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit())
            print(f"regbench: error: {len(failures)} of {runs} runs failed (above); fix the cause and run the same "
                  "command again: finished runs are reused", file=sys.stderr)
            raise SystemExit(1)

    @staticmethod
    def _export_mlflow(config: DictConfig, sweep_dir: Path) -> None:
        """logger=mlflow in a multirun: one writer, after every job, so no two write the SQLite file at once."""
        from regbench.tracking.mlflow import export

        try:
            done = export([sweep_dir], config.logger.tracking_uri, config.logger.experiment)
            print(f"MLflow: {done.created} runs added, {done.updated} updated in {config.logger.tracking_uri} "
                  f"(experiment {config.logger.experiment})")
        except Exception as err:  # noqa: BLE001 - the runs are on disk; the export can be redone
            log.warning("could not export the sweep to MLflow (%s: %s); run `regbench export mlflow %s`",
                        type(err).__name__, err, sweep_dir)

    @staticmethod
    def _write_summary(sweep_dir: Path) -> None:
        from regbench.compare import compare
        from regbench.tables import files_line

        try:  # the grouped summary is a convenience: a problem with it must not fail a finished sweep
            import pandas as pd

            comparison = compare([sweep_dir])
            files = comparison.write(sweep_dir)
            with pd.option_context("display.width", 250, "display.max_columns", None):
                print(f"\n{comparison.text()}\n{files_line(files, 'summary:')}")
        except Exception as err:  # noqa: BLE001 - logged, and `regbench compare` can redo it
            log.warning("could not write the sweep summary (%s: %s); run `regbench compare %s`",
                        type(err).__name__, err, sweep_dir)


def failed_runs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(run dir, why) for every job of the sweep whose record says failed, or that wrote no record at all
    (refused before it started: the reason is the error line in its regbench.log)."""
    failures = []
    for run_dir in sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)):
        record_file = run_dir / METRICS_FILE
        if record_file.is_file():
            try:
                record = json.loads(record_file.read_text())
            except (OSError, ValueError):
                continue  # being written by a job still running elsewhere: not this sweep's business
            if record.get("status") == "failed":
                failures.append((run_dir, record.get("error") or "see its record"))
            continue
        log_file = run_dir / "regbench.log"
        lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
        errors = [line.split("regbench: error: ", 1)[1] for line in lines if "regbench: error: " in line]
        failures.append((run_dir, errors[-1] if errors else "it wrote no record; see its regbench.log"))
    return failures


def _runs_table(runs) -> str:
    """One line per run for the terminal (what a sweep prints when it ends): the keys that tell its runs
    apart (model and every swept setting among them), the seed, the status and the primary metric."""
    import pandas as pd

    from regbench.runs import key_values, label_keys, with_configs
    from regbench.tables import TERMINAL_WIDTH, fmt

    if runs.empty:
        return "(no finished runs)"
    runs = with_configs(runs)
    keys = label_keys(runs)
    table = pd.DataFrame({key: key_values(runs, key) for key in keys})
    for column in ("seed", "status", "best_epoch"):
        if column in runs:
            table[column] = runs[column].map(lambda v: "–" if pd.isna(v) else str(int(v)) if isinstance(v, float)
                                             else str(v))
    metrics = runs["primary_metric"] if "primary_metric" in runs else pd.Series("accuracy", index=runs.index)
    for split in ("train", "val", "test"):
        table[split] = [fmt(row.get(f"{split}.{m}")) if isinstance(m, str) else "–"
                        for m, (_, row) in zip(metrics, runs.iterrows())]
    table["metric"] = metrics.fillna("–")
    if "train_time_s" in runs:
        table["train s"] = runs["train_time_s"].map(lambda v: fmt(v, 1))
    return table.to_string(index=False, line_width=TERMINAL_WIDTH)
