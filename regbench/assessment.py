"""What a run measures of its best weights once training is over (rank 0 only): the test and train
metrics with their directions, calibration for every classifier, the gap, the task's own output files and
test_outputs.npz, the compressed copies (trainer.compression) and the inference latency."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from regbench import complexity, contract, loop
from regbench.calibration import calibration
from regbench.compression import compression_results
from regbench.record import RunRecord, flatten, write_test_outputs

log = logging.getLogger(__name__)


def assess(cfg: DictConfig, task: Any, model: torch.nn.Module, device: torch.device, record: RunRecord,
           run_dir: Path) -> None:
    """Score `model` (already holding the best weights) and write what the record and run_dir keep of it."""
    t1 = time.perf_counter()
    record.test = loop.evaluate(task, model, "test")
    outputs = task.test_outputs()
    contract.check_test_outputs(task, outputs)
    if outputs is not None and str(outputs.get("kind", "classification")) == "classification" \
            and "nll" not in record.test:  # calibration for every classifier, not only the built-in tasks
        record.test.update(calibration(np.asarray(outputs["probs"]), np.asarray(outputs["labels"])))
    record.metric_directions = {m: task.higher_is_better_for(m) for m in flatten(record.test)
                                if not m.startswith("per_type.")}
    record.train = loop.evaluate(task, model, "train")
    record.eval_time_s = round(record.eval_time_s + time.perf_counter() - t1, 3)
    record.gap = record.train[task.primary_metric] - record.test[task.primary_metric]
    task.write_outputs(run_dir)
    if cfg.trainer.test_outputs and outputs is not None:
        _write_test_outputs(cfg, outputs, run_dir)
    ccfg = cfg.trainer.compression
    if ccfg.prune or ccfg.int8:  # after the outputs: test_outputs.npz is the uncompressed model's
        t1 = time.perf_counter()
        record.compression = compression_results(model, [float(f) for f in ccfg.prune], bool(ccfg.int8),
                                                 lambda m: loop.evaluate(task, m, "test"))
        record.eval_time_s = round(record.eval_time_s + time.perf_counter() - t1, 3)
    lcfg = cfg.trainer.latency
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=record.precision == "bf16")
    for key, value in complexity.latency(model, task.example_input(), device, autocast,
                                         batch_size=int(lcfg.batch_size or cfg.trainer.eval_batch_size),
                                         warmup=int(lcfg.warmup), repeats=int(lcfg.repeats),
                                         max_seconds=float(lcfg.max_seconds)).items():
        setattr(record, key, value)


def _write_test_outputs(cfg: DictConfig, outputs: dict[str, Any], run_dir: Path) -> None:
    size_mb = sum(np.asarray(v).nbytes for v in outputs.values()) / 2**20
    if size_mb > cfg.trainer.test_outputs_max_mb:
        log.warning("test_outputs.npz not written: it would be %.0f MB, over trainer.test_outputs_max_mb=%s",
                    size_mb, cfg.trainer.test_outputs_max_mb)
        return
    write_test_outputs(run_dir, outputs)
