"""The machine's load around a run: real CPU time from /proc/stat, a real busy process beside the run,
and the contention rule on numbers."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from regbench.machine_load import LoadWatch, is_contended


def test_the_contention_rule():
    assert not is_contended(0.1, [], threads=1, cpus=2)      # one thread of two CPUs, a shell beside it
    assert not is_contended(0.9, [], threads=1, cpus=2)      # another run on the other core: no contention
    assert is_contended(0.9, [], threads=2, cpus=2)          # a busy process and two threads on two cores
    assert is_contended(None, [2.6, 3.0], threads=2, cpus=2)  # no /proc: the load averages
    assert not is_contended(None, [], threads=2, cpus=2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_busy_process_beside_the_run_is_measured_as_other_cpus():
    """Pinned to one CPU, a busy child process for a second counts as about one CPU of other work."""
    import os

    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    try:
        watch = LoadWatch.start(cpus=1, threads=1)
        busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
        time.sleep(1.6)
        summary = watch.summary()  # before the child is waited for: its CPU time is not this process's
        busy.wait()
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    assert summary["other_cpus"] >= 0.5 and summary["contended"]
    assert summary["cpus"] == 1 and summary["threads"] == 1 and summary["loadavg_start"] is not None


def test_a_run_records_its_load_and_compare_flags_contended_costs(small_run, tmp_path):
    import json

    from regbench.compare import compare

    record, run_dir = small_run("cifar10", name="sweep/0")
    load = record["load"]
    assert set(load) >= {"cpus", "threads", "loadavg_start", "loadavg_end", "other_cpus", "contended"}
    assert load["threads"] == record["threads"] and load["cpus"] >= 1
    small_run("cifar10", "seed=1", name="sweep/1")
    for job, contended in ((0, False), (1, True)):  # as a shared machine would have it
        path = tmp_path / "sweep" / str(job) / "metrics.json"
        written = json.loads(path.read_text())
        written["load"]["contended"] = contended
        path.write_text(json.dumps(written))
    comparison = compare([tmp_path / "sweep"])
    assert comparison.summary["contended"].tolist() == [1]
    assert "costs of 1 run measured under contention" in comparison.status_line()
    assert comparison.wide_table["contended"].tolist() == ["1/2"]


def test_openmp_threads_sleep_while_waiting_unless_the_user_says_otherwise(monkeypatch):
    from regbench import cli

    monkeypatch.setenv("OMP_WAIT_POLICY", "registered")  # so that monkeypatch restores what was there
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(sys, "argv", ["regbench", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    assert cli.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        cli.main()
    assert cli.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
