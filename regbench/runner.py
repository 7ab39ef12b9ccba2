"""One run, from a composed config to its record on disk: reuse or resume an earlier attempt, build the
task, the regimen and the model, measure the costs, train (regbench.loop), assess the best weights
(regbench.assessment), and write the record whatever happens. Signals stop a run cleanly between two
steps (regbench.signals). It never names a task."""
from __future__ import annotations

import logging
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from regbench import checkpoints, code_identity, complexity, distributed, gradients, loop, tracking
from regbench.assembly import Built, assemble
from regbench.assessment import assess
from regbench.errors import RegbenchError
from regbench.launchers import available_cpus
from regbench.machine_load import LoadWatch
from regbench.optim import optimizer_name
from regbench.provenance import git_state, host, versions
from regbench.record import TEST_OUTPUTS_FILE, RecordWriter, RunRecord, Status, read_history
from regbench.regimen import Regimen
from regbench.signals import RunInterrupted, StopSignals, heed_stop
from regbench.validation import validate

__all__ = ["Run", "RunInterrupted", "run"]

log = logging.getLogger(__name__)


class Run(loop.FitHooks):
    """One training run: build everything from the config, train, evaluate, write the record."""

    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: dict[str, str] | None = None,
                 threads: int | None = None, in_sweep: bool = False, prune: Any = None) -> None:
        self.cfg = cfg
        # prune(epoch, score) -> True stops the run after that epoch as `pruned` (regbench tune's pruner); the
        # score is the validation primary metric, negated where lower is better (always maximised)
        self.prune = prune
        self.pruned = False
        self.in_sweep = in_sweep  # a multirun's job: logger=mlflow leaves MLflow to the end of the sweep
        self.trackers: list[tracking.EpochLogger] = []
        self.threads = threads or cfg.trainer.threads or None  # None: PyTorch's default
        self.run_dir = Path(run_dir)
        self.ranks = distributed.from_environment()  # several under torchrun; only rank 0 writes files
        self.writer = RecordWriter(self.run_dir, owner=self.ranks.is_main)
        commit, dirty = git_state()
        self.record = RunRecord(
            task=cfg.task.name, model=cfg.model.name, regularizer=cfg.regularizer.name, optimizer=optimizer_name(cfg),
            schedule=cfg.schedule.name, seed=int(cfg.seed), versions=versions(), git_commit=commit, git_dirty=dirty,
            host=host(), started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            overrides=overrides or {})
        self.history: list[dict[str, Any]] = []
        self.signals = StopSignals()  # SIGTERM/SIGINT/SIGUSR2 stop the loop at the next step
        self.device: torch.device | None = None
        self.training: loop.Training | None = None
        self.load: LoadWatch | None = None  # started once the run has its threads

    # -- lifecycle -----------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Train (or reuse a finished earlier attempt, or resume an unfinished one) and write the record.

        Raises RunInterrupted after SIGTERM/SIGINT and re-raises any other error, always after the
        record (status `interrupted` or `failed`) is on disk; a signal that came as this process's previous
        run finished raises it before anything is written."""
        unheeded = heed_stop()
        if unheeded is not None:  # asked during this process's previous run, which then completed
            raise RunInterrupted(unheeded, None, self.run_dir)
        if self.ranks.active:
            self.device = distributed.start(self.ranks, loop.resolve_device(self.cfg.trainer.device))
            self.record.distributed = {"world_size": self.ranks.world, "backend": distributed.backend()}
        try:
            record = self._execute()
        except BaseException:
            distributed.stop(orderly=False)
            raise
        distributed.stop()
        return record

    def _execute(self) -> dict[str, Any]:
        main = self.ranks.is_main
        # The user's source files are read and hashed once, for the record and the run id alike.
        self.record.code = code_identity.user_code(self.cfg)
        self.record.config = checkpoints.identity(self.cfg, self.record.code)
        rid = self.record.run_id = checkpoints.run_id(self.cfg, self.ranks.world, self.record.config)
        earlier = None
        if self.cfg.trainer.resume:
            earlier = checkpoints.find_earlier(self.cfg, rid, self.run_dir) if main else None
            earlier = distributed.broadcast(earlier, self.ranks)
            if earlier is not None and earlier.pruned and self.prune is None:
                earlier = None  # a pruned trial is no result: a plain run of its configuration trains in full
            if earlier is not None and earlier.final:
                return self._reuse(earlier) if main else earlier.record
        # A run that cannot start (a bad value, missing data, no GPU) leaves no record: it never ran. An
        # unexpected error while building is a crash, recorded as failed like any other.
        try:
            built = self._build(validate(self.cfg, machine=True))
        except RegbenchError:
            raise
        except BaseException as err:
            self._record_failure(err)
            raise
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            checkpoints.remember(self.cfg, rid, self.run_dir)
        self.writer.write(self.record)  # status "running": a killed run is visible to compare and findable
        try:
            with self.signals.watching():
                self._train(built, earlier.checkpoint if earlier is not None else None)
        except BaseException as err:  # record every way a run can end, then let the caller decide
            self._record_failure(err)
            raise
        self._finish()
        return self.record.to_dict()

    def _reuse(self, earlier: checkpoints.Earlier) -> dict[str, Any]:
        """A finished earlier attempt stands for this run: its files, and this run's trackers fed from its
        history, as if it had trained here. What it never wrote is named, with the key that writes it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = checkpoints.reuse(earlier, self.run_dir, self.record.overrides)
        if self.cfg.trainer.test_outputs and not (self.run_dir / TEST_OUTPUTS_FILE).is_file():
            log.warning("the reused run in %s wrote no %s (it ran with trainer.test_outputs=false, over "
                        "trainer.test_outputs_max_mb, or its task stores none): add trainer.resume=false to train "
                        "it again and write it", earlier.run_dir, TEST_OUTPUTS_FILE)
        tracking.replay(self.cfg, self.run_dir, record, read_history(self.run_dir), self.in_sweep)
        return record

    def _record_failure(self, err: BaseException) -> None:
        interrupted = isinstance(err, (KeyboardInterrupt, RunInterrupted))
        self.record.status = Status.INTERRUPTED if interrupted else Status.FAILED
        self.record.error = str(err) if isinstance(err, RunInterrupted) else f"{type(err).__name__}: {err}"
        if not interrupted:
            self.record.traceback = traceback.format_exc(limit=20)
        if self.ranks.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._finish()

    def _finish(self) -> None:
        self.record.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.load is not None:
            self.record.load = self.load.finish()
        self.writer.write_history(self.history)
        self.writer.write(self.record)
        if Status(self.record.status).final and self.ranks.is_main:
            checkpoints.forget_last(self.run_dir)
        for tracker in self.trackers:
            tracking.safely(f"logger={self.cfg.logger.name} at the end of the run", tracker.finish,
                            self.record.to_dict())
        self.trackers = []

    # -- loop hooks ----------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        return self.signals.asked

    def on_best(self, state: loop.FitState) -> None:
        self.record.best_epoch, self.record.val = state.best_epoch, state.val
        if self.cfg.trainer.save_checkpoint and self.ranks.is_main:
            checkpoints.save_best(self.run_dir, self.cfg, state)

    def _pruning_score(self, row: dict[str, Any]) -> float | None:
        """An epoch's score for the pruner: the validation primary metric, negated where lower is better."""
        value = row.get(f"val_{self.record.primary_metric}")
        return None if value is None else float(value) if self.record.higher_is_better is not False else -value

    def _report_restored_epochs(self, history: list[dict[str, Any]]) -> None:
        """A resumed trial tells its pruner the epochs its checkpoint restored, in order, as it did before it
        was stopped: an asynchronous pruner (ASHA) files a trial's value at each rung it passes, and without
        them it filed the first live epoch's value at every earlier rung (2026-12-06: a trial resumed after
        epoch 17 set its regimen's bar at epoch 1 with its epoch-18 F1, and two trials were pruned against
        it). The pruner's answers are not acted on: the trial had passed those rungs when it was stopped."""
        if self.prune is None:
            return
        for row in history:
            score = self._pruning_score(row)
            if score is not None:
                self.prune(int(row["epoch"]), score)

    def on_epoch_end(self, state: loop.FitState) -> None:
        if self.prune is not None and not state.stopped:
            score = self._pruning_score(state.history[-1])
            value = state.history[-1].get(f"val_{self.record.primary_metric}")
            if score is not None and self.prune(state.epoch, score):
                self.pruned = state.stopped = True
                log.info("pruned after epoch %d (val %s %.4f): the pruner ranks it below its regimen's other "
                         "trials there", state.epoch, self.record.primary_metric, float(value))
        self.history = state.history
        self.writer.write_history(self.history)
        every = self.cfg.trainer.checkpoint_every
        if every and (state.epoch % every == 0 or state.stopped) and self.ranks.is_main:
            checkpoints.save_last(self.run_dir, self.cfg, self.record.run_id, self.training, state)
        for tracker in self.trackers:  # after the checkpoint: a resumed run never logs an epoch twice
            tracking.safely(f"logger={self.cfg.logger.name} at epoch {state.epoch}", tracker.log_epoch,
                            state.history[-1])

    # -- the run -------------------------------------------------------------------------------------
    def _build(self, regimen: Regimen) -> Built:
        """The run's threads (the load watch counts against them), then everything it trains (assembly.py)."""
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.record.threads = torch.get_num_threads()
        self.record.flush_denormal = set_flush_denormal(bool(self.cfg.trainer.flush_denormal))
        self.load = LoadWatch.start(available_cpus(), self.record.threads)
        return assemble(self.cfg, regimen, self.record, self.ranks, self.device)

    def _train(self, built: Built, resume_from: Path | None) -> None:
        cfg, record = self.cfg, self.record
        task, model, device = built.task, built.model, built.device
        log.info("training %s %s with regularizer=%s on %s for up to %d epochs; record in %s", cfg.task.name,
                 cfg.model.name, cfg.regularizer.name, record.device, cfg.trainer.max_epochs, self.run_dir)
        if built.optimizer is not None:
            best_state = self._fit(built, resume_from)
        else:  # nothing to train (the popularity baseline): score it as it is
            t1 = time.perf_counter()
            record.val = loop.evaluate(task, model, "val")
            record.eval_time_s = round(record.eval_time_s + time.perf_counter() - t1, 3)
            record.best_epoch = 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if not self.ranks.is_main:  # rank 0 tests, measures and writes the record
            return
        if best_state is not None:
            model.load_state_dict(best_state)
            assess(cfg, task, model, device, record, self.run_dir)
        best = self.run_dir / checkpoints.CHECKPOINT_DIR / checkpoints.BEST_CHECKPOINT
        if best.exists():
            record.checkpoint_bytes = best.stat().st_size
        record.gradients = gradients.run_summary(self.history)
        if record.status == Status.RUNNING:
            record.status = Status.COMPLETED
        record.peak_memory_bytes, record.peak_memory_kind = complexity.peak_memory(device)

    def _fit(self, built: Built, resume_from: Path | None) -> dict[str, torch.Tensor] | None:
        """Train with validation after every epoch (resuming from `resume_from` when given); returns the
        best-validation weights."""
        cfg, record, task = self.cfg, self.record, built.task
        self.training = training = loop.prepare(cfg, task, built.model, built.regimen, built.generator,
                                                ranks=self.ranks, extras=built.extras, optimizer=built.optimizer)
        early = loop.EarlyStopping(int(cfg.trainer.early_stopping.patience), task.higher_is_better)
        state = loop.FitState(early=early)
        if resume_from is not None:
            state = checkpoints.resume(resume_from, record.run_id, training, early)
            self.history = state.history
            record.resumed_from = f"{resume_from} (after epoch {state.epoch})"
            record.best_epoch, record.val = state.best_epoch, state.val
            record.epochs_run, record.train_time_s, record.eval_time_s = state.epoch, state.train_time_s, \
                state.eval_time_s
            moved = resume_from.parent != self.run_dir / checkpoints.CHECKPOINT_DIR
            if state.best_state is not None and cfg.trainer.save_checkpoint and moved and self.ranks.is_main:
                checkpoints.save_best(self.run_dir, cfg, state)
            self._report_restored_epochs(state.history)
        if self.ranks.is_main:
            self.trackers = tracking.live_loggers(cfg, self.run_dir, state.epoch, record.to_dict(), self.in_sweep)
        state = loop.fit(training, state, self)
        self.history = state.history
        record.epochs_run, record.train_time_s, record.eval_time_s = state.epoch, state.train_time_s, \
            state.eval_time_s
        record.compile_time_s = training.compile_time_s
        if state.interrupted_in is not None:
            raise self.signals.interrupted(state.interrupted_in, self.run_dir)
        if state.diverged:
            record.status = Status.DIVERGED
        if self.pruned and not state.diverged:  # not a finished result: nothing is tested
            record.status = Status.PRUNED
            return None
        return state.best_state


SUBNORMAL_BITS = 0x00400000  # a float32 with a zero exponent and a non-zero fraction


def set_flush_denormal(flush: bool) -> bool:
    """Treat subnormal floats as zero on the CPU (or not): arithmetic on them is 16-27x slower, and weights
    that decay into them slowed a CoNLL-2000 run 12x (docs/benchmarks.md). Set for every run, on or off, so
    no run inherits an earlier one's mode. The mode is per thread and a thread inherits it when it starts,
    so torch's intra-op threads have it only when they started after this (in a fresh process they start
    with the first parallel operation, after it): a parallel probe says whether every thread flushes.
    Returns that; False when off or where the CPU cannot. The mode stays the process's after the run."""
    if not torch.set_flush_denormal(flush) or not flush:
        return False
    # A subnormal (5.9e-39) written as its bits: made from a float, it would already be 0 in this thread.
    # Large enough that torch splits the multiply across every thread.
    probe = torch.full(((1 << 20) * max(1, torch.get_num_threads()),), SUBNORMAL_BITS, dtype=torch.int32)
    if bool((probe.view(torch.float32) * 1.0).count_nonzero()):
        log.warning("trainer.flush_denormal=true reached only some of torch's %d CPU threads (they started "
                    "before this run, in this process): subnormal floats stay slow in the others; run in a fresh "
                    "process, or with trainer.threads=1", torch.get_num_threads())
        return False
    return True


def run(cfg: DictConfig, run_dir: Path, overrides: dict[str, str] | None = None,
        threads: int | None = None, in_sweep: bool = False, prune: Any = None) -> dict[str, Any]:
    """Train one configuration and write its record into run_dir; return metrics.json's content.
    `threads` (torch CPU threads) overrides trainer.threads; the CLI derives it from the launcher.
    `prune(epoch, score)` returning True stops the run as `pruned` (a tuning trial's pruner)."""
    return Run(cfg, run_dir, overrides, threads, in_sweep, prune).execute()
