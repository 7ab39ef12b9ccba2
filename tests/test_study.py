"""scripts/study.sh at toy size on the CPU (REGBENCH_STUDY_SMOKE=1): the same 15 configurations the GPU
runs, the same files in OUTDIR, and a deadline that stops unfinished runs as `interrupted`."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest



SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "study.sh"
pytestmark = pytest.mark.integration


def study(tmp_path, data, env, *args) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "OUT"
    env = dict(env, REGBENCH_DATA=str(data), REGBENCH_CACHE=str(tmp_path / "cache"), REGBENCH_STUDY_SMOKE="1")
    result = subprocess.run(["bash", str(SCRIPT), str(out), "--work", str(tmp_path / "work"), *args], env=env,
                            capture_output=True, text=True, timeout=900)
    return result, out


def records(out: Path) -> list[dict]:
    with tarfile.open(out / "study-runs.tar.gz") as tar:
        return [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith("metrics.json")]


def test_one_seed_of_the_fifteen_configurations_and_its_summary(tmp_path, tiny_study_data, cli_env):
    result, out = study(tmp_path, tiny_study_data, cli_env, "--seeds", "0", "--jobs", "cifar10=2", "conll2003=2",
                        "movielens=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # what a device call returns: a handful of files, none deeper than OUTDIR
    assert sorted(p.name for p in out.iterdir()) == ["machine.txt", "study-runs.tar.gz", "study.log", "summary.csv",
                                                     "summary.md", "timing.json"]
    runs = records(out)
    assert sorted((r["task"], r["regularizer"]) for r in runs) == sorted(
        (t, r) for t in ("cifar10", "conll2003", "movielens")
        for r in ("none", "bn", "dropout", "bn_dropout", "bn_dropout_gc"))
    assert all(r["status"] == "completed" and r["seed"] == 0 for r in runs)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 15 and (summary["n"] == 1).all()
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing["seed 0"]) == {"wall_s", "cifar10", "conll2003", "movielens"}
    with tarfile.open(out / "study-runs.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("history.csv") for n in names) and not any(n.endswith(".pt") for n in names)
    assert any(n.startswith("summary/plots/") for n in names)


def test_the_deadline_stops_unfinished_runs_as_interrupted_and_keeps_them(tmp_path, tiny_study_data, cli_env):
    """Runs that cannot finish in time get SIGTERM before the deadline, record `interrupted`, and the
    next seed is not started; what there is still comes back."""
    result, out = study(tmp_path, tiny_study_data, cli_env, "trainer.max_epochs=100000",
                        "trainer.early_stopping.patience=0", "--tasks", "movielens",
                        "--seeds", "0", "1", "--deadline", "45", "--stop-grace", "25")
    assert "seed 1: not started" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    runs = records(out)
    assert len(runs) == 5 and {r["status"] for r in runs} == {"interrupted"}
    assert all(r["epochs_run"] >= 1 for r in runs)
    assert "deadline: SIGTERM" in (out / "study.log").read_text()
