"""The Optuna side of `regbench tune`: one study per regimen in one storage (SQLite in the study's folder, or a
PostgreSQL server shared by several machines), which trials count against a budget, the trials of a dead
process queued again, and the locks under which workers choose their next trial so that no budget is
exceeded."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from regbench.errors import ConfigError, RegbenchError
from regbench.tune_space import Plan

log = logging.getLogger(__name__)


def study_name(tune: DictConfig, cfg: DictConfig) -> str:
    from regbench.optim import optimizer_name

    return str(tune.study or f"{cfg.task.name}-{cfg.model.name}-{optimizer_name(cfg)}")


def tune_dir(tune: DictConfig, cfg: DictConfig) -> Path:
    return Path(tune.dir) if tune.dir else Path(cfg.paths.output_dir) / "tune" / study_name(tune, cfg)


def storage_url(tune: DictConfig, folder: Path) -> str:
    return str(tune.storage or f"sqlite:///{folder.resolve() / 'optuna.db'}")


def sampler_seed(tune: DictConfig, url: str, asked: int = 0) -> int:
    """tune.sampler_seed for a search with one worker (reproducible, and the same for every regimen). With
    several workers, or a storage other processes may share, each process gets a seed of its own: processes
    seeded alike would propose the same points (the same runs) in parallel. A one-worker search that goes on
    (its study holds `asked` trials) is seeded from that count too: tune.sampler_seed again would propose the
    search's first points again, runs it already has, and spend the budget on repeats."""
    if int(tune.workers) == 1 and url.startswith("sqlite") and tune.launcher == "local":
        if asked == 0:
            return int(tune.sampler_seed)
        return int(hashlib.sha256(f"{tune.sampler_seed}:after:{asked}".encode()).hexdigest()[:8], 16)
    import os
    import socket

    mixed = hashlib.sha256(f"{tune.sampler_seed}:{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()
    return int(mixed[:8], 16)


def open_studies(tune: DictConfig, plans_: list[Plan], url: str) -> dict[str, Any]:
    """regimen -> its Optuna study (created, or loaded when it exists); a study created with another
    space or task, or a storage that cannot be reached, is one line."""
    if url.startswith("postgresql"):  # two commands creating the tables or a study at once collide
        try:
            with _server_lock(url):
                return _open_studies(tune, plans_, url)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - the server could not be reached
            raise ConfigError(f"tune.storage={url}: cannot be opened ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]})") from None
    return _open_studies(tune, plans_, url)


def _open_studies(tune: DictConfig, plans_: list[Plan], url: str) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors for a bad URL or an unreachable server
        raise ConfigError(f"tune.storage={url}: cannot be opened ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]})") from None
    name = study_name(tune, plans_[0].cfg)
    studies = {}
    for plan in plans_:
        identity = {"task": plan.cfg.task.name, "model": plan.cfg.model.name, "trial_seed": int(tune.trial_seed),
                    "space": [r.stored() for r in plan.ranges]}
        pruner = {"none": optuna.pruners.NopPruner(), "median": optuna.pruners.MedianPruner(n_warmup_steps=1),
                  # min_resource=1: rungs at epochs 1, 4, 16, ... from the first trial on. Optuna's "auto" waits
                  # for a completed trial to size them, and until then files no rung value: each regimen's
                  # first trial then never competed and its second always went on (the CPU study, 2026-12-06).
                  "asha": optuna.pruners.SuccessiveHalvingPruner(min_resource=1)}[tune.pruner]
        pruner = RequeuedAreNoPeers(pruner)
        study = optuna.create_study(study_name=f"{name}.{plan.regimen}", storage=storage, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=sampler_seed(tune, url)), pruner=pruner,
                                    load_if_exists=True)
        asked = len(study.get_trials(deepcopy=False))
        if asked:  # a search that goes on: a seed of its own (sampler_seed)
            study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(tune, url, asked))
        stored = study.user_attrs.get("identity")
        if stored is None:
            study.set_user_attr("identity", identity)
        elif stored != identity:
            raise ConfigError(f"tune.study={name}: the study {name}.{plan.regimen} in {url} was made for another "
                              f"task, model or space ({stored}); give another tune.study, or the same space")
        studies[plan.regimen] = study
    return studies


WORKER_ATTR = "regbench_worker"  # "<host>:<pid>" of the process that asked for the trial


def _alive(worker: str | None) -> bool:
    """Whether the worker process that runs a trial is still alive. A worker on another machine cannot be
    seen from here: it counts as alive (a worker started on its own machine requeues its trials)."""
    import os
    import socket

    if not worker:
        return False  # asked for by no worker of ours (a trial left by hand, say)
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


REQUEUED_ATTR = "regbench_requeued"  # a FAIL that does not count: its parameters were queued again


class _WithoutRequeued:
    """A study as a pruner sees it: its trials less the requeued ones (REQUEUED_ATTR); the rest is the study."""

    def __init__(self, study) -> None:
        self._study = study

    def get_trials(self, *args, **kwargs):
        return [t for t in self._study.get_trials(*args, **kwargs) if not t.system_attrs.get(REQUEUED_ATTR)]

    def __getattr__(self, name: str):
        return getattr(self._study, name)


class RequeuedAreNoPeers:  # an Optuna pruner (its one method, prune); optuna stays an import of tune's alone
    """A pruner that does not rank a trial against requeued ones. A trial stopped by a session's end keeps the
    values it filed at ASHA's rungs when it is failed and queued again; its copy, trained again from epoch 1
    where the checkpoint was lost (a machine that does not outlive a session), then met its own earlier
    scores there and was pruned by them: the CIFAR-10 search of the CPU study, bn_dropout trial 5, 0.2915 at
    epoch 1 against its interrupted copy's 0.318. A copy that resumes from its checkpoint files the same
    values again, so its predecessor would only count twice."""

    def __init__(self, pruner) -> None:
        self.pruner = pruner

    def prune(self, study, trial) -> bool:
        return self.pruner.prune(_WithoutRequeued(study), trial)


class TrialCrashed(RegbenchError):
    """A trial raised an error of the code or the machine (not a result of its configuration): it is queued
    again and does not count, and the tune stops; exit code 1."""

    exit_code = 1


class TrialInterrupted(RegbenchError):
    """Ctrl-C or SIGTERM stopped a trial between two steps: it is queued again and does not count, its run
    resumes from its checkpoint when the same command runs again; exit code 128 + the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def requeue_stale(study) -> int:
    """Trials left RUNNING by a process of this machine that died: failed, and their parameters queued again
    (the run of the queued trial resumes from its checkpoint). Trials of live workers, here or on other
    machines sharing the storage, are left alone."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False)
             if t.state == TrialState.RUNNING and not _alive(t.system_attrs.get(WORKER_ATTR))]
    for trial in stale:
        study._storage.set_trial_system_attr(trial._trial_id, REQUEUED_ATTR, True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        log.warning("trial %d of study %s was running when its process stopped: queued again with %s",
                    trial.number, study.study_name, trial.params)
    return len(stale)


def _counts(trial) -> bool:
    """Whether a trial counts against the budget: finished (completed, pruned, failed for a reason of its
    own) or running; a trial failed only because its process died was queued again and does not count."""
    from optuna.trial import TrialState

    return (trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            or (trial.state == TrialState.FAIL and not trial.system_attrs.get(REQUEUED_ATTR)))


def counted(study) -> int:
    """Trials that count against the budget (_counts)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))


def progress(studies: dict[str, Any], regimen: str, budget: int) -> str:
    """How far the search is, for a trial's line: trials finished (running ones count against a budget but
    have no result yet, so they are named apart). One read of each study's trials."""
    from optuna.trial import TrialState

    done, busy = {}, 0
    for name, study in studies.items():
        counting = [t for t in study.get_trials(deepcopy=False) if _counts(t)]
        running = sum(1 for t in counting if t.state == TrialState.RUNNING)
        done[name], busy = len(counting) - running, busy + running
    return (f"{done[regimen]} of {budget} for {regimen}; {sum(done.values())} of {budget * len(studies)} in all"
            + (f", {busy} running" if busy else ""))


def next_trial(studies: dict[str, Any], budget: int):
    """(regimen, trial) for the regimen with the fewest trials counted, or None when every budget is spent.
    Called under the ask lock, so that workers never exceed a budget."""
    import os
    import socket

    left = {name: budget - counted(study) for name, study in studies.items()}
    open_ = [name for name, n in left.items() if n > 0]
    if not open_:
        return None
    name = max(open_, key=lambda n: left[n])  # the regimen furthest behind: budgets fill evenly
    trial = studies[name].ask()
    trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    return name, trial


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` (fcntl, one machine); yields False at once when `wait` is false and
    another process holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def ask_lock(url: str, folder: Path) -> Iterator[None]:
    """The lock around choosing the next trial: a PostgreSQL advisory lock when the storage is a server
    (workers on several machines), else a file lock in the study's folder (one machine)."""
    if not url.startswith("postgresql"):
        with file_lock(folder / ".ask.lock"):
            yield
        return
    with _server_lock(url):
        yield


@contextmanager
def _server_lock(url: str) -> Iterator[None]:
    """A PostgreSQL advisory lock, one per storage URL (it needs no table, so it also guards their creation)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    key = int(hashlib.sha256(url.encode()).hexdigest()[:15], 16)  # one advisory lock per storage
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            connection.commit()
    engine.dispose()
