"""Run the study (experiment=study: 3 tasks x 5 regimens x seeds) on one machine inside a deadline, and
keep what finished in OUTDIR at every moment. scripts/study.sh calls this after setting up the machine.

    python scripts/study.py OUTDIR [--deadline SECONDS] [--seeds 0 1 2] [--tasks T ...] [--jobs TASK=N ...]
                            [--earlier DIR ...] [--work DIR] [--smoke] [OVERRIDE ...]

Seeds are the unit: all 15 runs of a seed start together (at most N per task at once, --jobs), and the
next seed starts when they have all ended. Each run is one `regbench experiment=study hydra.mode=RUN
task=T regularizer=R seed=S` process, so the recipe is the preset's and nothing here changes it.
`--deadline` is the time (seconds from the start) by which everything must be over: no run starts in
the last `--stop-grace` seconds, and each unfinished run gets SIGTERM then, so it stops at its next
step and records `interrupted` (SIGKILL follows 15 s before the deadline). Every ~40 s the run records
(metrics.json, history.csv, the resolved config and the log of every run; no checkpoints) are packed into
OUTDIR/study-runs.tar.gz by write-then-rename, so a call that is killed still returns what finished. At
the end `regbench compare` summarises these runs together with any earlier calls' (--earlier), so a
later call can add the seeds that are missing, and OUTDIR gets summary.md, summary.csv, timing.json
and study.log: five files, two levels at most, as a device call returns them.

REGBENCH_STUDY_SMOKE=1 (or --smoke) runs the same 15 configurations at toy size on the CPU.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from regbench.preflight import merge_overrides

TASKS = ("cifar10", "conll2003", "movielens")
REGIMENS = ("none", "bn", "dropout", "bn_dropout", "bn_dropout_gc")
SNAPSHOT_EVERY_S = 40
KILL_BEFORE_DEADLINE_S = 15
KEPT_FILES = ("metrics.json", "history.csv", "regbench.log", ".hydra/config.yaml", ".hydra/overrides.yaml")
# Toy scale for REGBENCH_STUDY_SMOKE=1: the same configurations, one epoch on a few examples, on the CPU.
SMOKE = {
    "cifar10": ["model.width=0.0625", "data.val_size=20", "data.limit_train=64", "data.limit_eval=32",
                "data.train_eval_size=20", "trainer.batch_size=16"],
    "conll2003": ["data.limit_train=40", "data.limit_eval=20", "model.hidden=16", "model.word_dim=16",
                  "model.char_hidden=8", "model.char_dim=8", "trainer.batch_size=8"],
    "movielens": ["data.max_users=40"],
}
SMOKE_COMMON = ["trainer.max_epochs=1", "trainer.device=cpu", "trainer.threads=1",
                "trainer.latency.repeats=3", "trainer.latency.max_seconds=0"]


@dataclass
class Job:
    task: str
    regimen: str
    seed: int
    run_dir: Path
    process: subprocess.Popen | None = None
    started: float | None = None
    ended: float | None = None
    log: Path | None = None
    returncode: int | None = field(default=None)


def log(message: str, logfile: Path) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with open(logfile, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def snapshot(runs: Path, out_dir: Path, extra: Path | None = None) -> int:
    """Pack every run record below `runs` (and `extra`, the summary) into OUTDIR/study-runs.tar.gz."""
    buffer = io.BytesIO()
    n = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for metrics in sorted(runs.rglob("metrics.json")):
            run_dir = metrics.parent
            n += 1
            for name in KEPT_FILES:
                path = run_dir / name
                if path.is_file():
                    tar.add(path, arcname=str(Path("runs") / path.relative_to(runs)))
        if extra is not None and extra.is_dir():
            tar.add(extra, arcname=extra.name)
    write_atomic(out_dir / "study-runs.tar.gz", buffer.getvalue())
    return n


def command(job: Job, smoke: bool, extra: list[str]) -> list[str]:
    args = [sys.executable, "-m", "regbench", "experiment=study", "hydra.mode=RUN", f"task={job.task}",
            f"regularizer={job.regimen}", f"seed={job.seed}", f"hydra.run.dir={job.run_dir}", "trainer.progress=false",
            "trainer.save_checkpoint=false"]
    if smoke:
        args += SMOKE_COMMON + SMOKE[job.task]
    return args[:3] + merge_overrides(args[3:], extra)  # `extra` wins: regbench refuses a key given twice


def run_seed(seed: int, opts, work: Path, start: float, logfile: Path, out_dir: Path) -> list[Job]:
    """All runs of one seed, at most opts.jobs[task] per task at once; stops them before the deadline."""
    jobs = [Job(t, r, seed, work / "runs" / t / r / f"s{seed}") for t in opts.tasks for r in REGIMENS]
    stop_at = start + opts.deadline - opts.stop_grace
    kill_at = start + opts.deadline - KILL_BEFORE_DEADLINE_S
    last_snapshot = time.monotonic()
    terminated = False
    while True:
        now = time.monotonic()
        running = [j for j in jobs if j.process is not None and j.ended is None]
        for job in running:
            code = job.process.poll()
            if code is not None:
                job.ended, job.returncode = now, code
                log(f"seed {seed} {job.task} {job.regimen}: ended with code {code} after "
                    f"{job.ended - job.started:.0f} s", logfile)
        if now < stop_at:
            for task in opts.tasks:
                busy = sum(1 for j in jobs if j.task == task and j.process is not None and j.ended is None)
                for job in [j for j in jobs if j.task == task and j.process is None][: max(0, opts.jobs[task] - busy)]:
                    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
                    job.log = work / "logs" / f"{job.task}-{job.regimen}-s{seed}.txt"
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    # cwd: the work folder, never a checkout, whose regbench/ would shadow the installed package
                    with open(job.log, "w") as output:
                        job.process = subprocess.Popen(command(job, opts.smoke, opts.overrides), stdout=output,
                                                       stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
                    job.started = time.monotonic()
        elif not terminated:
            terminated = True
            for job in [j for j in jobs if j.process is not None and j.ended is None]:
                log(f"deadline: SIGTERM to seed {seed} {job.task} {job.regimen}", logfile)
                job.process.send_signal(signal.SIGTERM)
        if now >= kill_at:
            for job in [j for j in jobs if j.process is not None and j.ended is None]:
                log(f"deadline: SIGKILL to seed {seed} {job.task} {job.regimen}", logfile)
                job.process.kill()
        if all(j.ended is not None or (j.process is None and now >= stop_at) for j in jobs):
            return jobs
        if now - last_snapshot >= SNAPSHOT_EVERY_S:
            snapshot(work / "runs", out_dir)
            last_snapshot = now
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds from now by which all runs are over")
    parser.add_argument("--stop-grace", type=float, default=45.0,
                        help="SIGTERM to unfinished runs this long before the deadline (time to record them)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="a subset of the tasks")
    parser.add_argument("--jobs", nargs="*", default=[], metavar="TASK=N",
                        help="runs of a task at once (default 5 each: a seed's 15 runs together)")
    parser.add_argument("--earlier", type=Path, nargs="*", default=[],
                        help="earlier calls' run records (folders) to summarise with this call's")
    parser.add_argument("--work", type=Path, default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("REGBENCH_STUDY_SMOKE") == "1")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every run (e.g. trainer.compile=true)")
    opts = parser.parse_intermixed_args()  # Hydra overrides may come anywhere
    jobs = {t: 5 for t in TASKS}
    for item in opts.jobs:
        task, _, n = item.partition("=")
        if task not in jobs or not n.isdigit() or int(n) < 1:
            parser.error(f"--jobs {item}: write TASK=N with TASK one of {', '.join(TASKS)} and N >= 1")
        jobs[task] = int(n)
    opts.jobs = jobs
    start = time.monotonic()
    out_dir = opts.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = (opts.work or Path(tempfile.mkdtemp(prefix="regbench-study-"))).resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    logfile = out_dir / "study.log"
    log(f"study: seeds {opts.seeds}, deadline {opts.deadline:.0f} s, jobs {jobs}, smoke {opts.smoke}, work {work}",
        logfile)
    timing: dict[str, dict] = {}
    for seed in opts.seeds:
        if time.monotonic() - start >= opts.deadline - opts.stop_grace:
            log(f"seed {seed}: not started, the deadline is too near", logfile)
            continue
        seed_start = time.monotonic()
        ran = run_seed(seed, opts, work, start, logfile, out_dir)
        timing[f"seed {seed}"] = {"wall_s": round(time.monotonic() - seed_start, 1)}
        for task in opts.tasks:
            mine = [j for j in ran if j.task == task and j.started is not None]
            if mine:
                timing[f"seed {seed}"][task] = {
                    "wall_s": round(max(j.ended for j in mine) - min(j.started for j in mine), 1),
                    "runs_s": {j.regimen: round(j.ended - j.started, 1) for j in mine},
                    "exit_codes": {j.regimen: j.returncode for j in mine}}
        write_atomic(out_dir / "timing.json", json.dumps(timing, indent=2).encode())
        log(f"seed {seed}: done in {timing[f'seed {seed}']['wall_s']:.0f} s", logfile)
        snapshot(work / "runs", out_dir)

    summary = work / "summary"
    inputs = [str(work / "runs")] + [str(p.resolve()) for p in opts.earlier if p.exists()]
    result = subprocess.run([sys.executable, "-m", "regbench", "compare", *inputs, "--out", str(summary), "--plots"],
                            capture_output=True, text=True, cwd=work)
    log(f"regbench compare {' '.join(inputs)}: exit {result.returncode}\n{result.stdout}{result.stderr}", logfile)
    n = snapshot(work / "runs", out_dir, summary if summary.is_dir() else None)
    for name in ("summary.md", "summary.csv"):
        if (summary / name).is_file():
            shutil.copyfile(summary / name, out_dir / name)
    log(f"study: {n} run records in {out_dir / 'study-runs.tar.gz'}, {time.monotonic() - start:.0f} s in all",
        logfile)
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
