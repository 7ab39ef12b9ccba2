"""Hydra callbacks: keep a sweep's results.csv current; when the sweep ends, show it and write the
grouped summary (summary.csv/.md/.tex, as `regbench compare SWEEP_DIR` would) into the sweep directory."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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
        from regbench.compare import compare, runs_table

        print(f"\n{runs_table(frame)}\n\n{len(frame)} run{'s' if len(frame) != 1 else ''}; results: "
              f"{sweep_dir / RESULTS_FILE}")
        if frame.empty:
            return
        try:  # the grouped summary is a convenience: a problem with it must not fail a finished sweep
            import pandas as pd

            comparison = compare([sweep_dir])
            files = comparison.write(sweep_dir)
            with pd.option_context("display.width", 250, "display.max_columns", None):
                print(f"\n{comparison.text()}\nsummary: {', '.join(str(f) for f in files)}")
        except Exception as err:  # noqa: BLE001 - logged, and `regbench compare` can redo it
            log.warning("could not write the sweep summary (%s: %s); run `regbench compare %s`",
                        type(err).__name__, err, sweep_dir)
