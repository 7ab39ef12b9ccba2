"""`regbench tune`: the fair protocol (docs/tuning.md). The regimen is the scientific variable; for each
regimen its nuisance hyper-parameters (the learning rate and weight decay, and the regimen's own keys
where it reads them) are searched with the same budget and the same seeded sampler, each trial an
ordinary regbench run selected on its validation metric; then each regimen's best configuration is
trained again on fresh seeds, and only those runs are compared.

Engine: Optuna itself, one study per regimen in one storage (SQLite in the study's folder by default).
A trial that was running when its process died is failed and its parameters queued again, so the same
command continues the search with exactly `tune.trials` per regimen, and the queued trial's run resumes
from its checkpoint (the same configuration is the same run id)."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from regbench import tune_report
from regbench.errors import ConfigError, RegbenchError
from regbench.tune_space import Plan, Range, plans, tune_config
from regbench.tune_studies import (REQUEUED_ATTR, TrialCrashed, TrialInterrupted, ask_lock, file_lock,
                                   next_trial, open_studies, progress, requeue_stale, storage_url, tune_dir)

log = logging.getLogger(__name__)


# -- trials -----------------------------------------------------------------------------------------
def _params_overrides(ranges_: list[Range], trial) -> list[str]:
    return [f"{r.key}={r.suggest(trial)!r}" for r in ranges_]


def worker_threads(cfg: DictConfig, workers: int) -> int | None:
    """Torch threads of each worker's runs: trainer.threads when set; else the CPUs Slurm gave the task; else
    this machine's CPUs shared by the local workers; None (PyTorch's default) for one local worker."""
    import os

    from regbench.launchers import available_cpus, job_threads

    threads = job_threads(int(cfg.trainer.threads), None, os.environ)
    if threads is None and workers > 1:
        return max(1, available_cpus() // workers)
    return threads


def run_trial(plan: Plan, study, trial, folder: Path, threads: int | None = None) -> str:
    """Train one trial as an ordinary run (its record in <dir>/trials/<regimen>/<number>) and tell the study
    its validation score; returns the trial's state's name."""
    from optuna.trial import TrialState

    from regbench import runner
    from regbench.cli import tuning_score
    from regbench.preflight import compose_config, merge_overrides

    params = _params_overrides(plan.ranges, trial)
    overrides = merge_overrides(plan.overrides, params)
    cfg = compose_config(overrides)
    run_dir = folder / "trials" / plan.regimen / f"{trial.number:04d}"

    def prune(epoch: int, score: float) -> bool:
        trial.report(score, epoch)
        return trial.should_prune()

    try:
        record = runner.run(cfg, run_dir, dict(o.split("=", 1) for o in params), threads, prune=prune)
    except Exception as err:  # noqa: BLE001 - any error of the run: the trial says nothing about its point
        # A crash (a bug, the machine, a signal) is no result of the configuration: counting it would let a
        # broken setup burn the whole budget in seconds. The trial is failed, its parameters queued again,
        # and the worker stops; the same command continues once the cause is fixed.
        study._storage.set_trial_system_attr(trial._trial_id, REQUEUED_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        if isinstance(err, runner.RunInterrupted):  # Ctrl-C, SIGTERM: the user's stop, not a crash
            raise TrialInterrupted(f"{err.args[0].split(';')[0]}: trial {trial.number} of study {study.study_name} is "
                                   "queued again and does not count; run the same command to continue (the trial "
                                   "resumes from its last finished epoch)", err.signum) from None
        what = err if isinstance(err, RegbenchError) else f"{type(err).__name__}: {err}"
        raise TrialCrashed(f"trial {trial.number} of study {study.study_name} crashed: {what} (its record: "
                           f"{run_dir / 'metrics.json'}). It is queued again and does not count: fix the cause and "
                           "run the same command to continue") from None
    if record.get("status") == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    score = tuning_score(record)
    if score is None or not math.isfinite(score):
        study.tell(trial, state=TrialState.FAIL)
        return record.get("status", "failed")
    study.tell(trial, score)
    return "completed"


def work(run_overrides: list[str], tune_overrides: list[str], worker: int = 0) -> int:
    """One worker: trials until every regimen's budget is spent, data and studies opened once per process;
    the choice of the next trial is made under a lock, so workers never exceed a budget. Returns the
    number of trials it ran."""
    import signal

    from regbench.signals import heed_stop
    from regbench.tasks.base import keep_data_in_process

    keep_data_in_process()  # every trial of this worker reads the same data: once
    if not logging.getLogger().handlers:  # a spawned worker or a Slurm task: its trials' lines on its stderr
        logging.basicConfig(level=logging.INFO, format=f"[worker {worker}] %(message)s")
    tune = tune_config(tune_overrides)
    plans_ = {p.regimen: p for p in plans(run_overrides, tune)}
    folder = tune_dir(tune, next(iter(plans_.values())).cfg)
    url = storage_url(tune, folder)
    studies = open_studies(tune, list(plans_.values()), url)
    local = tune.launcher == "local"
    threads = worker_threads(next(iter(plans_.values())).cfg, int(tune.workers) if local else 1)
    ran = 0
    while True:
        stop = heed_stop()  # a signal that came in the last step of the trial just run: no next trial
        if stop is not None:
            raise TrialInterrupted(f"stopped by {signal.Signals(stop).name} as a trial finished: no trial is running; "
                                   "run the same command to continue", stop)
        with ask_lock(url, folder):
            picked = next_trial(studies, int(tune.trials))
        if picked is None:
            return ran
        regimen, trial = picked
        state = run_trial(plans_[regimen], studies[regimen], trial, folder, threads)
        ran += 1
        # A worker process prefixes its lines with "[worker N]" itself (work's logging set-up).
        log.info("%s trial %d %s (%s)", regimen, trial.number, state, progress(studies, regimen, int(tune.trials)))


def run_in_processes(target: Any, argument_lists: list[tuple]) -> None:
    """target(*arguments) for each argument tuple, each in a spawned process of its own, all at once; returns
    when all have ended. Ctrl-C or SIGTERM to this process goes on to them as SIGTERM: one in a run stops
    after its step (its checkpoint stays, a trial is queued again), one between runs at its next run's start
    or trial's choice (a trial it was just given is queued again). Then
    this raises TrialInterrupted (exit 128 + the signal); else the first error a worker raised, as one line."""
    import multiprocessing
    import os
    import signal

    ctx = multiprocessing.get_context("spawn")
    # One pipe per worker for its error, not a Queue: a Queue's semaphore outlives a worker ended by a signal
    # and the resource tracker then warns of a leak after the command's last line.
    pipes = [ctx.Pipe(duplex=False) for _ in argument_lists]
    processes = [ctx.Process(target=_in_process, args=(target, arguments, send))
                 for arguments, (_, send) in zip(argument_lists, pipes)]
    stopped: list[int] = []

    def pass_on(signum: int, frame: Any) -> None:
        if not stopped:
            log.warning("%s received: the workers stop after their current step", signal.Signals(signum).name)
        stopped.append(signum)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # only it may handle signals
    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        for process in processes:
            process.start()
            if stopped:  # a signal came while they were starting
                pass_on(stopped[0], None)
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        name = signal.Signals(stopped[0]).name
        raise TrialInterrupted(f"stopped by {name}: the trials and runs that were training are queued again or "
                               "keep their last finished epoch; run the same command to continue", stopped[0])
    reported = [receive.recv() for receive, _ in pipes if receive.poll()]
    if reported:
        message, code = reported[0]
        raise WorkerFailed(message, code)
    failed = [p for p in processes if p.exitcode]
    if failed:
        raise WorkerFailed(f"a worker process ended with exit code {failed[0].exitcode} (its lines above say why); "
                           "run the same command to continue", 1)


class WorkerFailed(RegbenchError):
    """A worker process's error, told to the command's process: its one line and its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _in_process(target: Any, arguments: tuple, errors: Any) -> None:  # errors: the send end of a pipe
    """A worker process: Ctrl-C reaches the whole process group, and the command's process passes it on as
    SIGTERM, so the worker ignores SIGINT itself (one landing while it talks to the storage would break that
    commit; a run in progress handles SIGTERM and stops after its step; between runs it is remembered)."""
    import signal

    from regbench import runner
    from regbench.signals import remember_stops

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    remember_stops()
    quiet_progress_lock()
    try:
        target(*arguments)
    except RegbenchError as err:
        message, code = str(err), int(getattr(err, "exit_code", 2))
    except runner.RunInterrupted as err:  # a final run stopped by the SIGTERM passed on
        message, code = str(err), 128 + int(err.signum)
    else:
        return
    errors.send((message, code))
    sys.exit(code)


def quiet_progress_lock() -> None:
    """tqdm's default lock holds a multiprocessing semaphore; a worker ended at once (SIGKILL, or a signal
    before it set its handlers) exits without releasing it, and the resource tracker then warns of a leak
    after the command's last line. A spawned worker shares no tqdm lock with its siblings anyway, so a
    thread lock loses nothing."""
    import threading

    from tqdm import std

    std.tqdm.set_lock(threading.RLock())


# -- the command ------------------------------------------------------------------------------------
def split_command_line(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the runs' overrides, the tune.KEY=VALUE ones); the regimen and the seed belong to the protocol."""
    from regbench.preflight import check_words

    check_words(argv, ())  # a key given twice, a stray word: one line, as for a run
    runs, tune = [], []
    for arg in argv:
        key = arg.partition("=")[0].lstrip("+~")
        if key.startswith("tune."):
            tune.append(arg)
        elif key in ("regularizer", "seed"):
            raise ConfigError(f"{arg}: `regbench tune` compares the regimens of tune.regimens on tune.trial_seed, then "
                              f"tune.final_seeds: set those instead (e.g. tune.regimens=[none,bn])")
        elif arg.startswith("-"):
            raise ConfigError(f"{arg}: `regbench tune` takes key=value overrides and tune.KEY=VALUE only")
        else:
            runs.append(arg)
    return runs, tune


def best_overrides(plan: Plan, study) -> tuple[list[str], dict[str, Any]] | None:
    """The best completed trial's overrides and what to say about it; None when no trial completed."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    best = max(done, key=lambda t: t.value)
    edges = {r.key: r.edge(best.params[r.key]) for r in plan.ranges if r.key in best.params}
    for key, where in edges.items():
        if where:
            log.warning("regularizer=%s: the best %s (%s) sits at the %s end of its range: move the range "
                        "(tune.space.%s)", plan.regimen, key, best.params[key], where, key)
    about = {"trial": best.number, "val_score": best.value, "params": dict(best.params),
             "at_edge": {k: v for k, v in edges.items() if v}}
    return [f"{k}={v!r}" for k, v in best.params.items()], about


def tune_main(argv: list[str]) -> int:
    """`regbench tune [OVERRIDES] [tune.KEY=VALUE]`: search, then re-run each regimen's best on fresh seeds
    and compare those runs only. Returns the exit code."""
    from regbench.tasks.base import keep_data_in_process

    from regbench import runner

    try:
        return _tune(argv)
    except KeyboardInterrupt:  # Ctrl-C between two runs of a search in this process
        import signal

        raise TrialInterrupted("stopped by SIGINT: a trial that was running is queued again and does not count; "
                               "run the same command to continue", signal.SIGINT) from None
    except runner.RunInterrupted as err:  # a final run trained in this process
        raise TrialInterrupted(str(err), err.signum) from None
    finally:
        keep_data_in_process(False)  # what the trials kept is not for whatever this process does next


def _tune(argv: list[str]) -> int:
    import json

    from regbench.compare import compare
    from regbench.tables import files_line
    from regbench.fileio import write_text_atomic
    from regbench.preflight import merge_overrides

    run_overrides, tune_overrides = split_command_line(argv)
    tune = tune_config(tune_overrides)
    plans_ = plans(run_overrides, tune)
    folder = tune_dir(tune, plans_[0].cfg)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(tune, folder)
    studies = open_studies(tune, plans_, url)
    with file_lock(folder / ".tune.lock", wait=False) as mine:
        if not mine:
            raise ConfigError(f"another `regbench tune` is running the study in {folder}: wait for it, or give "
                              "another tune.dir")
        with ask_lock(url, folder):  # no worker is between asking for a trial and signing it
            for study in studies.values():
                requeue_stale(study)
        workers = int(tune.workers)
        log.info("tuning %s in %s: %d trials per regimen, %d worker(s), storage %s", ", ".join(studies), folder,
                 tune.trials, workers, url)
        finals: list[tuple[list[str], Path]] = []
        if tune.launcher == "slurm":
            executor = slurm_executor(tune, folder)
            log.info("submitting %d worker(s) as a Slurm job array", workers)
            _wait(executor.map_array(work, [run_overrides] * workers, [tune_overrides] * workers, range(workers)))
        elif workers == 1:
            work(run_overrides, tune_overrides)
        else:
            run_in_processes(work, [(run_overrides, tune_overrides, i) for i in range(workers)])
        chosen = {}
        for plan in plans_:
            found = best_overrides(plan, studies[plan.regimen])
            if found is None:
                log.warning("regularizer=%s: no trial completed, so it has no final runs", plan.regimen)
                continue
            params, about = found
            chosen[plan.regimen] = about
            for seed in tune.final_seeds:
                finals.append((merge_overrides(plan.overrides, params, [f"seed={seed}"]),
                               folder / "final" / plan.regimen / f"s{seed}"))
        if tune.launcher == "slurm" and finals:  # the final runs are jobs too: nothing trains where you typed
            _wait(slurm_executor(tune, folder).map_array(final_run, *zip(*finals)))
        elif workers > 1 and len(finals) > 1:  # as many at once as there were workers, each on its share of CPUs
            threads = worker_threads(plans_[0].cfg, workers)
            shares = [finals[i::workers] for i in range(min(workers, len(finals)))]
            run_in_processes(final_runs, [(share, threads) for share in shares])
        else:
            for overrides, run_dir in finals:
                final_run(overrides, run_dir)
    write_text_atomic(folder / "tuned.json", json.dumps({"protocol": "tuned", "storage": url, "trials": tune.trials,
                                                         "final_seeds": list(tune.final_seeds), "best": chosen},
                                                        indent=2) + "\n")
    if not chosen:
        raise ConfigError(f"no regimen has a completed trial in {folder}: nothing to compare")
    comparison = compare([folder / "final"], by=["task", "regularizer"],
                         baseline="regularizer=none" if "none" in chosen else None)
    files = comparison.write(folder)
    tuned = {r: tune_report.test_values(folder / "final" / r) for r in chosen}
    fixed = {plan.regimen: tune_report.fixed_values(plan, tune) for plan in plans_}
    missing = [r for r, values in fixed.items() if not values]
    if tune.fixed is not None and missing:  # asked for, not found: say why the table lacks them
        log.warning("tune.fixed: no completed %s runs of %s on every seed of %s among %s, so the fixed-against-tuned "
                    "table leaves out %s", plans_[0].cfg.task.name, ", ".join(f"regularizer={r}" for r in missing),
                    list(tune.final_seeds), ", ".join(map(str, tune.fixed)), ", ".join(missing))
    protocols = tune_report.protocols_table(fixed, tuned)
    files += [folder / "tuned.json", *tune_report.write(folder, studies, protocols)]
    print("Tuned protocol: each regimen's best configuration (by validation) on fresh seeds\n")
    print(comparison.text())
    if len(protocols):
        print("\nFixed protocol (the task's defaults, same seeds) against tuned, test metric:\n")
        print(protocols[["regimen", "fixed", "tuned", "tuned_minus_fixed", "ci_low", "ci_high"]].to_string(
            index=False, float_format=lambda v: f"{v:.4f}"))
    print(files_line(files))
    return 0


def final_run(overrides: list[str], run_dir: Path, threads: int | None = None) -> str:
    """One final run (a plain run: a regimen's best configuration on a final seed); its status."""
    from regbench import runner
    from regbench.preflight import compose_config

    return runner.run(compose_config(overrides), run_dir, dict(o.split("=", 1) for o in overrides),
                      threads)["status"]


def final_runs(runs: list[tuple[list[str], Path]], threads: int | None) -> None:
    """A local worker process's share of the final runs: the data read once for all of them, its lines on
    stderr."""
    from regbench.tasks.base import keep_data_in_process

    keep_data_in_process()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[final] %(message)s")
    for overrides, run_dir in runs:
        final_run(overrides, run_dir, threads)


def slurm_executor(tune: DictConfig, folder: Path):
    """A submitit executor for tune.slurm's resources; one array task per worker (or final run)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("tune.launcher=slurm needs submitit: pip install 'regbench[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder / "slurm" / "%j"), cluster="slurm")
    s = tune.slurm
    params = {"timeout_min": int(s.timeout_min), "cpus_per_task": int(s.cpus_per_task),
              "slurm_array_parallelism": int(tune.workers)}
    if s.partition:
        params["slurm_partition"] = str(s.partition)
    if s.mem_gb:
        params["mem_gb"] = float(s.mem_gb)
    if s.gpus_per_node:
        params["gpus_per_node"] = int(s.gpus_per_node)
    executor.update_parameters(**params)
    return executor


def _wait(jobs: list) -> None:
    """Every job's result; a job that failed is one line naming it and where its log is."""
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - submitit's FailedJobError and friends
            raise ConfigError(f"Slurm job {job.job_id} failed ({str(err).splitlines()[0][:200]}); its log: "
                              f"{job.paths.stderr}") from None
