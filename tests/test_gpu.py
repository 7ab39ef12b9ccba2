"""What only a GPU can show, as tests that run where CUDA is present (`python -m pytest -m gpu` on a lent
machine) and are skipped elsewhere: a CUDA training step never makes the host wait (torch's sync debug
mode), a step launches the same number of kernels however long the epoch, and a bf16 run's metrics are
fp32 evaluations. benchmarks/gpu_checks.py measures the same at full scale for docs/benchmarks.md."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from regbench import loop, runner
from regbench.regimen import Regimen
from regbench.tasks import build_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_checks import host_waits, launches  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run where one is lent)")]

# Small batches: every task's tiny data gives more than 8 training batches, so an epoch cut to 4 or 8 steps
# has 4 or 8 (gpu_checks divides by the steps it asked for).
TASKS = {"cifar10": ["regularizer=bn_dropout_gc", "regularizer.ema.decay=0.9", "regularizer.mixup.alpha=0.2",
                     "trainer.batch_size=4"],
         "conll": ["regularizer=bn_dropout_gc", "trainer.batch_size=8"],
         "movielens": ["regularizer=bn_dropout", "trainer.batch_size=16"]}


@pytest.fixture
def cuda_cfg(small_cfg, monkeypatch):
    monkeypatch.setattr(loop, "NONFINITE_CHECK_EVERY", 10**9)  # its one read every 25 steps is by design

    def cfg(task: str, *extra: str):
        return small_cfg(task, *TASKS[task], "trainer.device=cuda", *extra)
    return cfg


@pytest.mark.parametrize("task", list(TASKS))
def test_a_cuda_step_never_makes_the_host_wait(cuda_cfg, task):
    waits = host_waits(cuda_cfg(task), torch.device("cuda"), steps=4)
    assert waits["none_per_step"], waits["per_step"]


@pytest.mark.parametrize("task", list(TASKS))
def test_a_step_launches_as_many_kernels_in_a_short_epoch_as_in_a_long_one(cuda_cfg, task):
    cfg = cuda_cfg(task)
    assert loop.build(cfg, torch.device("cuda"))[0].num_train_batches() >= 8
    short, long = launches(cfg, torch.device("cuda"), 4), launches(cfg, torch.device("cuda"), 8)
    assert abs(long - short) <= 0.05 * short + 1, (short, long)  # the same work every step, none that accumulates


def test_a_bf16_run_on_the_gpu_reports_fp32_metrics(cuda_cfg, tmp_path):
    cfg = cuda_cfg("cifar10", "trainer.precision=bf16", "trainer.max_epochs=2")
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["precision"] == "bf16"
    device = torch.device("cuda")
    task = build_task(cfg, device)
    model = task.build_model(Regimen.from_config(cfg)).to(device)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"])
    assert loop.evaluate(task, model, "test") == record["test"]  # evaluate is fp32 whatever the training precision
