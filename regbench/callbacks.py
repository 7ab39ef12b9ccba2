"""Hydra callbacks: keep a sweep's results.csv current and show it when the sweep ends."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from regbench.results import RESULTS_FILE, summary_table, update_sweep_results

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
        print(f"\n{summary_table(frame)}\n\n{len(frame)} runs; results: {sweep_dir / RESULTS_FILE}")
