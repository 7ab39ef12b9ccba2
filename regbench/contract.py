"""The Task and model contract, checked where a user's code first shows what it returns: each mistake is one
line (a ConfigError: exit code 2) that names the method and the fix, before or at the first step instead of
a KeyError after a whole epoch or a run that trains silently on the wrong shapes (docs/own-model.md).

- the model's output width against the task's num_classes (after the model is built);
- training_step's loss (a scalar) and statistics ("loss_sum"), at the first step;
- evaluate()'s keys ("loss" and the primary metric), at every evaluation (a dict lookup);
- the model's own normalisation and dropout, which the regimen did not place (after the model is built);
- for a task of the user's own, before training: evaluate("val") and evaluate("test") once on the untrained
  model, and test_outputs()'s shapes (probabilities N x C, labels N), so none of these waits for an epoch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from regbench.errors import ConfigError


def _task_name(task: Any) -> str:
    target = task.cfg.task.get("_target_") if hasattr(task, "cfg") else None
    return f"task._target_={target}" if target else f"task={getattr(task, 'name', type(task).__name__)}"


def is_users_task(task: Any) -> bool:
    return not type(task).__module__.startswith("regbench.")


def check_model_output(task: Any, model: nn.Module) -> None:
    """A classifier's output has num_classes columns: 3 logits for 2 classes trained silently before."""
    classes = task.model_inputs().get("num_classes")
    if classes is None:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            example = task.example_input()
            out = model(*example) if isinstance(example, tuple) else model(example)
    finally:
        model.train(was_training)
    if isinstance(out, Tensor) and out.ndim >= 2 and out.shape[-1] != classes:
        target = task.cfg.model.get("_target_") or task.cfg.model.get("name")
        raise ConfigError(f"model._target_={target} returns {out.shape[-1]} outputs per example, and {_task_name(task)} "
                          f"has num_classes={classes}: its last layer must have num_classes outputs (the factory "
                          "receives num_classes=)")


def check_step(task: Any, loss: Any, stats: Any) -> None:
    """training_step's result at the first step: a scalar loss tensor and a dict with "loss_sum". Shapes and
    keys are host metadata: reading them never waits for the device."""
    where = f"{_task_name(task)}: training_step(model, batch)"
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ConfigError(f"{where} returned a loss of shape {shape}: return the batch's mean loss as a scalar "
                          "tensor (e.g. loss.mean()), with the graph backward runs through")
    if not isinstance(stats, dict) or "loss_sum" not in stats:
        keys = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        raise ConfigError(f"{where} returned statistics {keys} without 'loss_sum': return (loss, "
                          "{'loss_sum': loss.detach() * batch_size, ...}) with device tensors, which the loop adds "
                          "up over the epoch for train_metrics(sums)")


def check_evaluate(task: Any, split: str, result: Any) -> None:
    """evaluate(model, split) returns a dict with "loss" and the primary metric."""
    wanted = ["loss", task.primary_metric]
    missing = [k for k in wanted if not isinstance(result, dict) or k not in result]
    if missing:
        keys = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise ConfigError(f"{_task_name(task)}: evaluate(model, {split!r}) returned {keys}, without "
                          f"{', '.join(repr(k) for k in missing)}: return a dict with 'loss' and the primary metric "
                          f"{task.primary_metric!r} (Task.primary_metric)")


def check_test_outputs(task: Any, outputs: dict[str, Any] | None) -> None:
    """test_outputs()'s classification arrays: probabilities (N, C) and integer labels (N,)."""
    if outputs is None or str(outputs.get("kind", "classification")) != "classification":
        return
    where = f"{_task_name(task)}: test_outputs()"
    probs, labels = np.asarray(outputs.get("probs")), np.asarray(outputs.get("labels"))
    if probs.ndim != 2:
        raise ConfigError(f"{where} gave probs of shape {probs.shape}: give one row of class probabilities per "
                          "example, shape (N, num_classes)")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ConfigError(f"{where} gave labels of shape {labels.shape} for probs of shape {probs.shape}: give one "
                          "class index per example, shape (N,) (labels.squeeze(1) for (N, 1))")


def precheck_users_task(task: Any, model: nn.Module, evaluate) -> None:
    """Before training a task of the user's own: its evaluations and test outputs once, on the untrained model,
    so a missing key or a wrong shape is one line now rather than a crash after the first epoch."""
    for split in ("val", "test"):
        check_evaluate(task, split, evaluate(task, model, split))
    check_test_outputs(task, task.test_outputs())


# What counts as regularization a model may hold of its own: normalisation and dropout of any kind.
OWN_KINDS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
             nn.modules.dropout._DropoutNd, nn.AlphaDropout)


def own_regularization(model: nn.Module, placements: list[Any]) -> dict[str, int]:
    """Normalisation and dropout modules of the model that no placement built: {class name: count}."""
    placed = {id(m) for p in placements for m in p.built}
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, OWN_KINDS) and id(module) not in placed:
            name = type(module).__name__
            counts[name] = counts.get(name, 0) + 1
    return counts


def check_own_regularization(cfg: Any, model: nn.Module, regimen: Any, presets: set[str]) -> dict[str, int]:
    """The model's own norms and dropout (see own_regularization). Under a preset's name (none, bn, ...) the
    run would be labelled with regularization it does not have alone: refused. Under a regularizer.name of
    the user's own they are what the user named, and the record lists them."""
    own = own_regularization(model, regimen.placements)
    if own and regimen.name in presets:
        held = ", ".join(f"{n} {name}" for name, n in own.items())
        target = cfg.model.get("_target_") or cfg.model.get("name")
        raise ConfigError(f"model._target_={target} holds {held} that the regimen did not place, so "
                          f"regularizer={regimen.name} would be recorded for a model that has them anyway: build them "
                          "with placement.norm(i, ...) / placement.dropout(i) so that the regimen decides them, or name "
                          "what the model holds with regularizer.name=... (the record then lists them)")
    return own
