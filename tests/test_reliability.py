"""Reliability on real processes: a sweep killed with SIGKILL and run again, SIGTERM, failing and
diverging jobs inside a sweep, and one-line answers to bad command lines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import tiny_overrides

pytestmark = pytest.mark.integration  # every test here starts processes


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "regbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def records(sweep: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "metrics.json").read_text()) for d in sorted(sweep.iterdir())
            if (d / "metrics.json").is_file()}


def no_half_written_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*.tmp")]
    assert not leftovers, leftovers
    for path in root.rglob("metrics.json"):
        json.loads(path.read_text())
    for path in root.rglob("*.csv"):
        pd.read_csv(path)


def test_a_sweep_killed_mid_run_finishes_each_run_exactly_once_when_run_again(tiny_data_dir, tmp_path, cli_env):
    # 12 epochs: on tiny data an epoch can take tens of milliseconds, and job 1's last.pt must live long
    # enough between its first and last epoch for the poll below to see it (3 epochs raced it ~1 in 4).
    grid = ["-m", "regularizer=none,bn_dropout,dropout",
            *tiny_overrides(tiny_data_dir, tmp_path / "cache", "trainer.max_epochs=12")]
    sweep = tmp_path / "sweep"
    command = [*grid, f"hydra.sweep.dir={sweep}"]

    process = start(command, cli_env, tmp_path)
    wait_for(sweep / "1" / "checkpoints" / "last.pt", process)  # job 1 is between its first and last epoch
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = records(sweep)
    assert before["0"]["status"] == "completed" and before["1"]["status"] == "running" and "2" not in before
    no_half_written_files(sweep)

    result = subprocess.run([sys.executable, "-m", "regbench", *command], capture_output=True, text=True,
                            env=cli_env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    after = records(sweep)
    assert {r["status"] for r in after.values()} == {"completed"} and len(after) == 3
    assert after["0"]["started_at"] == before["0"]["started_at"]          # reused, not trained again
    assert after["1"]["resumed_from"] and after["1"]["started_at"] != before["1"]["started_at"]
    assert after["2"]["resumed_from"] is None and after["2"]["reused_from"] is None
    assert len(pd.read_csv(sweep / "results.csv")) == 3
    no_half_written_files(sweep)

    # An uninterrupted sweep of the same grid (trainer.resume=false: trained, not reused) gives the same numbers.
    reference = tmp_path / "reference"
    result = subprocess.run([sys.executable, "-m", "regbench", *grid, "trainer.resume=false",
                             f"hydra.sweep.dir={reference}"], capture_output=True, text=True, env=cli_env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    for job, record in records(reference).items():
        assert record["regularizer"] == after[job]["regularizer"]
        assert record["test"] == after[job]["test"] and record["val"] == after[job]["val"]


def test_sigterm_stops_a_run_as_interrupted_and_the_same_command_resumes_it(tiny_data_dir, tmp_path, cli_env):
    run_dir = tmp_path / "run"
    command = [*tiny_overrides(tiny_data_dir, tmp_path / "cache", "regularizer=bn", "trainer.max_epochs=40"),
               f"hydra.run.dir={run_dir}"]
    process = start(command, cli_env, tmp_path)
    wait_for(run_dir / "checkpoints" / "last.pt", process)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"] and "Traceback" not in stderr
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["run_id"] == record["run_id"] and checkpoint["epoch"] >= 1
    no_half_written_files(run_dir)

    result = subprocess.run([sys.executable, "-m", "regbench", *command], capture_output=True, text=True,
                            env=cli_env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed" and record["epochs_run"] == 40
    assert f"after epoch {checkpoint['epoch']}" in record["resumed_from"]


def test_a_failing_and_a_diverging_job_do_not_end_the_sweep(tiny_data_dir, tmp_path, cli_env):
    """A job that crashes while it trains (a task whose step raises) and one whose loss goes to infinity
    are recorded as failed and diverged; the other jobs go on and the summary counts them. The sweep
    names the failed runs at the end and exits 1; a diverged run is a result, not a failure."""
    (tmp_path / "crashing.py").write_text(
        "from regbench.tasks.cifar10 import Cifar10Task\n\n\n"
        "class CrashingTask(Cifar10Task):\n"
        "    def training_step(self, model, batch):\n"
        "        raise RuntimeError('the step crashed')\n")
    sweep = tmp_path / "sweep"
    args = ["-m", "task._target_=regbench.tasks.cifar10.Cifar10Task,crashing.CrashingTask", "optimizer=sgd",
            "optimizer.lr=0.05,1e12", *tiny_overrides(tiny_data_dir, tmp_path / "cache"), f"hydra.sweep.dir={sweep}"]
    env = {**cli_env, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "regbench", *args], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr
    named = [line for line in result.stderr.splitlines() if line.startswith("regbench: run ")]
    assert named == [f"regbench: run {sweep / str(i)} failed: RuntimeError: the step crashed" for i in (2, 3)]
    assert result.stderr.strip().splitlines()[-1].startswith("regbench: error: 2 of 4 runs failed (above)")
    results = pd.read_csv(sweep / "results.csv")
    assert sorted(results["status"]) == ["completed", "diverged", "failed", "failed"]
    failed = results[results["status"] == "failed"]
    assert failed["error"].str.contains("the step crashed").all()
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["failed"].sum() == 2 and summary["diverged"].sum() == 1 and summary["completed"].sum() == 1


@pytest.mark.parametrize("args, message", [
    (["regularizer=bn_droput"], "regularizer=bn_droput: no such option; choose one of bn, bn_dropout"),
    (["trainer.max_epoch=3"], "there is no key 'trainer.max_epoch' in this configuration (did you mean trainer.max_epochs?)"),
    (["regularizer.dropout.p=1.5"], "regularizer.dropout.p=1.5 is invalid: it must be in [0, 1)"),
    (["-m", "regularizer=none,bn", "optimizer.lr=0.1,-1"], "optimizer.lr=-1 is invalid: it must be > 0"),
    (["-m", "task=cifar10,nope"], "task=nope: no such option"),
])
def test_a_bad_command_line_is_one_line_and_exit_code_2(args, message, tmp_path, cli_env):
    result = subprocess.run([sys.executable, "-m", "regbench", *args], capture_output=True, text=True,
                            env=cli_env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"regbench: error: {result.stderr.strip()[len('regbench: error: '):]}"
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # nothing started, nothing written


def _rebuild(sweep: str) -> None:
    from regbench.results import update_sweep_results

    update_sweep_results(Path(sweep))


def test_results_csv_keeps_every_row_when_jobs_finish_at_the_same_moment(tmp_path):
    import multiprocessing

    from regbench.fileio import write_json_atomic

    for job in range(12):
        write_json_atomic(tmp_path / str(job) / "metrics.json", {"status": "completed", "task": "cifar10", "seed": job,
                                                                "overrides": {"seed": str(job)}})
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        pool.map(_rebuild, [str(tmp_path)] * 24)
    assert sorted(pd.read_csv(tmp_path / "results.csv")["seed"]) == list(range(12))
    no_half_written_files(tmp_path)
