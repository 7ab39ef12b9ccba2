"""Make an Optuna search (hydra/sweeper=tune) continue after a crash.

hydra-optuna-sweeper loads an existing study from its storage but then runs n_trials *more* trials, and
a trial that was running when the process died stays RUNNING forever. Before Hydra starts, this marks
such trials failed and queues their parameters again (the regbench run of that trial then resumes
from its checkpoint), and turns hydra.sweeper.n_trials into what is left of the study's budget.
Only one search process per study at a time: a trial another process is running would look stale.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig

log = logging.getLogger(__name__)

OPTUNA_SWEEPER = "OptunaSweeper"


@dataclass
class Budget:
    study_name: str
    finished: int      # trials that count against the budget: completed, pruned, failed (not stale)
    requeued: int      # stale RUNNING trials marked failed and queued again
    remaining: int
    trials: int        # every trial the study holds, in any state


def uses_optuna(cfg: DictConfig) -> bool:
    return str(cfg.hydra.sweeper.get("_target_", "")).endswith(OPTUNA_SWEEPER)


def prepare_study(cfg: DictConfig) -> Budget | None:
    """For an Optuna sweep with persistent storage: clean up after a crash and return the budget left.
    None when the sweep is not an Optuna one, has no storage, or the study does not exist yet."""
    sweeper = cfg.hydra.sweeper
    if not uses_optuna(cfg) or not sweeper.get("storage") or not sweeper.get("study_name"):
        return None
    import optuna
    from optuna.trial import TrialState

    storage, name = str(sweeper.storage), str(sweeper.study_name)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # a new study: the sweeper creates it
        return None
    trials = study.get_trials(deepcopy=False)
    stale = [t for t in trials if t.state == TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params)
        log.warning("trial %d of study %s was running when the search stopped: queued again with %s",
                    trial.number, name, trial.params)
    stale_ids = {t._trial_id for t in stale}
    finished = sum(1 for t in trials if t.state.is_finished() and t._trial_id not in stale_ids)
    return Budget(name, finished, len(stale), max(0, int(sweeper.n_trials) - finished), len(trials))
