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

import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from regbench import tune_report
from regbench.errors import ConfigError, RegbenchError

log = logging.getLogger(__name__)

# The keys a regimen reads only when it uses the regularizer they tune, with the range searched.
CONDITIONAL = {
    "regularizer.dropout.p": ({"low": 0.05, "high": 0.7, "log": False}, lambda r: r.dropout_p > 0),
    "regularizer.grad_clip.max": ({"low": 0.1, "high": 10.0, "log": True}, lambda r: r.clip_mode != "none"),
    "regularizer.label_smoothing": ({"low": 0.01, "high": 0.3, "log": False}, lambda r: r.label_smoothing > 0),
    "regularizer.mixup.alpha": ({"low": 0.05, "high": 1.0, "log": True}, lambda r: r.mixup_alpha > 0),
    "regularizer.cutmix.alpha": ({"low": 0.1, "high": 2.0, "log": True}, lambda r: r.cutmix_alpha > 0),
    "regularizer.ema.decay": ({"low": 0.9, "high": 0.9999, "log": False}, lambda r: r.ema_decay > 0),
}
LR_DECADES = 1.5  # optimizer.lr's default range: this many decades either side of the task's default
PRUNERS = ("none", "median", "asha")
LAUNCHERS = ("local", "slurm")
EDGE = 0.05  # a best value within 5% of its range (on its scale) of an end: the range should move


@dataclass(frozen=True)
class Range:
    """One searched key: a float range (log or linear), an integer range (`integer`), or a list of choices
    (`choices`: model.init's initialisations, say)."""

    key: str
    low: float
    high: float
    log: bool
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def stored(self) -> list:
        if self.choices is not None:  # no NaN bounds: the stored identity must compare equal to itself
            return [self.key, None, None, False, False, list(self.choices)]
        return [self.key, self.low, self.high, self.log, self.integer, []]

    def edge(self, value: float) -> str | None:
        """"low" or "high" when `value` sits at that end of the range (on its scale); None for choices."""
        if self.choices is not None:
            return None
        scale = math.log10 if self.log else (lambda v: v)
        span = scale(self.high) - scale(self.low)
        where = (scale(value) - scale(self.low)) / span if span > 0 else 0.5
        return "low" if where <= EDGE else "high" if where >= 1 - EDGE else None


def tune_config(overrides: list[str]) -> DictConfig:
    """conf/tune/default.yaml with the command line's tune.KEY=VALUE applied, checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    base = OmegaConf.load(str(files("regbench.conf").joinpath("tune", "default.yaml")))
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        name = key.removeprefix("tune.")
        if name.split(".")[0] not in base:
            raise ConfigError(f"{override}: there is no key {key!r} in tune's configuration; its keys are "
                              f"{', '.join('tune.' + k for k in base)}")
        try:  # values as Hydra reads them on the command line: [none,bn], 1e-3, null
            value = OverridesParser.create().parse_override(override).value()
        except HydraException as err:
            raise ConfigError(f"{override}: cannot be read ({str(err).splitlines()[0]})") from None
        if name.startswith("space."):  # the space's keys hold dots themselves: tune.space.optimizer.lr.low=...
            searched, _, field = name[len("space."):].rpartition(".")
            if field in ("low", "high", "log", "int", "choices") and searched:
                default = CONDITIONAL.get(searched, ({"low": None, "high": None, "log": False},))[0]
                entry = dict(base.space.get(searched) or default)  # a regimen's own key starts from its range
                entry[field] = value
                base.space[searched] = entry
            else:
                base.space[name[len("space."):]] = value
            continue
        OmegaConf.update(base, name, value, merge=False)
    tune = base  # the defaults, now with the command line's values
    if not OmegaConf.is_list(tune.regimens):
        raise ConfigError(f"tune.regimens={tune.regimens}: give a list, e.g. tune.regimens=[none,bn]")
    if not tune.regimens:
        raise ConfigError("tune.regimens=[]: name at least one regimen, e.g. tune.regimens=[none,bn]")
    for key, low in (("trials", 1), ("workers", 1)):
        value = tune.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"tune.{key}={value}: give an integer >= {low}")
    if tune.launcher not in LAUNCHERS:
        raise ConfigError(f"tune.launcher={tune.launcher}: choose one of {', '.join(LAUNCHERS)}")
    if tune.pruner not in PRUNERS:
        raise ConfigError(f"tune.pruner={tune.pruner}: choose one of {', '.join(PRUNERS)}")
    if not OmegaConf.is_list(tune.final_seeds) or not tune.final_seeds:
        raise ConfigError(f"tune.final_seeds={tune.final_seeds}: give a list of seeds, e.g. tune.final_seeds=[0,1,2]")
    if tune.trial_seed in list(tune.final_seeds):
        raise ConfigError(f"tune.final_seeds={list(tune.final_seeds)} holds tune.trial_seed={tune.trial_seed}: the "
                          "final runs must use seeds no trial used; change one of them")
    if not OmegaConf.is_dict(tune.space):
        raise ConfigError(f"tune.space={tune.space}: give KEY: {{low: ..., high: ..., log: true|false}} entries")
    if tune.fixed is not None:
        if not OmegaConf.is_list(tune.fixed) or not tune.fixed:
            raise ConfigError(f"tune.fixed={tune.fixed}: give a list of folders or results.csv files of the fixed "
                              "protocol's runs, e.g. tune.fixed=[outputs/sweeps/2026-12-06_10-00-00]")
        missing = [str(f) for f in tune.fixed if not Path(str(f)).expanduser().exists()]
        if missing:
            raise ConfigError(f"tune.fixed: {missing[0]} does not exist (give the fixed protocol's sweep or run "
                              "folders, or results.csv files)")
    return tune


def ranges(tune: DictConfig, cfg: DictConfig, regimen) -> list[Range]:
    """The searched keys of one regimen (its config `cfg`), each checked: the common space (every key must
    be one the regimen reads) and, with tune.conditional, the regimen's own keys."""
    out = []
    if not tune.space and not tune.conditional:
        raise ConfigError("tune.space is empty and tune.conditional=false: there is nothing to tune")
    for key, spec in tune.space.items():
        spec = spec if OmegaConf.is_dict(spec) else OmegaConf.create({})
        if key in CONDITIONAL and not CONDITIONAL[key][1](regimen):
            continue  # a regimen's own key: searched only where the regimen reads it
        if OmegaConf.select(cfg, key) is None and key != "optimizer.lr":
            raise ConfigError(f"tune.space.{key}: there is no key {key!r} in this configuration")
        low, high = spec.get("low"), spec.get("high")
        if key == "optimizer.lr" and low is None and high is None:
            default = float(cfg.optimizer.lr)
            low, high = default / 10 ** LR_DECADES, default * 10 ** LR_DECADES
        out.append(_checked(key, low, high, bool(spec.get("log", False)), bool(spec.get("int", False)),
                            spec.get("choices")))
    if tune.conditional:
        for key, (spec, reads) in CONDITIONAL.items():
            if reads(regimen) and key not in tune.space:
                out.append(_checked(key, spec["low"], spec["high"], spec["log"]))
    if not out:
        raise ConfigError(f"regularizer={cfg.regularizer.name}: tune.space is empty and the regimen has no keys of its "
                          "own to search: add optimizer.lr to tune.space")
    return out


def _checked(key: str, low: Any, high: Any, log_scale: bool, integer: bool = False,
             choices: Any = None) -> Range:
    if choices is not None:
        options = list(choices) if OmegaConf.is_list(choices) or isinstance(choices, (list, tuple)) else []
        if len(options) < 2:
            raise ConfigError(f"tune.space.{key}.choices={choices}: give a list of at least two values")
        return Range(key, math.nan, math.nan, False, choices=tuple(options))
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"tune.space.{key}.{name}={value}: give a number")
    if low >= high:
        raise ConfigError(f"tune.space.{key}: low={low} is not below high={high}")
    if log_scale and low <= 0:
        raise ConfigError(f"tune.space.{key}: a log range must stay above 0 (low={low}); use log: false or a low > 0")
    return Range(key, float(low), float(high), log_scale, integer=integer)


# -- the studies ------------------------------------------------------------------------------------
@dataclass
class Plan:
    """One regimen's search: its base command line (the run's overrides, the regimen, the trial seed),
    its composed config and the ranges searched."""

    regimen: str
    overrides: list[str]
    cfg: DictConfig
    ranges: list[Range]


def plans(run_overrides: list[str], tune: DictConfig, machine: bool = True) -> list[Plan]:
    """Each regimen's plan, its config composed and validated (`machine`: the device and the data too)."""
    from regbench.preflight import compose_config, merge_overrides
    from regbench.validation import validate

    out = []
    for name in tune.regimens:
        overrides = merge_overrides(run_overrides, [f"regularizer={name}", f"seed={tune.trial_seed}"])
        try:
            cfg = compose_config(overrides)
        except Exception as err:  # noqa: BLE001 - Hydra's composition errors, as the run command words them
            raise ConfigError(f"tune.regimens: regularizer={name} cannot be composed ({str(err).splitlines()[0]})") \
                from None
        regimen = validate(cfg, machine=machine)
        out.append(Plan(str(name), overrides, cfg, ranges(tune, cfg, regimen)))
    searched = {r.key for plan in out for r in plan.ranges}
    for key in tune.space:
        if key not in searched:
            raise ConfigError(f"tune.space.{key}: none of tune.regimens ({', '.join(map(str, tune.regimens))}) reads "
                              f"{key}, so searching it would only add noise; leave it out of tune.space")
    return out


def study_name(tune: DictConfig, cfg: DictConfig) -> str:
    from regbench.optim import optimizer_name

    return str(tune.study or f"{cfg.task.name}-{cfg.model.name}-{optimizer_name(cfg)}")


def tune_dir(tune: DictConfig, cfg: DictConfig) -> Path:
    return Path(tune.dir) if tune.dir else Path(cfg.paths.output_dir) / "tune" / study_name(tune, cfg)


def storage_url(tune: DictConfig, folder: Path) -> str:
    return str(tune.storage or f"sqlite:///{folder.resolve() / 'optuna.db'}")


def sampler_seed(tune: DictConfig, url: str) -> int:
    """tune.sampler_seed for a search with one worker (reproducible, and the same for every regimen). With
    several workers, or a storage other processes may share, each process gets a seed of its own: processes
    seeded alike would propose the same points (the same runs) in parallel."""
    if int(tune.workers) == 1 and url.startswith("sqlite") and tune.launcher == "local":
        return int(tune.sampler_seed)
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
                  "asha": optuna.pruners.SuccessiveHalvingPruner()}[tune.pruner]
        study = optuna.create_study(study_name=f"{name}.{plan.regimen}", storage=storage, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=sampler_seed(tune, url)), pruner=pruner,
                                    load_if_exists=True)
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


class TrialCrashed(RegbenchError):
    """A trial raised an error of the code or the machine (not a result of its configuration): it is queued
    again and does not count, and the tune stops; exit code 1."""

    exit_code = 1


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


def counted(study) -> int:
    """Trials that count against the budget: finished (completed, pruned, failed for a reason of their own)
    or running; a trial failed only because its process died was queued again and does not count."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and not t.system_attrs.get(REQUEUED_ATTR)))


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
def _locked(path: Path, wait: bool = True) -> Iterator[bool]:
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
def _ask_lock(url: str, folder: Path) -> Iterator[None]:
    """The lock around choosing the next trial: a PostgreSQL advisory lock when the storage is a server
    (workers on several machines), else a file lock in the study's folder (one machine)."""
    if not url.startswith("postgresql"):
        with _locked(folder / ".ask.lock"):
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


def work(run_overrides: list[str], tune_overrides: list[str], worker: int = 0) -> int:
    """One worker: trials until every regimen's budget is spent, data and studies opened once per process;
    the choice of the next trial is made under a lock, so workers never exceed a budget. Returns the
    number of trials it ran."""
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
        with _ask_lock(url, folder):
            picked = next_trial(studies, int(tune.trials))
        if picked is None:
            return ran
        regimen, trial = picked
        state = run_trial(plans_[regimen], studies[regimen], trial, folder, threads)
        ran += 1
        log.info("worker %d: %s trial %d %s (%d of %d)", worker, regimen, trial.number, state,
                 counted(studies[regimen]), tune.trials)


def _work_in_process(args: tuple) -> int:
    return work(*args)


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

    try:
        return _tune(argv)
    finally:
        keep_data_in_process(False)  # what the trials kept is not for whatever this process does next


def _tune(argv: list[str]) -> int:
    import json
    import multiprocessing

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
    with _locked(folder / ".tune.lock", wait=False) as mine:
        if not mine:
            raise ConfigError(f"another `regbench tune` is running the study in {folder}: wait for it, or give "
                              "another tune.dir")
        with _ask_lock(url, folder):  # no worker is between asking for a trial and signing it
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
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                pool.map(_work_in_process, [(run_overrides, tune_overrides, i) for i in range(workers)])
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
            with multiprocessing.get_context("spawn").Pool(min(workers, len(finals)), _final_worker_start) as pool:
                pool.map(_final_in_process, [(o, d, threads) for o, d in finals], chunksize=1)
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
    tuned = {r: _test_values(folder / "final" / r) for r in chosen}
    fixed = {plan.regimen: fixed_values(plan, tune) for plan in plans_}
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


def _final_worker_start() -> None:
    """A local process that trains final runs: the data read once for all of them, its lines on stderr."""
    from regbench.tasks.base import keep_data_in_process

    keep_data_in_process()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[final] %(message)s")


def _final_in_process(args: tuple) -> str:
    return final_run(*args)


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


def _test_values(folder: Path) -> dict[int, float]:
    """seed -> the primary test metric of the completed runs under `folder`."""
    from regbench.record import read_metrics

    out = {}
    for path in sorted(folder.glob("*/metrics.json")):
        record = read_metrics(path.parent)
        value = record.get("test", {}).get(record.get("primary_metric"))
        if record.get("status") == "completed" and value is not None:
            out[int(record["seed"])] = float(value)
    return out


def fixed_values(plan: Plan, tune: DictConfig) -> dict[int, float]:
    """seed -> the test metric of the fixed protocol's run of this regimen (the same command without the
    tuned keys) on each final seed, found through the run index, or among tune.fixed's runs (the regimen's
    completed runs of the same task); {} unless every final seed has one."""
    from regbench import checkpoints
    from regbench.preflight import compose_config, merge_overrides
    from regbench.record import read_metrics

    if tune.fixed is not None:
        return _fixed_values_in([Path(str(f)).expanduser() for f in tune.fixed], plan, list(tune.final_seeds))
    out = {}
    for seed in tune.final_seeds:
        cfg = compose_config(merge_overrides(plan.overrides, [f"seed={seed}"]))
        earlier = checkpoints.find_earlier(cfg, checkpoints.run_id(cfg), Path("/nonexistent"))
        if earlier is None or not earlier.final:
            return {}
        record = read_metrics(earlier.run_dir)
        value = record.get("test", {}).get(record.get("primary_metric"))
        if record.get("status") != "completed" or value is None:
            return {}
        out[int(seed)] = float(value)
    return out


def _fixed_values_in(sources: list[Path], plan: Plan, seeds: list[int]) -> dict[int, float]:
    """seed -> the primary test metric of `plan`'s regimen among the records under `sources` (its task,
    completed; of several runs of one seed, the latest)."""
    import pandas as pd

    from regbench.runs import load_runs

    runs = load_runs(sources)
    mine = runs[(runs["task"] == plan.cfg.task.name) & (runs["regularizer"] == plan.regimen)
                & (runs["status"] == "completed") & runs["seed"].isin(seeds)]
    if "started_at" in mine:
        mine = mine.sort_values("started_at", kind="stable")
    out = {}
    for _, row in mine.iterrows():  # in start order: a seed's latest run is the one kept
        value = row.get(f"test.{row['primary_metric']}")
        if pd.notna(value):
            out[int(row["seed"])] = float(value)
    return out if set(out) == set(seeds) else {}
