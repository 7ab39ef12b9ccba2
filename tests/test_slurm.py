"""Grids on a real single-node Slurm cluster (scripts/slurm_up.sh; .ci/run starts one), through the
`hydra/launcher=slurm` preset: every job must be COMPLETED in Slurm's accounting and every run record
must land, whatever order the jobs end in; a job signalled before its time limit must be requeued
and resume where it stopped.

Skipped when no cluster answers, unless REGBENCH_REQUIRE_SLURM=1 (.ci/run sets it): then the tests start
one themselves with scripts/slurm_up.sh (root, Debian: apt-get, about 25 s) and stop it afterwards."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_overrides

# every test here starts processes (and one test worker runs them all: pyproject's --dist loadfile,
# since they share the cluster that the module's fixture starts and stops)
pytestmark = pytest.mark.integration

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs pip install 'regbench[slurm]'")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# REGBENCH_REQUIRE_SLURM=1 (CI): start a private cluster when none answers, and fail rather than skip.
REQUIRED = os.environ.get("REGBENCH_REQUIRE_SLURM") == "1"


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return r.returncode == 0 and any(s in r.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A Slurm cluster that answers: the one already running, or (REGBENCH_REQUIRE_SLURM=1, as root on
    Debian) a private single-node one that scripts/slurm_up.sh installs and starts and slurm_down.sh stops."""
    if _cluster_up():
        yield
        return
    if not REQUIRED:
        pytest.skip("no Slurm cluster answers (sudo scripts/slurm_up.sh starts a private one; "
                    "REGBENCH_REQUIRE_SLURM=1 makes the tests start it)")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("REGBENCH_REQUIRE_SLURM=1 needs root and apt-get to start a cluster (scripts/slurm_up.sh)")
    subprocess.run([str(SCRIPTS / "slurm_up.sh")], check=True, timeout=900)
    try:
        yield
    finally:
        subprocess.run([str(SCRIPTS / "slurm_down.sh")], timeout=300)


SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.signal_delay_s=15", "hydra.launcher.max_num_timeout=3"]


def sacct(job: str, duplicates: bool = False) -> dict[str, list[str]] | str:
    """{job id: [states]} for a job or job array, oldest attempt first; sacct's error when it fails
    (slurmdbd can be slow to answer while the other test worker keeps both CPUs busy)."""
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job] + (["--duplicates"] if duplicates else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return f"sacct exit {result.returncode}: {result.stderr.strip()}"
    states: dict[str, list[str]] = {}
    for line in result.stdout.split():
        job_id, state = line.split("|")
        states.setdefault(job_id, []).append(state.split()[0])
    return states


def wait_for_accounting(job: str, expected: dict[str, list[str]], duplicates: bool = False) -> dict | str:
    """slurmctld tells slurmdbd asynchronously: sacct may lag the sweep's end, or fail for a while."""
    for _ in range(120):
        states = sacct(job, duplicates)
        if states == expected:
            return states
        time.sleep(0.5)
    return states


def submitted_jobs(sweep: Path) -> set[str]:
    """The Slurm job (array) ids submitit used, from its folder names (<array>_<task> or <job>)."""
    return {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit()}


def test_a_grid_runs_as_a_slurm_job_array_and_every_record_lands(tiny_data_dir, tmp_path, cli_env):
    sweep = tmp_path / "sweep"
    # Jobs 0 and 2 train 6 epochs, 1 and 3 one: with two CPUs the jobs end in another order than they start.
    # logger=mlflow: the jobs write nothing to MLflow; the process that launched the grid exports it at the end
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = ["-m", *SLURM, *tiny_overrides(tiny_data_dir, tmp_path / "cache", "trainer.max_epochs=6,1"),
               f"hydra.sweep.dir={sweep}", "regularizer=none,bn", "logger=mlflow", f"logger.tracking_uri={uri}"]
    result = subprocess.run([sys.executable, "-m", "regbench", *command], env=cli_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MLflow: 4 runs added, 0 updated" in result.stdout

    jobs = submitted_jobs(sweep)
    assert len(jobs) == 1, jobs  # one sbatch job array
    array = jobs.pop()
    states = wait_for_accounting(array, {f"{array}_{i}": ["COMPLETED"] for i in range(4)})
    assert states == {f"{array}_{i}": ["COMPLETED"] for i in range(4)}

    records = {d.name: json.loads((d / "metrics.json").read_text()) for d in sweep.iterdir() if d.name.isdigit()}
    assert sorted(records) == ["0", "1", "2", "3"]
    assert sorted((r["regularizer"], r["epochs_run"]) for r in records.values()) == \
        [("bn", 1), ("bn", 6), ("none", 1), ("none", 6)]
    assert all(r["status"] == "completed" and r["threads"] == 1 for r in records.values())  # cpus_per_task=1
    finished = sorted(records, key=lambda k: records[k]["finished_at"])
    table = pd.read_csv(sweep / "results.csv")
    assert sorted(zip(table["regularizer"], table["epochs_run"])) == [("bn", 1), ("bn", 6), ("none", 1), ("none", 6)]
    assert set(table["status"]) == {"completed"}
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4 and set(summary["n"]) == {1}, (finished, summary)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("regbench").experiment_id])
    assert sorted(r.data.tags["regbench.run_id"] for r in runs) == sorted(r["run_id"] for r in records.values())

def test_a_job_signalled_before_its_time_limit_is_requeued_and_resumes(tiny_data_dir, tmp_path, cli_env):
    """SIGUSR2 is what Slurm sends `signal_delay_s` before the time limit (and on pre-emption):
    `scancel --signal=USR2` sends it now instead of in minutes."""
    sweep = tmp_path / "sweep"
    command = ["-m", *SLURM, *tiny_overrides(tiny_data_dir, tmp_path / "cache", "trainer.max_epochs=40"),
               f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen([sys.executable, "-m", "regbench", *command], env=cli_env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        history = sweep / "0" / "history.csv"
        deadline = time.time() + 120
        while not (history.is_file() and len(history.read_text().splitlines()) >= 3):  # 2 epochs done
            assert process.poll() is None and time.time() < deadline, process.communicate()
            time.sleep(0.2)
        (job,) = submitted_jobs(sweep)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        # Slurm holds a requeued job for a while (BeginTime); release it so the test does not wait.
        for _ in range(120):
            info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
            if "JobState=PENDING" in info:
                # Not before the node has cleaned up the killed attempt: started at once, the requeued job
                # met "Job credential revoked" and FAILED (slurmctld.log, CI of 2026-12-06).
                for _ in range(120):
                    if "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout:
                        break
                    time.sleep(0.25)
                time.sleep(1.0)
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"the job was not requeued:\n{info}")
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-3000:]

    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["epochs_run"] == 40
    assert record["resumed_from"] and "last.pt (after epoch" in record["resumed_from"]
    history = pd.read_csv(sweep / "0" / "history.csv")
    assert list(history["epoch"]) == list(range(1, 41))  # no epoch lost or run twice
    assert wait_for_accounting(job, {job: ["REQUEUED", "COMPLETED"]}, duplicates=True) == \
        {job: ["REQUEUED", "COMPLETED"]}
    log = next((sweep / ".submitit").glob(f"{job}*/*_log.err")).read_text()
    assert "stopped by SIGUSR2" in log and "Requeued job" in log


def test_a_slurm_job_finds_a_model_in_the_folder_the_grid_was_started_from(tiny_data_dir, tmp_path, cli_env):
    """README: a model of the user's own (model._target_=my_model.build) needs no PYTHONPATH under Slurm
    either: the job starts in the submission folder, which holds my_model.py."""
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "my_model.py", tmp_path / "my_model.py")
    env = {k: v for k, v in cli_env.items() if k != "PYTHONPATH"}
    sweep = tmp_path / "sweep"
    command = ["-m", *SLURM, *tiny_overrides(tiny_data_dir, tmp_path / "cache", "model.width=8"),
               f"hydra.sweep.dir={sweep}", "model=custom", "model._target_=my_model.build", "regularizer=bn_dropout"]
    result = subprocess.run([sys.executable, "-m", "regbench", *command], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert (record["model"], record["regularizer"], record["status"]) == ("my_model.build", "bn_dropout", "completed")
    # The job hashed the file it imported: an edit trains anew, in a job too.
    assert record["code"][0]["sha256"] == hashlib.sha256((tmp_path / "my_model.py").read_bytes()).hexdigest()
    with open(tmp_path / "my_model.py", "a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    edited = subprocess.run([sys.executable, "-m", "regbench", *command], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert edited.returncode == 0, edited.stderr[-3000:]
    retrained = json.loads((sweep / "0" / "metrics.json").read_text())
    assert retrained["reused_from"] is None and retrained["run_id"] != record["run_id"]


def test_regbench_tune_runs_its_workers_and_final_runs_as_slurm_job_arrays(tiny_ml_dir, tmp_path, cli_env):
    """tune.launcher=slurm: two workers as a job array share the budget through the SQLite study (one node,
    the file lock), then each regimen's final runs are an array too; every job COMPLETED in sacct."""
    optuna = pytest.importorskip("optuna")
    args = ["tune", "task=movielens", f"data.dir={tiny_ml_dir}", "data.download=false", "trainer.max_epochs=2",
            "trainer.batch_size=64", "trainer.progress=false", "trainer.device=cpu", "tune.regimens=[none,dropout]",
            "tune.trials=3", "tune.workers=2", "tune.launcher=slurm", "tune.slurm.timeout_min=5",
            "tune.final_seeds=[0,1]", f"tune.dir={tmp_path / 'tune'}"]
    result = subprocess.run([sys.executable, "-m", "regbench", *args], env=cli_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}"
    for regimen in ("none", "dropout"):
        study = optuna.load_study(study_name=f"movielens-two_tower-adam.{regimen}", storage=url)
        assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
        for seed in (0, 1):
            record = json.loads((tmp_path / "tune" / "final" / regimen / f"s{seed}" / "metrics.json").read_text())
            assert record["status"] == "completed" and record["seed"] == seed
    jobs = {p.name.split("_")[0] for p in (tmp_path / "tune" / "slurm").iterdir() if p.name[0].isdigit()}
    assert len(jobs) == 2  # one array of workers, one of final runs
    for job in jobs:
        for _ in range(120):  # slurmdbd hears of the jobs' ends asynchronously
            states = sacct(job)
            if isinstance(states, dict) and states and all(s[-1] == "COMPLETED" for s in states.values()):
                break
            time.sleep(0.5)
        assert isinstance(states, dict) and states and all(s[-1] == "COMPLETED" for s in states.values()), states
