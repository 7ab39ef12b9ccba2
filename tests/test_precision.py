"""Metrics are computed in fp32 whatever the training precision.

Under bf16 autocast a score keeps 8 significant bits: 256 values per octave. MovieLens then ranks items
on a coarse grid full of ties, argmaxes tie, and a GPU run (bf16 by default) is not comparable with a
CPU run. So evaluation runs with autocast switched off, whatever the run trained in.

Each test trains a real run under trainer.precision=bf16 on the CPU, then evaluates the run's best
weights again in plain fp32 and asks for the record's metrics *exactly* (tolerance 0): evaluation never
runs under autocast, so any difference at all means bf16 leaked into a metric. To show the check has
teeth, the same weights evaluated under bf16 autocast give different numbers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from regbench import runner
from regbench.regimen import Regimen
from regbench.tasks import build_task


def bf16_run_and_fp32_reevaluation(cfg, run_dir):
    """(the bf16 run's record, its best weights evaluated again in fp32, the same under bf16 autocast)."""
    record = runner.run(cfg, run_dir)
    assert record["status"] == "completed" and record["precision"] == "bf16"
    task = build_task(cfg, torch.device("cpu"))
    model = task.build_model(Regimen.from_config(cfg))
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"])
    model.eval()
    with torch.no_grad():  # plain fp32, no autocast anywhere
        fp32 = {split: task.evaluate(model, split) for split in ("val", "test", "train")}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = task.evaluate(model, "test")
    return record, fp32, bf16


def test_cifar10_accuracy_and_loss_are_fp32(small_cfg, tmp_path):
    cfg = small_cfg("cifar10", "regularizer=bn", "trainer.precision=bf16", "trainer.max_epochs=2")
    record, fp32, bf16 = bf16_run_and_fp32_reevaluation(cfg, tmp_path / "run")
    for split in ("val", "test", "train"):
        assert record[split] == fp32[split], split
    assert bf16["loss"] != fp32["test"]["loss"]


def test_tagging_crf_loss_and_viterbi_are_fp32(small_cfg, tmp_path):
    cfg = small_cfg("conll", "regularizer=bn_dropout", "trainer.precision=bf16")
    record, fp32, bf16 = bf16_run_and_fp32_reevaluation(cfg, tmp_path / "run")
    for split in ("val", "test", "train"):
        assert record[split] == fp32[split], split
    assert bf16["loss"] != fp32["test"]["loss"]


def test_movielens_scores_and_ranks_in_fp32(small_cfg, tmp_path):
    """The bug this guards against: under bf16, 99.7% of test_topk.csv's scores were exact bf16 values,
    with hundreds of ties inside users' top-20 lists."""
    cfg = small_cfg("movielens", "trainer.max_epochs=2", "trainer.batch_size=2048", "trainer.precision=bf16")
    record, fp32, bf16 = bf16_run_and_fp32_reevaluation(cfg, tmp_path / "run")
    for split in ("val", "test", "train"):
        assert record[split] == fp32[split], split
    assert bf16["loss"] != fp32["test"]["loss"]
    scores = torch.tensor(pd.read_csv(tmp_path / "run" / "test_topk.csv")["score"].to_numpy(), dtype=torch.float32)
    on_bf16_grid = (scores.to(torch.bfloat16).float() == scores).float().mean().item()
    assert on_bf16_grid < 0.1, f"{on_bf16_grid:.1%} of the written scores are bf16 values"
    topk = pd.read_csv(tmp_path / "run" / "test_topk.csv")
    ties = topk.groupby("user")["score"].apply(lambda s: len(s) - s.nunique()).sum()
    assert ties == 0 and np.isfinite(topk["score"]).all()
