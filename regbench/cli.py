"""The `regbench` command: a Hydra app (every config key is settable as key=value)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from regbench.errors import RegbenchError

log = logging.getLogger("regbench")

# Shown with the traceback of an unexpected error hidden; REGBENCH_DEBUG=1 shows it.
DEBUG_ENV = "REGBENCH_DEBUG"


def _overrides() -> dict[str, str]:
    """The command-line overrides that made this job, e.g. {"regularizer": "bn", "seed": "1"}."""
    out = {}
    for item in HydraConfig.get().overrides.task:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


@hydra.main(version_base="1.3", config_path="pkg://regbench.conf", config_name="config")
def train(cfg: DictConfig) -> float | None:
    from regbench import runner
    from regbench.results import METRICS_FILE
    from regbench.validation import validate

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        record = runner.run(cfg, run_dir, _overrides())
    except RegbenchError as err:
        # One line the user can act on; nothing already written is removed.
        log.error("regbench: error: %s", err)
        sys.exit(2)
    metric = record["primary_metric"]
    log.info("%s: test %s %s (best epoch %s of %s); record in %s", record["status"], metric,
             record["test"].get(metric), record["best_epoch"], record["epochs_run"], run_dir / METRICS_FILE)
    return record["test"].get(metric)


def main() -> None:
    if os.environ.get(DEBUG_ENV):
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    train()


if __name__ == "__main__":
    main()
