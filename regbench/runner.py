"""The task-agnostic train / evaluate loop and the run record it leaves. It never names a task."""
from __future__ import annotations

import logging
import math
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from regbench import __version__, complexity, distributed, resume
from regbench.data.files import write_atomic
from regbench.gradients import GradientMonitor, Thresholds
from regbench.optim import DecoupledWeightDecay, build_optimizer, build_scheduler
from regbench.regularizers import clip_gradients
from regbench.results import (BEST_CHECKPOINT, CHECKPOINT_DIR, HISTORY_FILE, LAST_CHECKPOINT, METRICS_FILE, flatten,
                              write_csv_atomic, write_json_atomic)
from regbench.seeding import seed_everything
from regbench.tasks import TASKS
from regbench.tasks.base import Task, batch_rows
from regbench.validation import validate

log = logging.getLogger(__name__)

# Check for a non-finite loss every this many steps: often enough to stop a diverged run quickly,
# rarely enough that a GPU is not forced to wait for the host on every step.
NONFINITE_CHECK_EVERY = 25


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from regbench.errors import ConfigError

        raise ConfigError(f"trainer.device={name!r} but no CUDA device is available: use trainer.device=auto or cpu")
    return device


def versions() -> dict[str, Any]:
    import hydra
    import torchvision

    return {"regbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}


def evaluate(task: Task, model: nn.Module, split: str) -> dict[str, Any]:
    """The task's metrics of `model` on `split`, in eval mode and always in fp32, whatever the training
    precision: under bf16 autocast scores land on a grid of 256 values per octave, which ties rankings
    (MovieLens top-K) and argmaxes, so a GPU run's metrics would not be comparable with a CPU run's."""
    model.eval()
    with torch.no_grad(), torch.autocast(task.device.type, enabled=False):
        return task.evaluate(model, split)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class _Loop:
    """What every training step needs, built once per run."""

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    decoupled_wd: DecoupledWeightDecay | None
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: torch.autocast
    generator: torch.Generator
    device: torch.device
    steps_per_epoch: int
    show_progress: bool
    gradients: GradientMonitor
    step: Any  # (batch) -> (loss, stats): the task's training step, or its DDP wrapper
    compiling: bool = False  # the next step compiles the model (trainer.compile): time it apart


@dataclass
class _Progress:
    """Where the epoch loop stands: what a last-epoch checkpoint carries besides the weights."""

    best_value: float | None
    best_state: dict[str, torch.Tensor] | None
    bad_epochs: int
    epoch: int        # the last finished epoch
    stopped: bool     # early stopping ended the loop after that epoch


class RunInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run between two steps; the last finished epoch's checkpoint stays."""

    def __init__(self, signum: int | None, epoch: int, run_dir: Path, handoff: Any = None) -> None:
        name = signal.Signals(signum).name if signum else "a signal"
        handoff = handoff if signum == signal.SIGUSR2 else None
        again = ("the scheduler requeues the job, which resumes from" if handoff else
                 "run the same command again to resume from")
        super().__init__(f"stopped by {name} during epoch {epoch}; {again} "
                         f"{run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT} (if an epoch had finished)")
        self.signum = signum or signal.SIGTERM
        # Called with (signum, None) after the record is written: submitit then checkpoints and requeues.
        self.handoff = handoff


@dataclass
class _EpochResult:
    metrics: dict[str, float]        # the task's train metrics for the epoch ("loss", ...)
    seconds: float
    diverged: bool
    interrupted: bool
    gradient_stats: dict[str, float]  # GradientMonitor's summary (norms before clipping) and the clip rate


class Run:
    """One training run: build everything from the config, train, evaluate, write the record."""

    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: dict[str, str] | None = None,
                 threads: int | None = None) -> None:
        self.cfg = cfg
        self.threads = threads or cfg.trainer.threads or None  # None: PyTorch's default
        self.run_dir = Path(run_dir)
        self.overrides = overrides or {}
        self.started = time.time()
        self.record: dict[str, Any] = {
            "status": "running", "task": cfg.task.name, "model": cfg.model.name,
            "regularizer": cfg.regularizer.name, "optimizer": cfg.optimizer.name, "schedule": cfg.schedule.name,
            "seed": int(cfg.seed), "primary_metric": None, "higher_is_better": None, "best_epoch": None,
            "epochs_run": 0, "train": {}, "val": {}, "test": {}, "gap": None, "params": None,
            "params_trainable": None, "flops_per_example": None, "flops_counting": complexity.FLOPS_COUNTING,
            "latency_s_per_batch": None, "latency_batch_size": None, "latency_repeats": None,
            "model_size_bytes": None, "checkpoint_bytes": None, "gradients": {},
            "train_time_s": 0.0, "eval_time_s": 0.0, "wall_time_s": None, "peak_memory_bytes": None,
            "peak_memory_kind": None, "device": None, "threads": None, "precision": None, "data": {},
            "versions": versions(),
            "git_commit": git_commit(), "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished_at": None,
            "error": None, "compile_time_s": None, "run_id": None, "distributed": None, "resumed_from": None,
            "reused_from": None, "overrides": self.overrides,
        }
        self.history: list[dict[str, Any]] = []
        self.stop_signal: int | None = None  # set by SIGTERM/SIGINT/SIGUSR2; the loop stops at the next step
        self.handoff: Any = None  # a scheduler wrapper's SIGUSR2 handler, called once the record is written
        self.earlier: resume.Earlier | None = None
        self.ranks = distributed.from_environment()  # several under torchrun; only rank 0 writes files
        self.device: torch.device | None = None

    # -- the record ------------------------------------------------------------------------------
    def _write_record(self) -> None:
        if not self.ranks.is_main:
            return
        self.record["wall_time_s"] = round(time.time() - self.started, 3)
        write_json_atomic(self.run_dir / METRICS_FILE, self.record)

    def _write_history(self) -> None:
        import pandas as pd

        if not self.ranks.is_main:
            return
        write_csv_atomic(self.run_dir / HISTORY_FILE, pd.DataFrame(self.history))

    # -- the run -------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Train (or reuse a finished earlier attempt, or resume an unfinished one) and write the record.

        Raises RunInterrupted after SIGTERM/SIGINT and re-raises any other error, always after the
        record (status `interrupted` or `failed`) is on disk."""
        if self.ranks.active:
            self.device = distributed.start(self.ranks, resolve_device(self.cfg.trainer.device))
            self.record["distributed"] = {"world_size": self.ranks.world, "backend": distributed.backend()}
        try:
            return self._execute()
        finally:
            distributed.stop()

    def _execute(self) -> dict[str, Any]:
        main = self.ranks.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        rid = self.record["run_id"] = resume.run_id(self.cfg, self.ranks.world)
        if self.cfg.trainer.resume:
            if main:
                self.earlier = resume.find_earlier(self.cfg, rid, self.run_dir)
            self.earlier = distributed.broadcast(self.earlier, self.ranks)
            if self.earlier is not None and self.earlier.finished:
                return self._reuse(self.earlier) if main else dict(self.earlier.record)
        if main:
            resume.remember(self.cfg, rid, self.run_dir)
        self._write_record()  # status "running": a killed run is visible to compare and findable
        try:
            with self._stop_on_signals():
                validate(self.cfg)
                self._train()
        except BaseException as err:  # record every way a run can end, then let the caller decide
            interrupted = isinstance(err, (KeyboardInterrupt, RunInterrupted))
            self.record["status"] = "interrupted" if interrupted else "failed"
            self.record["error"] = str(err) if isinstance(err, RunInterrupted) else f"{type(err).__name__}: {err}"
            if not interrupted:
                self.record["traceback"] = traceback.format_exc(limit=20)
            self._finish()
            raise
        self._finish()
        return self.record

    def _reuse(self, earlier: resume.Earlier) -> dict[str, Any]:
        """The same configuration finished before: take its record instead of training again."""
        record = dict(earlier.record)
        log.info("run %s already %s in %s: reusing its record (trainer.resume=false trains it again)",
                 record["run_id"], record["status"], earlier.run_dir)
        if earlier.run_dir.resolve() != self.run_dir.resolve():
            record.update(reused_from=str(earlier.run_dir), overrides=self.overrides)
            history = earlier.run_dir / HISTORY_FILE
            if history.is_file():
                write_atomic(self.run_dir / HISTORY_FILE, lambda fh: fh.write(history.read_bytes()))
            write_json_atomic(self.run_dir / METRICS_FILE, record)
        return record

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGTERM (`kill`, `scancel`) and SIGINT (Ctrl-C) ask the loop to stop at the next step; a second
        Ctrl-C stops at once. Under a job-scheduler wrapper that owns a signal (submitit: SIGUSR2 means
        "time limit or pre-emption: checkpoint and requeue", SIGTERM is ignored) the run stops on SIGUSR2
        too, writes its record, and RunInterrupted.handoff passes the signal on so the wrapper requeues it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum
            log.warning("%s received: stopping after this step (the last finished epoch's checkpoint stays)",
                        signal.Signals(signum).name)

        owned = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
        ours = [signal.SIGINT]
        if not callable(owned[signal.SIGTERM]):   # submitit installs a handler that ignores SIGTERM: keep it
            ours.append(signal.SIGTERM)
        if callable(owned[signal.SIGUSR2]):       # submitit's checkpoint-and-requeue
            ours.append(signal.SIGUSR2)
            self.handoff = owned[signal.SIGUSR2]
        previous = {sig: signal.signal(sig, ask_to_stop) for sig in ours}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _finish(self) -> None:
        self.record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.history:
            self._write_history()
        self._write_record()
        if self.record["status"] in resume.FINAL_STATUSES and self.ranks.is_main:  # never resumed again
            (self.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).unlink(missing_ok=True)

    def _train(self) -> None:
        cfg, tcfg = self.cfg, self.cfg.trainer
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.record["threads"] = torch.get_num_threads()
        device = self.device or resolve_device(tcfg.device)
        use_bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and device.type == "cuda")
        self.record.update(device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                           precision="bf16" if use_bf16 else "fp32")
        complexity.reset_peak_memory(device)
        generator = seed_everything(cfg.seed, device)

        task = TASKS[cfg.task.name](cfg, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = task.fixed_input_shapes
        self.record["primary_metric"] = metric = task.primary_metric
        self.record["higher_is_better"] = task.higher_is_better
        self.record["data"] = task.data_summary()
        torch.manual_seed(cfg.seed)  # model init does not depend on how much randomness data loading used
        model = task.build_model().to(device)
        if self.ranks.active:
            self.record["distributed"]["sync_batchnorm_layers"] = distributed.sync_batchnorm(model)
            torch.manual_seed(cfg.seed + self.ranks.rank)  # dropout masks differ per rank; DDP copies rank 0's weights
        self.record["params"] = complexity.count_parameters(model)
        self.record["params_trainable"] = complexity.count_parameters(model, trainable_only=True)
        self.record["model_size_bytes"] = complexity.state_size_bytes(model)
        self.record["flops_per_example"] = complexity.forward_flops(model, task.example_input())

        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
        if any(p.requires_grad for p in model.parameters()):
            best_state = self._fit(task, model, device, generator, autocast)
        else:  # nothing to train (the popularity baseline): score it as it is
            best_state = self._score_untrained(task, model)
        if not self.ranks.is_main:  # rank 0 tests, measures and writes the record
            return
        if best_state is not None:
            model.load_state_dict(best_state)
            t1 = time.perf_counter()
            self.record["test"] = evaluate(task, model, "test")
            self.record["train"] = evaluate(task, model, "train")
            self.record["eval_time_s"] = round(self.record["eval_time_s"] + time.perf_counter() - t1, 3)
            self.record["gap"] = self.record["train"][metric] - self.record["test"][metric]
            task.write_outputs(self.run_dir)
            self._measure_latency(task, model, device, autocast)
        checkpoint = self.run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT
        if checkpoint.exists():
            self.record["checkpoint_bytes"] = checkpoint.stat().st_size
        self._summarise_gradients()
        if self.record["status"] == "running":
            self.record["status"] = "completed"
        self.record["peak_memory_bytes"], self.record["peak_memory_kind"] = complexity.peak_memory(device)

    def _measure_latency(self, task: Task, model: nn.Module, device: torch.device, autocast: torch.autocast) -> None:
        lcfg = self.cfg.trainer.latency
        size = int(lcfg.batch_size or self.cfg.trainer.eval_batch_size)
        batch = complexity.repeat_batch(task.example_input(), size)
        seconds, repeats = complexity.inference_latency(model, batch, device, autocast, warmup=int(lcfg.warmup),
                                                        repeats=int(lcfg.repeats), max_seconds=float(lcfg.max_seconds))
        self.record.update(latency_s_per_batch=None if seconds is None else round(seconds, 6),
                           latency_batch_size=size, latency_repeats=repeats)

    def _summarise_gradients(self) -> None:
        """Whole-run gradient facts for metrics.json (per-epoch detail is in history.csv)."""
        rows = [r for r in self.history if "grad_norm_max" in r]
        if not rows:
            return
        self.record["gradients"] = {
            "norm_max": max(r["grad_norm_max"] for r in rows),
            "clip_rate": sum(r["clip_rate"] for r in rows) / len(rows),
            "vanishing_epochs": sum(int(r["grad_vanishing"]) for r in rows),
            "exploding_epochs": sum(int(r["grad_exploding"]) for r in rows),
        }

    def _score_untrained(self, task: Task, model: nn.Module) -> dict[str, torch.Tensor]:
        t1 = time.perf_counter()
        self.record["val"] = evaluate(task, model, "val")
        self.record["eval_time_s"] = round(self.record["eval_time_s"] + time.perf_counter() - t1, 3)
        self.record["best_epoch"] = 0
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def build_loop(self, task: Task, model: nn.Module, device: torch.device, generator: torch.Generator,
                   autocast: torch.autocast) -> _Loop:
        """Optimizer, schedule, gradient monitor and the training step, as train_epoch uses them."""
        cfg, tcfg = self.cfg, self.cfg.trainer
        optimizer, decoupled_wd = build_optimizer(cfg, model)
        steps_per_epoch = task.num_train_batches()
        gcfg = tcfg.gradients
        monitor = GradientMonitor(model, device, Thresholds(float(gcfg.vanishing_below), float(gcfg.exploding_above)),
                                  per_layer=bool(gcfg.per_layer))
        def step(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return task.training_step(model, batch)

        compiling = bool(tcfg.compile) and not self.ranks.active
        if tcfg.compile and self.ranks.active:
            log.warning("trainer.compile is not applied under torchrun: the step runs eagerly")
        if compiling:  # the whole step (forward and loss), as tasks call model methods besides forward;
            step = torch.compile(step)  # evaluation stays eager, on the same parameters
        return _Loop(task=task, model=model, optimizer=optimizer, decoupled_wd=decoupled_wd,
                     scheduler=build_scheduler(cfg, optimizer, steps_per_epoch, steps_per_epoch * tcfg.max_epochs),
                     autocast=autocast, generator=generator, device=device, steps_per_epoch=steps_per_epoch,
                     show_progress=tcfg.progress and sys.stderr.isatty() and self.ranks.is_main, gradients=monitor,
                     step=distributed.wrap(task, model, device) if self.ranks.active else step,
                     compiling=compiling)

    def _fit(self, task: Task, model: nn.Module, device: torch.device, generator: torch.Generator,
             autocast: torch.autocast) -> dict[str, torch.Tensor] | None:
        """The epoch loop with validation, best-state tracking and early stopping; returns the best state."""
        tcfg = self.cfg.trainer
        metric = task.primary_metric
        loop = self.build_loop(task, model, device, generator, autocast)
        better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)

        progress = _Progress(best_value=None, best_state=None, bad_epochs=0, epoch=0, stopped=False)
        if self.earlier is not None and self.earlier.checkpoint is not None:
            progress = self._resume_from(self.earlier.checkpoint, loop)
        best_value, best_state, bad_epochs = progress.best_value, progress.best_state, progress.bad_epochs
        for epoch in range(progress.epoch + 1, 0 if progress.stopped else tcfg.max_epochs + 1):
            lr = loop.optimizer.param_groups[0]["lr"]
            epoch_result = self.train_epoch(loop, epoch)
            if epoch_result.interrupted:
                raise RunInterrupted(self.stop_signal, epoch, self.run_dir, self.handoff)
            row: dict[str, Any] = {"epoch": epoch}
            row.update({f"train_{k}": v for k, v in epoch_result.metrics.items()})
            self.record["train_time_s"] = round(self.record["train_time_s"] + epoch_result.seconds, 3)
            self.record["epochs_run"] = epoch
            if epoch_result.diverged:
                row.update(lr=lr, train_time_s=epoch_result.seconds, eval_time_s=0.0, **epoch_result.gradient_stats)
                self.history.append(row)
                self.record["status"] = "diverged"
                log.warning("epoch %d: the training loss is not finite: the run diverged", epoch)
                break

            t1 = time.perf_counter()
            model.eval()
            val = evaluate(task, model, "val") if self.ranks.is_main else None
            val = distributed.broadcast(val, self.ranks)  # every rank takes the same best/stop decisions
            eval_time = time.perf_counter() - t1
            self.record["eval_time_s"] = round(self.record["eval_time_s"] + eval_time, 3)
            row.update(flatten(val, "val_"))
            row.update(lr=lr, train_time_s=round(epoch_result.seconds, 4), eval_time_s=round(eval_time, 4),
                       **epoch_result.gradient_stats)
            self.history.append(row)
            self._write_history()
            log.info("epoch %d/%d  train loss %.4f | val loss %.4f %s %.4f | %.1fs", epoch, tcfg.max_epochs,
                     epoch_result.metrics["loss"], val["loss"], metric, val[metric], epoch_result.seconds)

            if best_value is None or better(val[metric], best_value):
                best_value, bad_epochs = val[metric], 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                self.record["best_epoch"] = epoch
                self.record["val"] = val
                if tcfg.save_checkpoint:
                    self._save_checkpoint(best_state, epoch, val)
            else:
                bad_epochs += 1
            stop = bool(tcfg.early_stopping.patience and bad_epochs >= tcfg.early_stopping.patience)
            every = tcfg.checkpoint_every
            if every and (epoch % every == 0 or stop):
                self._save_last(loop, _Progress(best_value, best_state, bad_epochs, epoch, stop))
            if stop:
                log.info("early stopping: no better val %s for %d epochs", metric, bad_epochs)
                break

        return best_state

    # Record fields a resumed run carries over from its checkpoint.
    _CARRIED = ("best_epoch", "val", "epochs_run", "train_time_s", "eval_time_s")

    def _save_last(self, loop: _Loop, progress: _Progress) -> None:
        """Everything needed to continue exactly after this epoch, written atomically."""
        if not self.ranks.is_main:
            return
        state = {"format": resume.CHECKPOINT_FORMAT, "run_id": self.record["run_id"], "epoch": progress.epoch,
                 "stopped": progress.stopped, "model": loop.model.state_dict(),
                 "optimizer": loop.optimizer.state_dict(),
                 "scheduler": loop.scheduler.state_dict(), "scaler": None,  # bf16 autocast needs no loss scaler
                 "best_value": progress.best_value, "best_state": progress.best_state,
                 "bad_epochs": progress.bad_epochs, "rng": resume.rng_state(loop.generator),
                 "history": self.history, "record": {k: self.record[k] for k in self._CARRIED},
                 "config": OmegaConf.to_container(self.cfg, resolve=True)}
        write_atomic(self.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, lambda fh: torch.save(state, fh))

    def _resume_from(self, path: Path, loop: _Loop) -> _Progress:
        state = resume.load_checkpoint(path, self.record["run_id"])
        loop.model.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        resume.restore_rng(state["rng"], loop.generator)
        self.history = list(state["history"])
        self.record.update(state["record"])
        self.record["resumed_from"] = f"{path} (after epoch {state['epoch']})"
        log.info("resuming run %s after epoch %d from %s", self.record["run_id"], state["epoch"], path)
        best_state = state["best_state"]
        if best_state is not None and self.cfg.trainer.save_checkpoint and path.parent != self.run_dir / CHECKPOINT_DIR:
            self._save_checkpoint(best_state, state["record"]["best_epoch"], state["record"]["val"])
        return _Progress(state["best_value"], best_state, state["bad_epochs"], state["epoch"], state["stopped"])

    def train_epoch(self, loop: _Loop, epoch: int) -> _EpochResult:
        """One pass over the training batches. Statistics stay on the device until the epoch ends."""
        cfg = self.cfg
        model, optimizer = loop.model, loop.optimizer
        params = loop.gradients.params
        l1_params = [p for p in params if p.ndim > 1]  # weights, not biases or norm scales
        clip_mode, clip_max = cfg.regularizer.grad_clip.mode, float(cfg.regularizer.grad_clip.max)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        loop.gradients.start_epoch(loop.steps_per_epoch)
        clipped = torch.zeros((), device=loop.device)
        diverged = False
        t0 = time.perf_counter()
        batches = tqdm(loop.task.train_batches(loop.generator), total=loop.steps_per_epoch,
                       disable=not loop.show_progress, desc=f"epoch {epoch}/{cfg.trainer.max_epochs}", leave=False,
                       dynamic_ncols=True)
        ranks = self.ranks
        step = -1
        for step, batch in enumerate(batches):
            # Ranks must leave the loop at the same step, so under torchrun they agree every few steps.
            stop = (self.stop_signal is not None if not ranks.active else
                    step % NONFINITE_CHECK_EVERY == 0 and distributed.any_rank(self.stop_signal is not None,
                                                                               ranks, loop.device))
            if stop:  # the epoch is abandoned; the last epoch's checkpoint stays
                batches.close()
                return _EpochResult(metrics={}, seconds=time.perf_counter() - t0, diverged=False, interrupted=True,
                                    gradient_stats={})
            scale = 1.0
            if ranks.active:
                if batch_rows(batch) < ranks.world:
                    continue  # a last batch smaller than the number of ranks would leave a rank without data
                whole = loop.task.loss_weight(batch)
                batch = distributed.share(batch, ranks)
                scale = loop.task.loss_weight(batch) * ranks.world / whole
            compile_started = time.perf_counter() if loop.compiling else None
            with loop.autocast:
                loss, stats = loop.step(batch)
            if ranks.active:
                loss = loss * scale  # DDP averages gradients over ranks: this makes it the whole batch's mean
            objective = loss
            if cfg.penalty.l1 > 0:
                objective = loss + cfg.penalty.l1 * sum(p.abs().sum() for p in l1_params)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            fired = clip_gradients(params, clip_mode, clip_max, loop.gradients.observe())
            clipped += fired
            if loop.decoupled_wd is not None:
                loop.decoupled_wd.apply()
            optimizer.step()
            loop.scheduler.step()
            if compile_started is not None:  # torch.compile compiled forward and backward in this step
                if loop.device.type == "cuda":
                    torch.cuda.synchronize(loop.device)
                compile_seconds = time.perf_counter() - compile_started
                self.record["compile_time_s"] = round(compile_seconds, 3)
                t0 += compile_seconds
                loop.compiling = False
            for key, value in stats.items():
                sums[key] = sums[key] + value if key in sums else value.detach().clone()
            if (step + 1) % NONFINITE_CHECK_EVERY == 0 and distributed.any_rank(
                    not torch.isfinite(sums["loss_sum"]), ranks, loop.device):
                diverged = True
                break
        if loop.device.type == "cuda":
            torch.cuda.synchronize(loop.device)
        seconds = time.perf_counter() - t0
        steps_done = step + 1
        sums = distributed.sum_over_ranks(sums, ranks)
        metrics = loop.task.train_metrics({k: float(v) for k, v in sums.items()})
        gradient_stats = loop.gradients.epoch_summary()
        gradient_stats["clip_rate"] = float(clipped) / max(steps_done, 1)
        return _EpochResult(metrics=metrics, seconds=seconds, diverged=diverged or not math.isfinite(metrics["loss"]),
                            interrupted=False, gradient_stats=gradient_stats)

    def _save_checkpoint(self, state: dict[str, torch.Tensor], epoch: int, val: dict[str, float]) -> None:
        if not self.ranks.is_main:
            return
        checkpoint = {"model": state, "epoch": epoch, "val": val,
                      "config": OmegaConf.to_container(self.cfg, resolve=True)}
        write_atomic(self.run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT, lambda fh: torch.save(checkpoint, fh))


def run(cfg: DictConfig, run_dir: Path, overrides: dict[str, str] | None = None,
        threads: int | None = None) -> dict[str, Any]:
    """Train one configuration and write its record into run_dir; return metrics.json's content.
    `threads` (torch CPU threads) overrides trainer.threads; the CLI derives it from the launcher."""
    return Run(cfg, run_dir, overrides, threads).execute()

