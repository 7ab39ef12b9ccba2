"""Trackers, read back with their own readers: TensorBoard's event accumulator and MLflow's client, on
real runs (tiny data), including after a resume and after a second export."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from regbench import runner
from regbench.errors import ConfigError
from test_resume import SignalledRun

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from regbench.tracking import tensorboard as tb  # noqa: E402
from regbench.tracking.mlflow import RUN_ID_TAG, export  # noqa: E402


def tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_has_one_point_per_epoch_and_the_final_hparams(small_cfg, tmp_path):
    cfg = small_cfg("cifar10", "logger=tensorboard", "regularizer=bn_dropout_gc", "trainer.max_epochs=3")
    record = runner.run(cfg, tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    scalars = tb_scalars(tmp_path / "run")
    for tag in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/ece", "lr", "gradients/norm_mean",
                "gradients/clip_rate"):
        assert [s for s, _ in scalars[tag]] == [1, 2, 3], tag
    assert [v for _, v in scalars["val/accuracy"]] == pytest.approx(history["val_accuracy"].tolist())
    assert [v for _, v in scalars["lr"]] == pytest.approx(history["lr"].tolist())
    assert scalars["test/final/accuracy"] == [(3, pytest.approx(record["test"]["accuracy"]))]
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"regularizer.name", "optimizer.lr", "seed"} <= {h.name for h in experiment.hparam_infos}
    assert "test/final/accuracy" in {m.name.tag for m in experiment.metric_infos}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["regularizer.name"].string_value == "bn_dropout_gc"


def test_a_reused_run_gets_its_tensorboard_curves_from_its_history(small_cfg, tmp_path):
    """logger=tensorboard on a run that is reused (trained before without a logger) writes its events from
    history.csv and the record: until 2026-12-05 nothing was written and nothing said so."""
    extra = ("regularizer=bn_dropout", "trainer.max_epochs=3")
    record = runner.run(small_cfg("cifar10", *extra), tmp_path / "original")
    again = runner.run(small_cfg("cifar10", *extra, "logger=tensorboard"), tmp_path / "reused")
    assert again["reused_from"] == str(tmp_path / "original")
    history = pd.read_csv(tmp_path / "original" / "history.csv")
    scalars = tb_scalars(tmp_path / "reused")
    assert [s for s, _ in scalars["val/accuracy"]] == [1, 2, 3]
    assert [v for _, v in scalars["val/loss"]] == pytest.approx(history["val_loss"].tolist())
    assert scalars["test/final/accuracy"] == [(3, pytest.approx(record["test"]["accuracy"]))]


def test_a_resumed_run_continues_its_curves_without_repeated_steps(small_cfg, tmp_path):
    # a checkpoint every 2 epochs and a stop after epoch 3: epoch 3 was logged but must be trained again
    extra = ("trainer.max_epochs=4", "trainer.checkpoint_every=2", "trainer.resume=true")
    reference = runner.run(small_cfg("cifar10", *extra, f"paths.output_dir={tmp_path / 'ref'}"), tmp_path / "reference")
    cfg = small_cfg("cifar10", "logger=tensorboard", *extra)
    with pytest.raises(runner.RunInterrupted):
        SignalledRun(cfg, tmp_path / "run", after=3).execute()
    assert [s for s, _ in tb_scalars(tmp_path / "run")["val/loss"]] == [1, 2, 3]
    record = runner.run(cfg, tmp_path / "run")  # the same command again: resumes after epoch 2, same folder
    assert "after epoch 2" in record["resumed_from"]
    scalars = tb_scalars(tmp_path / "run")
    assert [s for s, _ in scalars["val/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["val/loss"]] == pytest.approx(
        pd.read_csv(tmp_path / "reference" / "history.csv")["val_loss"].tolist())
    assert record["test"] == reference["test"]


def test_mlflow_live_run_then_export_twice_is_one_run_with_clean_history(small_cfg, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = ("trainer.max_epochs=3", "trainer.checkpoint_every=2", "trainer.resume=true", "logger=mlflow",
             f"logger.tracking_uri={uri}", "logger.experiment=grid")
    cfg = small_cfg("cifar10", *extra)
    with pytest.raises(runner.RunInterrupted):
        SignalledRun(cfg, tmp_path / "run", after=1).execute()  # no checkpoint yet: starts over
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "completed"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("grid").experiment_id
    for _ in range(2):  # a second export updates, it does not duplicate
        done = export([tmp_path / "run"], uri, "grid", plots=False)
        assert (done.created, done.updated) == (0, 1)
    runs = client.search_runs([experiment])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[RUN_ID_TAG] == record["run_id"]
    assert {k: run.data.tags[k] for k in ("status", "task", "model", "regimen", "seed")} == {
        "status": "completed", "task": "cifar10", "model": "cnn13", "regimen": "none", "seed": "0"}
    assert run.data.params["optimizer.lr"] == str(record["config"]["optimizer"]["lr"])
    assert run.data.metrics["test.accuracy"] == pytest.approx(record["test"]["accuracy"])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    logged = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in logged) == [1, 2, 3]
    assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(history["val_loss"].tolist())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "metrics.json"} <= artifacts


def test_runs_with_a_regularizer_of_ones_own_export_under_names_mlflow_allows(tmp_path):
    """The orthogonality runs of docs/results/issue30-ortho hold code.regularizer.extra[0]._target_: MLflow
    refuses brackets in a name, and `regbench export mlflow` stopped with its traceback on them."""
    from pathlib import Path

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = export([Path(__file__).resolve().parents[1] / "docs" / "results" / "issue30-ortho"], uri, "ortho",
                  plots=False)
    assert (done.created, done.updated) == (6, 0)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ortho").experiment_id])
    extra = [r for r in runs if r.data.tags["regimen"] == "bn_dropout_ortho"]
    assert len(extra) == 3
    for run in extra:  # the entry itself, and the short hash of its source file (part of the run id)
        assert "my_regularizer.Orthogonality" in run.data.params["regularizer.extra"]
        assert len(run.data.params["code.regularizer.extra.0._target_"]) == 12


@pytest.mark.integration
def test_export_of_a_sweep_names_metrics_mlflow_can_hold_and_adds_plots(small_run, tmp_path, cli_env):
    small_run("movielens", name="sweep/0")
    small_run("movielens", "regularizer=dropout", name="sweep/1")
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    command = [sys.executable, "-m", "regbench", "export", "mlflow", str(tmp_path / "sweep"), "--tracking-uri", uri]
    result = subprocess.run(command, capture_output=True, text=True, env=cli_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 runs added, 0 updated" in result.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("regbench").experiment_id])
    assert sorted(r.data.tags["regimen"] for r in runs) == ["dropout", "none"]
    record = json.loads((tmp_path / "sweep" / "1" / "metrics.json").read_text())
    dropout = next(r for r in runs if r.data.tags["regimen"] == "dropout")
    assert dropout.data.metrics["test.ndcg_at_10"] == pytest.approx(record["test"]["ndcg@10"])
    plots = {a.path for a in client.list_artifacts(dropout.info.run_id, "plots")}
    assert any(p.startswith("plots/learning_curves") for p in plots)
    again = subprocess.run(command, capture_output=True, text=True, env=cli_env, timeout=300)
    assert "0 runs added, 2 updated" in again.stdout
    assert len(client.search_runs([client.get_experiment_by_name("regbench").experiment_id])) == 2


@pytest.mark.integration
def test_a_multirun_with_logger_mlflow_exports_at_the_end_under_the_parallel_launcher(tiny_data_dir, tmp_path,
                                                                                     cli_env):
    from conftest import tiny_overrides

    uri = f"sqlite:///{tmp_path / 'sweep.db'}"
    command = [sys.executable, "-m", "regbench", "-m", *tiny_overrides(tiny_data_dir, tmp_path / "cache"),
               "regularizer=none,bn", "logger=mlflow", f"logger.tracking_uri={uri}",
               "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(command, capture_output=True, text=True, env=cli_env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MLflow: 2 runs added" in result.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("regbench").experiment_id])
    assert sorted(r.data.tags["regimen"] for r in runs) == ["bn", "none"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_epoch_rows_map_to_tags_and_a_missing_package_is_one_line(monkeypatch, small_cfg):
    tags = tb.epoch_tags({"epoch": 1, "train_loss": 1.0, "val_f1": 0.5, "lr": 0.1, "clip_rate": 0.2,
                          "grad_layer_mean.conv1": 3.0, "grad_vanishing": "conv1"})
    assert tags == {"train/loss": 1.0, "val/f1": 0.5, "lr": 0.1, "gradients/clip_rate": 0.2}
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the mlflow package.*regbench\[tracking\]"):
        small_cfg("cifar10", "logger=mlflow")


def test_records_from_before_run_ids_export_once_by_a_stable_id(tmp_path):
    from test_compare import write_run

    write_run(tmp_path / "old" / "0", "bn", 0, 0.8)  # no run_id, no config: an early record
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    assert (export([tmp_path / "old"], uri, "old", plots=False).created,
            export([tmp_path / "old"], uri, "old", plots=False).updated) == (1, 1)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("old").experiment_id])
    assert run.data.tags[RUN_ID_TAG].startswith("legacy-") and run.data.params["regularizer"] == "bn"
    assert run.data.metrics["test.accuracy"] == pytest.approx(0.8)
