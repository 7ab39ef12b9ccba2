"""How many torch threads a run gets when a launcher runs several runs at once.

PyTorch's default is one thread per physical core of the machine. That is right for one run at a
time, and wrong when the parallel launcher (joblib) runs N runs on the same cores, or when Slurm gave
the job a few CPUs of a large node: every run then spawns a full-size thread pool and they fight.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

JOBLIB_LAUNCHER = "JoblibLauncher"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which Slurm and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def concurrent_runs(launcher: Mapping[str, Any] | None, cpus: int) -> int:
    """How many runs the launcher runs at once on this machine (1 unless it is the joblib launcher)."""
    if not launcher or not str(launcher.get("_target_", "")).endswith(JOBLIB_LAUNCHER):
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return max(1, cpus + 1 + n if n < 0 else n)  # joblib: -1 = every CPU, -2 = all but one, ...


def job_threads(requested: int, launcher: Mapping[str, Any] | None, environ: Mapping[str, str],
                cpus: int | None = None) -> int | None:
    """trainer.threads when set (> 0); else the CPUs Slurm gave the job; else this machine's CPUs
    shared by the runs the launcher runs at once; None = leave PyTorch's default (one run at a time)."""
    if requested:
        return int(requested)
    if environ.get("SLURM_CPUS_PER_TASK"):
        return max(1, int(environ["SLURM_CPUS_PER_TASK"]))
    cpus = cpus or available_cpus()
    at_once = concurrent_runs(launcher, cpus)
    return max(1, cpus // at_once) if at_once > 1 else None
