"""Hyper-parameter search with the `hydra/sweeper=tune` preset (Optuna, SQLite): the study records the
validation score of real runs, a re-run continues the study instead of starting over, and a trial
that was running when the search died is run again."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_overrides
from regbench.cli import tuning_score

optuna = pytest.importorskip("optuna", reason="needs pip install 'regbench[optuna]'")

STUDY = "cifar10-cnn13-dropout-momentum-s0"  # the preset's study name for these overrides


def search(tiny_data_dir, tmp_path, env, n_trials: int) -> subprocess.CompletedProcess:
    args = ["-m", "hydra/sweeper=tune", f"hydra.sweeper.n_trials={n_trials}", "regularizer=dropout",
            "regularizer.dropout.p=interval(0.1,0.7)", *tiny_overrides(tiny_data_dir, tmp_path / "cache")]
    result = subprocess.run([sys.executable, "-m", "regbench", *args], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load_study(tmp_path):
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}")


def runs(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "outputs").glob("sweeps/*/*/metrics.json")]


@pytest.mark.integration
def test_a_search_stores_validation_scores_and_continues_after_a_crash(tiny_data_dir, tmp_path, cli_env):
    search(tiny_data_dir, tmp_path, cli_env, n_trials=3)
    study = load_study(tmp_path)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    records = runs(tmp_path)
    assert len(records) == 3
    by_params = {(float(r["overrides"]["optimizer.lr"]), float(r["overrides"]["regularizer.dropout.p"])): r
                 for r in records}
    for trial in trials:
        record = by_params[(trial.params["optimizer.lr"], trial.params["regularizer.dropout.p"])]
        assert trial.value == record["val"]["accuracy"]  # the validation metric, never the test one
        assert 1e-4 <= trial.params["optimizer.lr"] <= 0.3 and 0.1 <= trial.params["regularizer.dropout.p"] <= 0.7
    (results,) = (tmp_path / "outputs").glob("sweeps/*/optimization_results.yaml")
    assert yaml.safe_load(results.read_text())["best_value"] == study.best_value

    # The whole budget is spent: running the same command again does nothing.
    again = search(tiny_data_dir, tmp_path, cli_env, n_trials=3)
    assert "already has 3 finished trials" in again.stdout
    assert len(load_study(tmp_path).trials) == 3

    # A search that died with a trial running: that trial runs again, and the budget counts it once.
    stale = study.ask()
    stale_params = {"optimizer.lr": stale.suggest_float("optimizer.lr", 1e-4, 0.3, log=True),
                    "regularizer.dropout.p": stale.suggest_float("regularizer.dropout.p", 0.1, 0.7)}
    resumed = search(tiny_data_dir, tmp_path, cli_env, n_trials=5)
    assert "was running when the search stopped: queued again" in resumed.stderr
    trials = load_study(tmp_path).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 5 and states[3] == "FAIL"
    assert trials[4].params == stale_params
    points = [tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE"]
    assert len(set(points)) == 5  # a resumed sampler proposes new points, not the first ones again


def test_the_score_a_sweeper_maximises():
    record = {"status": "completed", "primary_metric": "f1", "higher_is_better": True, "val": {"f1": 0.8},
              "test": {"f1": 0.9}}
    assert tuning_score(record) == 0.8
    assert tuning_score({**record, "higher_is_better": False}) == -0.8
    assert math.isnan(tuning_score({**record, "status": "diverged"}))  # Optuna: a failed trial, not a crash
    assert tuning_score({**record, "val": {}}) is None
