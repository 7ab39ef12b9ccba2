"""Experiment trackers: where a run's numbers go besides its own record.

- logger=tensorboard: event files in the run directory while it trains (tensorboard.py).
- logger=mlflow: a single run logs into MLflow while it trains; a multirun exports every run at the end
  of the sweep instead, because parallel jobs writing to one SQLite file fail ("database is locked").
- `regbench export mlflow RUNS_OR_SWEEPS...` copies finished records into MLflow (mlflow.py).

Both packages come with the `tracking` extra; the core install does not need them."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from regbench.errors import ConfigError

log = logging.getLogger(__name__)
LOGGERS = ("none", "tensorboard", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> the module it needs


class EpochLogger(Protocol):
    def log_epoch(self, row: dict[str, Any]) -> None:
        """One history.csv row, after the epoch's checkpoint is on disk."""

    def finish(self, record: dict[str, Any]) -> None:
        """The final record, once metrics.json is written."""


def require(package: str, what: str) -> None:
    """One line naming the extra to install when a tracker's package is missing."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{what} needs the {package} package, which is not installed: "
                          "pip install 'regbench[tracking]'")


def check_config(cfg: DictConfig) -> None:
    name = cfg.logger.name
    if name not in LOGGERS:
        raise ConfigError(f"logger={name} is unknown: use one of {', '.join(LOGGERS)}")
    if name in PACKAGES:
        require(PACKAGES[name], f"logger={name}")


def live_loggers(cfg: DictConfig, run_dir: Path, start_epoch: int, record: dict[str, Any],
                 in_sweep: bool) -> list[EpochLogger]:
    """The loggers of this run (rank 0 only). A multirun's runs leave MLflow to the end of the sweep."""
    name = cfg.logger.name
    if name == "tensorboard":
        from regbench.tracking.tensorboard import TensorBoardLogger

        return [TensorBoardLogger(run_dir, start_epoch)]
    if name == "mlflow" and not in_sweep:
        from regbench.tracking.mlflow import MLflowLogger

        return [MLflowLogger(cfg.logger.tracking_uri, cfg.logger.experiment, run_dir, record)]
    return []


def replay(cfg: DictConfig, run_dir: Path, record: dict[str, Any], history: list[dict[str, Any]],
           in_sweep: bool) -> None:
    """A reused run's trackers, fed from its history.csv and record as if it had trained here: TensorBoard
    events in its directory (unless the original's were carried over with its files), the MLflow run
    (keyed by run id, so an original already in MLflow is updated, not duplicated)."""
    if cfg.logger.name == "tensorboard" and any(Path(run_dir).glob("events.out.tfevents.*")):
        return
    for tracker in live_loggers(cfg, run_dir, 0, record, in_sweep):
        for row in history:
            safely(f"logger={cfg.logger.name} for the reused run", tracker.log_epoch, row)
        safely(f"logger={cfg.logger.name} for the reused run", tracker.finish, record)


def safely(what: str, call, *args) -> None:
    """A tracker that fails (a locked database, a full disk) must not fail the training run: warn."""
    try:
        call(*args)
    except Exception as err:  # noqa: BLE001 - the run's own record is what counts; the tracker can be redone
        log.warning("%s failed (%s: %s); the run goes on, and `regbench export mlflow` can redo it", what,
                    type(err).__name__, err)


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers among flattened values (bools and strings left out)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
