"""The launcher presets (hydra/launcher=slurm, parallel) compose into what the plugins expect, torch threads
are shared out between runs that run at once, and a real parallel grid lands every record, also with a
model of the user's own that lives only in the folder the command starts from."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_overrides
from regbench.launchers import available_cpus, concurrent_runs, job_threads
from regbench.preflight import compose_config

JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
BASIC = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}


def hydra_cfg(*overrides: str):
    return compose_config(list(overrides), with_hydra=True).hydra


def test_threads_per_run():
    assert job_threads(3, JOBLIB, {}, cpus=16) == 3                          # trainer.threads wins
    assert job_threads(0, JOBLIB, {}, cpus=16) == 8                          # 16 cores, 2 runs at once
    assert job_threads(0, {**JOBLIB, "n_jobs": 3}, {}, cpus=16) == 5
    assert job_threads(0, {**JOBLIB, "n_jobs": 4}, {}, cpus=2) == 1          # never 0
    assert job_threads(0, {**JOBLIB, "n_jobs": -1}, {}, cpus=16) == 1        # joblib: one run per core
    assert concurrent_runs({**JOBLIB, "n_jobs": -2}, 16) == 15               # ... all cores but one
    assert job_threads(0, BASIC, {}, cpus=16) is None                        # one run at a time: PyTorch's default
    assert job_threads(0, None, {"SLURM_CPUS_PER_TASK": "6"}, cpus=64) == 6  # what Slurm gave the job
    assert 1 <= available_cpus()


def test_slurm_preset_composes_for_the_submitit_plugin():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs pip install 'regbench[slurm]'")
    launcher = hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                         "hydra.launcher.gpus_per_node=1").launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 240
    assert launcher.max_num_timeout > 0  # otherwise a run that hits the time limit is not requeued
    assert 0 < launcher.signal_delay_s < launcher.timeout_min * 60


@pytest.mark.integration
def test_parallel_preset_runs_a_grid_with_shared_threads(tiny_data_dir, tmp_path, cli_env):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs pip install 'regbench[parallel]'")
    launcher = hydra_cfg("hydra/launcher=parallel").launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2

    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=parallel", "regularizer=none,bn", "seed=0,1", f"hydra.sweep.dir={sweep}",
            *tiny_overrides(tiny_data_dir, tmp_path / "cache")]
    result = subprocess.run([sys.executable, "-m", "regbench", *args], env=cli_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(4)]
    assert [(r["regularizer"], r["seed"], r["status"]) for r in records] == \
        [("none", 0, "completed"), ("none", 1, "completed"), ("bn", 0, "completed"), ("bn", 1, "completed")]
    assert {r["threads"] for r in records} == {max(1, available_cpus() // 2)}
    assert len(pd.read_csv(sweep / "results.csv")) == 4 and (sweep / "summary.csv").is_file()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.integration
def test_parallel_workers_find_a_model_in_the_working_folder(tiny_data_dir, tmp_path, cli_env):
    """README: `model._target_=my_model.build` works from the folder that holds my_model.py, also when
    joblib's worker processes build the model; no PYTHONPATH needed."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs pip install 'regbench[parallel]'")
    shutil.copy(EXAMPLES / "my_model.py", tmp_path / "my_model.py")
    env = {k: v for k, v in cli_env.items() if k != "PYTHONPATH"}
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=parallel", "model=custom", "model._target_=my_model.build",
            "regularizer=none,bn", f"hydra.sweep.dir={sweep}",
            *tiny_overrides(tiny_data_dir, tmp_path / "cache", "model.width=8")]
    result = subprocess.run([sys.executable, "-m", "regbench", *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [(r["model"], r["regularizer"], r["status"]) for r in records] == \
        [("my_model.build", "none", "completed"), ("my_model.build", "bn", "completed")]
    # The model's source is part of each run's identity, hashed in each joblib worker: unchanged code is
    # reused, edited code trains anew.
    digest = hashlib.sha256((tmp_path / "my_model.py").read_bytes()).hexdigest()
    assert all(r["code"] == [{"key": "model._target_", "target": "my_model.build",
                              "path": str(tmp_path / "my_model.py"), "sha256": digest}] for r in records)
    again = subprocess.run([sys.executable, "-m", "regbench", *args], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stderr.count("reusing its record") == 2, again.stderr[-3000:]
    with open(tmp_path / "my_model.py", "a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    edited = subprocess.run([sys.executable, "-m", "regbench", *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert edited.returncode == 0 and "reusing its record" not in edited.stderr, edited.stderr[-3000:]
    retrained = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert all(r["reused_from"] is None and r["code"][0]["sha256"] != digest for r in retrained)
