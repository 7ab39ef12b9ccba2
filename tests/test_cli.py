"""The `regbench` command end to end in a subprocess: a single run and a 2-job multirun."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import tiny_overrides


def regbench(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_single_run_writes_its_record_under_outputs(tiny_data_dir, tmp_path, cli_env):
    result = regbench(tiny_overrides(tiny_data_dir, tmp_path / "cache", "regularizer=bn"), cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("_cifar10_bn_momentum_s0")
    for name in ("metrics.json", "history.csv", "checkpoints/best.pt", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (runs[0] / name).is_file(), name
    record = json.loads((runs[0] / "metrics.json").read_text())
    assert record["status"] == "completed" and record["overrides"]["regularizer"] == "bn"
    assert "completed: test accuracy" in result.stderr


def test_two_job_multirun_writes_a_two_row_results_csv(tiny_data_dir, tmp_path, cli_env):
    args = ["-m", "regularizer=none,bn_dropout", *tiny_overrides(tiny_data_dir, tmp_path / "cache"),
            "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    result = regbench(args, cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    results = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(results) == 2
    assert sorted(results["regularizer"]) == ["bn_dropout", "none"]
    assert set(results["status"]) == {"completed"}
    for column in ("test.accuracy", "val.accuracy", "train.accuracy", "params", "flops_per_example", "seed",
                   "train_time_s", "run_dir", "overrides"):
        assert column in results.columns, column
    assert results["test.accuracy"].between(0, 1).all()
    assert all("regularizer=" in o for o in results["overrides"])
    # The table is printed when the sweep ends.
    assert "bn_dropout" in result.stdout and "results.csv" in result.stdout
