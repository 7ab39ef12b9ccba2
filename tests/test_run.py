"""Real training runs on a tiny generated image folder: the record, determinism, divergence."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from regbench.record import RECORD_KEYS, read_metrics


def test_one_epoch_run_writes_every_file_of_the_record(small_run, tmp_path):
    record, run_dir = small_run("cifar10", "regularizer=bn_dropout_gc")
    on_disk = read_metrics(run_dir)
    assert on_disk == json.loads(json.dumps(record))
    assert set(on_disk) == set(RECORD_KEYS) - {"traceback"}  # one schema: every key, nothing else
    assert on_disk["status"] == "completed" and on_disk["regularizer"] == "bn_dropout_gc"
    assert on_disk["best_epoch"] == 1 and on_disk["epochs_run"] == 1
    for split in ("train", "val", "test"):
        assert 0.0 <= on_disk[split]["accuracy"] <= 1.0 and on_disk[split]["loss"] > 0
    assert on_disk["gap"] == pytest.approx(on_disk["train"]["accuracy"] - on_disk["test"]["accuracy"])
    assert on_disk["params"] > 1000 and on_disk["flops_per_example"] > on_disk["params"]
    assert on_disk["train_time_s"] > 0 and on_disk["peak_memory_bytes"] > 0 and on_disk["device"] == "cpu"
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["git_dirty"] in (True, False, None) and (on_disk["git_dirty"] is None) == (on_disk["git_commit"] is None)
    # cost figures: trainable = total here; the checkpoint holds the weights plus a little metadata
    assert on_disk["params_trainable"] == on_disk["params"] and on_disk["higher_is_better"] is True
    assert on_disk["params"] * 4 < on_disk["model_size_bytes"] < on_disk["checkpoint_bytes"]
    assert on_disk["latency_s_per_batch"] > 0 and on_disk["latency_batch_size"] == 32
    assert 3 <= on_disk["latency_repeats"] <= 10 and "multiply-add = 2" in on_disk["flops_counting"]
    assert on_disk["data"] == {"source": on_disk["data"]["source"], "n_train": 60, "n_val": 20, "n_test": 30,
                               "n_train_eval": 20, "classes": 10, "image_size": 32, "channels": 3}

    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1]
    for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "train_time_s", "eval_time_s",
                   "grad_norm_mean", "grad_norm_max", "clip_rate"):
        assert column in history.columns and history[column].notna().all()
    assert history["lr"].iloc[0] == pytest.approx(0.05)

    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and "features.bn1.weight" in checkpoint["model"]


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(small_run, tmp_path):
    extra = ("regularizer=bn_dropout", "trainer.max_epochs=2", "trainer.resume=false")  # train b, do not reuse a
    a, _ = small_run("cifar10", *extra, name="a")
    b, _ = small_run("cifar10", *extra, name="b")
    c, _ = small_run("cifar10", *extra, "seed=1", name="c")
    for split in ("train", "val", "test"):
        assert a[split] == b[split]
    assert pd.read_csv(tmp_path / "a" / "history.csv")["train_loss"].tolist() == \
        pd.read_csv(tmp_path / "b" / "history.csv")["train_loss"].tolist()
    assert a["val"]["loss"] != c["val"]["loss"]


def test_training_learns_the_tiny_task(small_run, tmp_path):
    record, run_dir = small_run("cifar10", "regularizer=bn", "trainer.max_epochs=8",
                            "model.width=0.125", "optimizer=adam", "optimizer.lr=0.003", "data.augment.crop_padding=0")
    history = pd.read_csv(run_dir / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert record["test"]["accuracy"] > 0.3  # chance is 0.1; the classes differ by colour


def test_clipping_fires_and_is_recorded(small_run, tmp_path):
    _, run_dir = small_run("cifar10", "regularizer=bn_dropout_gc",
                       "regularizer.grad_clip.max=1e-6")
    assert pd.read_csv(run_dir / "history.csv")["clip_rate"].iloc[0] == 1.0
    _, run_dir = small_run("cifar10", "regularizer=bn", name="noclip")
    assert pd.read_csv(run_dir / "history.csv")["clip_rate"].iloc[0] == 0.0


def test_nonfinite_loss_ends_the_run_as_diverged_with_a_complete_record(small_run, tmp_path):
    record, run_dir = small_run("cifar10", "regularizer=none", "optimizer=sgd",
                            "optimizer.lr=1e12", "trainer.max_epochs=3", "trainer.batch_size=4")
    on_disk = read_metrics(run_dir)
    assert on_disk["status"] == "diverged" and record["status"] == "diverged"
    assert on_disk["epochs_run"] >= 1 and on_disk["params"] > 0 and on_disk["finished_at"]
    assert (run_dir / "history.csv").is_file()


def test_early_stopping_ends_the_run_after_patience_epochs_without_a_better_val_metric(small_run, caplog):
    # lr 1e-12 leaves the weights (no BatchNorm, no dropout) as they were: every epoch's val accuracy ties the
    # first one, and a tie is no improvement
    with caplog.at_level("INFO"):
        record, run_dir = small_run("cifar10", "regularizer=none", "optimizer=sgd", "optimizer.lr=1e-12",
                                    "trainer.max_epochs=6", "trainer.early_stopping.patience=2")
    assert record["status"] == "completed" and record["epochs_run"] == 3 and record["best_epoch"] == 1
    assert len(set(pd.read_csv(run_dir / "history.csv")["val_accuracy"])) == 1
    assert "early stopping: no better val accuracy for 2 epochs" in [r.getMessage() for r in caplog.records]
    assert record["test"]["accuracy"] is not None  # tested, with the best epoch's weights


def test_l1_penalty_shrinks_weights(small_run, tmp_path):
    def weight_l1(name: str, *extra: str) -> float:
        _, run_dir = small_run("cifar10", "optimizer=sgd", "optimizer.weight_decay=0",
                           "trainer.max_epochs=2", *extra, name=name)
        state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
        return sum(v.abs().sum().item() for k, v in state.items() if k.endswith("weight"))

    assert weight_l1("l1", "penalty.l1=0.01") < weight_l1("plain")


def test_failure_is_recorded_before_the_error_propagates(small_run, tmp_path, monkeypatch):
    from regbench.tasks.cifar10 import Cifar10Task

    def boom(self, model, batch):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(Cifar10Task, "training_step", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        small_run("cifar10")
    record = read_metrics(tmp_path / "run")
    assert record["status"] == "failed" and "simulated crash" in record["error"]


def test_the_recorded_torchvision_version_is_torchvisions_own_without_importing_it():
    """A tagging or MovieLens run never imports torchvision (2.7 s of torch._dynamo on a CPU), yet its
    record names the same version, local tag and all, as torchvision.__version__."""
    code = ("import sys; from regbench.provenance import versions; v = versions()['torchvision']; "
            "print('torchvision' in sys.modules); import torchvision; print(v == torchvision.__version__, v)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["False", "True"] and out[2]
