"""How busy the machine was around a run, so that a cost figure measured under contention is flagged
rather than read as the regimen's. On a shared 2-core machine a run's training time moved 2-52 s from
contention alone (2026-12-05), which made `bn_dropout_gc` look 11 times slower than `none`.

Two measures: the 1-minute load average at the start and at the end (any Unix), and, on Linux, the CPUs
that *other* processes kept busy during the run: the machine's busy CPU time over the run (/proc/stat)
less this process's own, divided by the wall time. A run is contended when those other CPUs plus its
own threads exceed the CPUs it may use."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONTENTION_MARGIN = 0.25  # CPUs of others' work tolerated beyond the free ones (a shell, a log writer)


def _usable_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None


def _busy_seconds() -> float | None:
    """Seconds of CPU time the CPUs this process may use (its affinity: Slurm and taskset narrow it) have
    spent busy, not idle nor waiting on I/O, since boot; None without /proc/stat."""
    usable = _usable_cpus()
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = [line.split() for line in fh if line.startswith("cpu") and not line.startswith("cpu ")]
    except OSError:
        return None
    busy = 0
    for fields in lines:
        if usable is not None and int(fields[0][3:]) not in usable:
            continue
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK") if lines else None


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclass
class LoadWatch:
    """Started when a run starts; `summary()` when it ends gives the record's `load`."""

    cpus: int
    threads: int
    loadavg_start: float | None
    wall0: float
    busy0: float | None
    own0: float

    @classmethod
    def start(cls, cpus: int, threads: int) -> LoadWatch:
        return cls(cpus=cpus, threads=threads, loadavg_start=_loadavg(), wall0=time.monotonic(),
                   busy0=_busy_seconds(), own0=_own_seconds())

    def summary(self) -> dict:
        wall = time.monotonic() - self.wall0
        busy = _busy_seconds()
        other = None
        if busy is not None and self.busy0 is not None and wall > 0:
            other = max(0.0, (busy - self.busy0) - (_own_seconds() - self.own0)) / wall
        end = _loadavg()
        loads = [v for v in (self.loadavg_start, end) if v is not None]
        return {"cpus": self.cpus, "threads": self.threads, "loadavg_start": self.loadavg_start, "loadavg_end": end,
                "other_cpus": None if other is None else round(other, 2), "contended": is_contended(other, loads, self.threads, self.cpus),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}

    def finish(self) -> dict:
        """The summary for the run's record, with a warning in the log when the run was contended."""
        summary = self.summary()
        if summary["contended"]:
            log.warning("other processes kept %s of the %d CPUs this run could use busy while it ran: its times "
                        "are flagged as measured under contention", summary["other_cpus"], summary["cpus"])
        return summary


def is_contended(other_cpus: float | None, loadavgs: list[float], threads: int, cpus: int) -> bool:
    """Other processes' CPUs plus the run's own threads beyond the CPUs it may use; without /proc, a load
    average (which counts the run's own threads at the end) above those CPUs."""
    if other_cpus is not None:
        return other_cpus + min(threads, cpus) > cpus + CONTENTION_MARGIN
    return bool(loadavgs) and max(loadavgs) > cpus + CONTENTION_MARGIN
