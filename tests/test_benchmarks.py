"""The GPU benchmark script runs end to end (on a CPU, at toy size), so it works when a GPU turns up."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"
pytestmark = pytest.mark.integration


def test_gpu_throughput_script_reports_every_figure(tiny_data_dir, tmp_path, cli_env):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--target", "0.05",
                             f"paths.data_dir={tiny_data_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
                             f"paths.output_dir={tmp_path / 'outputs'}", "data.val_size=20", "data.train_eval_size=20",
                             "trainer.device=cpu"], env=cli_env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["matrix_rate_tflops"] > 0 and report["images_per_s"] > 0 and report["epochs"] == 2
    assert report["achieved_tflops"] > 0 and 0 < report["utilisation_of_matrix_rate"]
    assert report["epoch_reaching_target"] == 1 and report["train_seconds_to_target"] is not None  # 0.05 < chance
    assert 0 <= report["test_accuracy"] <= 1


# The last commit before the training loop got its own module: revision_ab must train it through its
# old `Run` API beside this checkout's loop.
EARLIER = "91ac143"


def test_revision_ab_loads_an_earlier_revision_beside_this_checkout(tiny_data_dir, tmp_path, cli_env):
    """An earlier revision (before the restructuring) against this checkout on tiny data: both versions
    load into one process and train in turn, each through its own loop."""
    known = subprocess.run(["git", "-C", str(SCRIPT.parents[1]), "cat-file", "-e", f"{EARLIER}^{{commit}}"],
                           capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {EARLIER} is not in this clone (a shallow clone)")
    script = SCRIPT.parent / "revision_ab.py"
    result = subprocess.run([sys.executable, str(script), "--rev", EARLIER, "--rounds", "2",
                             f"paths.data_dir={tiny_data_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
                             f"paths.output_dir={tmp_path / 'outputs'}", "model.width=0.0625", "data.val_size=20",
                             "data.limit_train=40", "data.train_eval_size=20", "trainer.batch_size=8", "--setup", "4"],
                            env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = result.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip().startswith("CIFAR-10 CNN-13") and float(row[2].split()[0]) > 0
    assert float(row[3].split()[0]) > 0 and float(row[4]) > 0


def test_gpu_checks_script_runs_every_task(tiny_study_data, tmp_path, cli_env):
    """On a CPU (--smoke) the script can only count dispatched ops, but it builds and trains every task
    of the study through the loop, as it will on a GPU."""
    out = tmp_path / "checks.json"
    result = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_checks.py"), str(out), "--smoke", "--steps", "2",
                             f"paths.data_dir={tiny_study_data}", f"paths.cache_dir={tmp_path / 'cache'}"],
                            env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and set(report["tasks"]) == {"cifar10", "conll2003", "movielens"}
    for task, entry in report["tasks"].items():
        assert "error" not in entry and entry["ops_per_step"] > 10, (task, entry)
