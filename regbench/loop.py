"""The training loop, usable without a run directory: `prepare` builds what every step needs,
`train_epoch` runs one pass over the training batches, `fit` runs epochs with validation, best-state
tracking and early stopping, and `evaluate` scores a model in fp32. It never names a task.

Nothing in a step makes the host wait for the device: statistics stay on the device and are read once
per epoch (plus one value every NONFINITE_CHECK_EVERY steps for the non-finite check)."""
from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from regbench import contract, distributed
from regbench.errors import ConfigError
from regbench.gradients import GradientMonitor, Thresholds
from regbench.hooks import Hooks
from regbench.optim import DecoupledWeightDecay, build_optimizer, build_scheduler
from regbench.record import flatten
from regbench.regimen import Regimen
from regbench.seeding import seed_everything
from regbench.tasks import build_task
from regbench.tasks.base import Task, batch_rows

log = logging.getLogger("regbench.runner")

# Check for a non-finite loss every this many steps: often enough to stop a diverged run quickly,
# rarely enough that a GPU is not forced to wait for the host on every step.
NONFINITE_CHECK_EVERY = 25


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but no CUDA device is available: use trainer.device=auto or cpu")
    return device


def uses_bf16(precision: str, device: torch.device) -> bool:
    """trainer.precision: bf16 autocast for `bf16`, and for `auto` on CUDA; fp32 otherwise."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def evaluate(task: Task, model: nn.Module, split: str) -> dict[str, Any]:
    """The task's metrics of `model` on `split`, in eval mode and always in fp32, whatever the training
    precision: under bf16 autocast scores land on a grid of 256 values per octave, which ties rankings
    (MovieLens top-K) and argmaxes, so a GPU run's metrics would not be comparable with a CPU run's."""
    model.eval()
    with torch.no_grad(), torch.autocast(task.device.type, enabled=False):
        result = task.evaluate(model, split)
    contract.check_evaluate(task, split, result)  # "loss" and the primary metric, named if missing
    return result


def build(cfg: DictConfig, device: torch.device, regimen: Regimen | None = None
          ) -> tuple[Task, Regimen, nn.Module, torch.Generator]:
    """The task (its data on `device`), the regimen, the model built for both, and the seeded generator
    that draws data order, augmentation and negatives: what a run trains, from a validated config.
    `regimen`: the one validation resolved (else resolved here); the task and the model get this object."""
    generator = seed_everything(cfg.seed, device)
    regimen = regimen if regimen is not None else Regimen.from_config(cfg)
    task = build_task(cfg, device)
    task.regimen = regimen  # one Regimen per run: the task's parts (label smoothing) read this one
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = task.fixed_input_shapes
    torch.manual_seed(cfg.seed)  # model init does not depend on how much randomness data loading used
    model = task.build_model(regimen).to(device)
    regimen.check_placed()
    return task, regimen, model, generator


@dataclass
class Training:
    """What every training step needs, built once per run by `prepare`."""

    task: Task
    model: nn.Module
    regimen: Regimen
    optimizer: torch.optim.Optimizer
    decoupled_wd: DecoupledWeightDecay | None
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: torch.autocast
    generator: torch.Generator
    device: torch.device
    steps_per_epoch: int
    max_epochs: int
    gradients: GradientMonitor
    step: Any  # (batch) -> (loss, stats): the task's training step, compiled, or its DDP wrapper
    ranks: distributed.Ranks = distributed.SINGLE
    show_progress: bool = False
    compiling: bool = False              # the next step compiles (trainer.compile): timed apart
    compile_time_s: float | None = None
    hooks: Hooks = field(default_factory=lambda: Hooks([], []))  # the regularizers' parts in the step

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation, test and the best checkpoint use: the EMA's (or an extra's) when there is one."""
        return self.hooks.eval_model(self.model)


def prepare(cfg: DictConfig, task: Task, model: nn.Module, regimen: Regimen, generator: torch.Generator, *,
            ranks: distributed.Ranks = distributed.SINGLE, extras: list[Any] | None = None,
            optimizer: tuple[torch.optim.Optimizer, DecoupledWeightDecay | None] | None = None) -> Training:
    """Optimizer, schedule, gradient monitor, the regularizer hooks and the training step for `model` on
    `task`. `extras` (the regularizer.extra objects) and `optimizer` (build_optimizer's pair): when already
    built, else built here."""
    tcfg = cfg.trainer
    device = task.device
    optimizer, decoupled_wd = optimizer if optimizer is not None else build_optimizer(cfg, model, regimen)
    steps_per_epoch = task.num_train_batches()
    gcfg = tcfg.gradients
    monitor = GradientMonitor(model, device, Thresholds(float(gcfg.vanishing_below), float(gcfg.exploding_above)),
                              per_layer=bool(gcfg.per_layer))

    def step(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return task.training_step(model, batch)

    compiling = bool(tcfg.compile) and not ranks.active
    if tcfg.compile and ranks.active:
        log.warning("trainer.compile is not applied under torchrun: the step runs eagerly")
    if compiling:  # the whole step (forward and loss), as tasks call model methods besides forward;
        step = torch.compile(step)  # evaluation stays eager, on the same parameters
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(tcfg.precision, device))
    hooks = Hooks.build(cfg, regimen, monitor.params, monitor.last_norm, device, extras)
    hooks.start(model, task)
    return Training(task=task, model=model, regimen=regimen, optimizer=optimizer, decoupled_wd=decoupled_wd,
                    scheduler=build_scheduler(cfg, optimizer, steps_per_epoch, steps_per_epoch * tcfg.max_epochs),
                    autocast=autocast, generator=generator, device=device, steps_per_epoch=steps_per_epoch,
                    max_epochs=int(tcfg.max_epochs), gradients=monitor,
                    step=distributed.wrap(task, model, device) if ranks.active else step, ranks=ranks,
                    show_progress=bool(tcfg.progress) and sys.stderr.isatty() and ranks.is_main,
                    compiling=compiling, hooks=hooks)


@dataclass
class EpochResult:
    metrics: dict[str, float]         # the task's train metrics for the epoch ("loss", ...)
    seconds: float
    diverged: bool
    interrupted: bool
    gradient_stats: dict[str, float]  # GradientMonitor's summary (norms before clipping) and the clip rate


def train_epoch(t: Training, epoch: int, should_stop: Callable[[], bool] = lambda: False) -> EpochResult:
    """One pass over the training batches. Statistics stay on the device until the epoch ends.
    `should_stop` is asked before every step (a signal arrived): the epoch is then abandoned."""
    model, optimizer, ranks, hooks = t.model, t.optimizer, t.ranks, t.hooks
    model.train()
    sums: dict[str, torch.Tensor] = {}
    t.gradients.start_epoch(t.steps_per_epoch)
    hooks.start_epoch()
    diverged = False
    t0 = time.perf_counter()
    batches = tqdm(t.task.train_batches(t.generator), total=t.steps_per_epoch, disable=not t.show_progress,
                   desc=f"epoch {epoch}/{t.max_epochs}", leave=False, dynamic_ncols=True)
    step = -1
    for step, batch in enumerate(batches):
        batch = hooks.transform_batch(batch, t.generator)  # before torchrun shares it: mixed pairs stay together
        # Ranks must leave the loop at the same step, so under torchrun they agree every few steps.
        stop = (should_stop() if not ranks.active else
                step % NONFINITE_CHECK_EVERY == 0 and distributed.any_rank(should_stop(), ranks, t.device))
        if stop:  # the epoch is abandoned; the last epoch's checkpoint stays
            batches.close()
            return EpochResult(metrics={}, seconds=time.perf_counter() - t0, diverged=False, interrupted=True,
                               gradient_stats={})
        scale = 1.0
        if ranks.active:
            if batch_rows(batch) < ranks.world:
                continue  # a last batch smaller than the number of ranks would leave a rank without data
            whole = t.task.loss_weight(batch)
            batch = distributed.share(batch, ranks)
            scale = t.task.loss_weight(batch) * ranks.world / whole
        compile_started = time.perf_counter() if t.compiling else None
        with t.autocast:
            loss, stats = t.step(batch)
        if step == 0:
            contract.check_step(t.task, loss, stats)  # a scalar loss and "loss_sum": shapes and keys, no sync
        if ranks.active:
            loss = loss * scale  # DDP averages gradients over ranks: this makes it the whole batch's mean
        objective = hooks.objective(loss, model)  # plus L1 and the extras' penalties
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        t.gradients.observe()  # the gradients as backward left them, before any hook changes them
        hooks.after_backward(model)  # clipping, the extras'
        if t.decoupled_wd is not None:
            t.decoupled_wd.apply()
        optimizer.step()
        hooks.after_step(model)  # the EMA, the extras'
        t.scheduler.step()
        if compile_started is not None:  # torch.compile compiled forward and backward in this step
            if t.device.type == "cuda":
                torch.cuda.synchronize(t.device)
            compile_seconds = time.perf_counter() - compile_started
            t.compile_time_s = round(compile_seconds, 3)
            t0 += compile_seconds
            t.compiling = False
        for key, value in stats.items():
            sums[key] = sums[key] + value if key in sums else value.detach().clone()
        if (step + 1) % NONFINITE_CHECK_EVERY == 0 and distributed.any_rank(
                not torch.isfinite(sums["loss_sum"]), ranks, t.device):
            diverged = True
            break
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    seconds = time.perf_counter() - t0
    steps_done = step + 1
    sums = distributed.sum_over_ranks(sums, ranks)
    metrics = t.task.train_metrics({k: float(v) for k, v in sums.items()})
    gradient_stats = t.gradients.epoch_summary()
    clipped = hooks.clip_steps()
    gradient_stats["clip_rate"] = (float(clipped) if clipped is not None else 0.0) / max(steps_done, 1)
    return EpochResult(metrics=metrics, seconds=seconds, diverged=diverged or not math.isfinite(metrics["loss"]),
                       interrupted=False, gradient_stats=gradient_stats)


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without a better validation metric (0: never stop early)."""

    patience: int
    higher_is_better: bool = True
    best: float | None = None
    bad_epochs: int = 0

    def update(self, value: float) -> bool:
        """Record this epoch's value; True when it is the best so far."""
        if self.best is None or (value > self.best if self.higher_is_better else value < self.best):
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return bool(self.patience and self.bad_epochs >= self.patience)


@dataclass
class FitState:
    """Where the epoch loop stands: what a last-epoch checkpoint carries besides the weights, optimizer,
    schedule and random states, and what the run record takes from training."""

    early: EarlyStopping
    epoch: int = 0                     # the last finished epoch
    stopped: bool = False              # early stopping ended the loop after that epoch
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int | None = None
    val: dict[str, Any] = field(default_factory=dict)   # the validation metrics at the best epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    diverged: bool = False
    interrupted_in: int | None = None  # the epoch a stop request abandoned


class FitHooks:
    """What `fit` tells the run around it; every method may be left as it is."""

    def should_stop(self) -> bool:
        """Asked before every step: True abandons the epoch (a signal arrived)."""
        return False

    def on_best(self, state: FitState) -> None:
        """A new best validation value (state.best_state is a CPU copy of the weights)."""

    def on_epoch_end(self, state: FitState) -> None:
        """After an epoch's history row is written; state.stopped says whether early stopping ends it."""


def fit(t: Training, state: FitState, hooks: FitHooks | None = None) -> FitState:
    """Epochs state.epoch+1 .. max_epochs with validation after each, best-state tracking and early
    stopping. Only rank 0 evaluates; every rank takes its decisions."""
    hooks = hooks or FitHooks()
    task, model = t.task, t.model
    metric = task.primary_metric
    for epoch in range(state.epoch + 1, 0 if state.stopped else t.max_epochs + 1):
        lr = t.optimizer.param_groups[0]["lr"]
        result = train_epoch(t, epoch, hooks.should_stop)
        if result.interrupted:
            state.interrupted_in = epoch
            return state
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in result.metrics.items()})
        state.train_time_s = round(state.train_time_s + result.seconds, 3)
        state.epoch = epoch
        if result.diverged:
            row.update(lr=lr, train_time_s=result.seconds, eval_time_s=0.0, **result.gradient_stats)
            state.history.append(row)
            state.diverged = True
            log.warning("epoch %d: the training loss is not finite: the run diverged", epoch)
            return state

        t1 = time.perf_counter()
        model.eval()
        val = evaluate(task, t.eval_model, "val") if t.ranks.is_main else None
        val = distributed.broadcast(val, t.ranks)  # every rank takes the same best/stop decisions
        eval_time = time.perf_counter() - t1
        state.eval_time_s = round(state.eval_time_s + eval_time, 3)
        row.update(flatten(val, "val_"))
        row.update(lr=lr, train_time_s=round(result.seconds, 4), eval_time_s=round(eval_time, 4),
                   **result.gradient_stats)
        state.history.append(row)
        log.info("epoch %d/%d  train loss %.4f | val loss %.4f %s %.4f | %.1fs", epoch, t.max_epochs,
                 result.metrics["loss"], val["loss"], metric, val[metric], result.seconds)

        if state.early.update(val[metric]):
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in t.eval_model.state_dict().items()}
            state.best_epoch, state.val = epoch, val
            hooks.on_best(state)
        state.stopped = state.early.should_stop
        hooks.on_epoch_end(state)
        if state.stopped:
            if state.early.should_stop:  # else a hook stopped it (a tuning trial's pruner) and says why
                log.info("early stopping: no better val %s for %d epochs", metric, state.early.bad_epochs)
            break
    return state
