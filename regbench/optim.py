"""Optimizer and LR-schedule factories: one place maps a config name (or a user's `optimizer._target_`) to a
constructor."""
from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from regbench.errors import ConfigError
from regbench.regimen import Regimen
from regbench.targets import locate

log = logging.getLogger(__name__)

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": lambda params, **kw: torch.optim.SGD(params, nesterov=True, **kw),
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}

SCHEDULES = ("constant", "step", "cosine")


class DecoupledWeightDecay:
    """w <- w - lr * wd * w before each step, for any optimizer (the AdamW form of weight decay).

    Written by hand because torch offers it only inside AdamW (and Adam's flag); applying it here
    lets every optimizer be compared with coupled and decoupled decay alike."""

    def __init__(self, optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
        self.optimizer = optimizer
        self.weight_decay = weight_decay

    @torch.no_grad()
    def apply(self) -> None:
        for group in self.optimizer.param_groups:
            if not group.get("decay", True):  # optimizer.decay_norm_and_bias=false: norms and biases
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_mul_(params, 1.0 - group["lr"] * self.weight_decay)


def optimizer_target(cfg: DictConfig) -> str | None:
    """optimizer._target_ (a user's optimizer class), or None for the built-in names."""
    target = cfg.optimizer.get("_target_") if not OmegaConf.is_missing(cfg.optimizer, "_target_") else "???"
    if target == "???":
        raise ConfigError("optimizer=custom needs optimizer._target_=PACKAGE.MODULE.CLASS, e.g. "
                          "optimizer._target_=torch.optim.Adadelta (docs/own-model.md#your-own-optimizer)")
    return str(target) if target else None


def optimizer_class(cfg: DictConfig) -> Callable[..., torch.optim.Optimizer] | None:
    """The class optimizer._target_ names, imported and checked to be callable; None without a target."""
    target = optimizer_target(cfg)
    if target is None:
        return None
    found = locate("optimizer._target_", target)
    if not callable(found):
        raise ConfigError(f"optimizer._target_={target} is a {type(found).__name__}, not an optimizer class")
    return found


def optimizer_name(cfg: DictConfig) -> str:
    """The optimizer's name in records and compare: optimizer.name, or with a _target_ and no name of the
    user's own (a preset's, `custom` or null), the class's name lower-cased (torch.optim.Adadelta: adadelta)."""
    target, name = optimizer_target(cfg), cfg.optimizer.get("name")
    if target is not None and (name is None or name == "custom" or name in OPTIMIZERS):
        return target.rsplit(".", 1)[-1].lower()
    return str(name)


def build_optimizer(cfg: DictConfig, model: nn.Module, regimen: Regimen
                    ) -> tuple[torch.optim.Optimizer, DecoupledWeightDecay | None]:
    """The optimizer (cfg.optimizer: name or _target_, lr, its own params), with the regimen's weight-decay
    policy, and a decoupled-decay hook for optimizers that do not decouple natively."""
    ocfg = cfg.optimizer
    params = OmegaConf.to_container(ocfg.params, resolve=True) or {}
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    wd = regimen.weight_decay
    name = ocfg.name
    decoupled_hook = None
    groups = parameter_groups(model, regimen.decay_norm_and_bias)
    own = optimizer_class(cfg)
    if own is not None:
        optimizer = _build_own(own, str(ocfg._target_), groups, float(ocfg.lr),
                               0.0 if regimen.decoupled_weight_decay else wd, params)
        if regimen.decoupled_weight_decay and wd > 0:
            decoupled_hook = DecoupledWeightDecay(optimizer, wd)
    elif name == "adamw":
        if not regimen.decoupled_weight_decay:
            # AdamW without decoupling is Adam: keep the name honest by using Adam's coupled L2.
            optimizer = torch.optim.Adam(groups, lr=ocfg.lr, weight_decay=wd, **params)
        else:
            optimizer = torch.optim.AdamW(groups, lr=ocfg.lr, weight_decay=wd, **params)
    elif regimen.decoupled_weight_decay and wd > 0:
        optimizer = OPTIMIZERS[name](groups, lr=ocfg.lr, weight_decay=0.0, **params)
        decoupled_hook = DecoupledWeightDecay(optimizer, wd)
    else:
        optimizer = OPTIMIZERS[name](groups, lr=ocfg.lr, weight_decay=wd, **params)
    if not regimen.decay_norm_and_bias:
        for group in optimizer.param_groups:
            if not group["decay"]:
                group["weight_decay"] = 0.0  # coupled decay off here; the decoupled hook skips the group
    return optimizer, decoupled_hook


def _accepted(cls: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments `cls` takes, or None when it takes any (**kwargs) or cannot be inspected."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def _build_own(cls: Callable[..., torch.optim.Optimizer], target: str, groups, lr: float, wd: float,
               params: dict) -> torch.optim.Optimizer:
    """cls(groups, lr=, weight_decay=, **params), or one ConfigError naming the class and what it was given.
    weight_decay is passed only when it is not 0. optimizer.params the class does not take are left out with
    a warning: a preset's own (optimizer=momentum's momentum) mean nothing to another class."""
    accepted = _accepted(cls)
    if accepted is not None:
        if wd and "weight_decay" not in accepted:
            raise ConfigError(f"optimizer._target_={target} takes no weight_decay argument, and optimizer.weight_decay="
                              f"{wd:g} asks for coupled decay: set optimizer.weight_decay=0, or "
                              "optimizer.decoupled_weight_decay=true (regbench applies w -= lr*wd*w itself)")
        left_out = [k for k in params if k not in accepted]
        if left_out:
            log.warning("optimizer.params %s: not arguments of %s, left out (optimizer=custom starts from no params)",
                        ", ".join(left_out), target)
            params = {k: v for k, v in params.items() if k in accepted}
    kwargs = {"lr": lr, **({"weight_decay": wd} if wd else {}), **params}
    try:
        optimizer = cls(groups, **kwargs)
    except Exception as err:  # noqa: BLE001 - the user's class: one line that says whose call failed
        raise ConfigError(f"optimizer._target_={target} failed: {type(err).__name__}: {err} (regbench called it with "
                          f"the parameter groups, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())})") from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer._target_={target} returned a {type(optimizer).__name__}, not a "
                          "torch.optim.Optimizer (regbench steps it, schedules its lr and checkpoints its state)")
    return optimizer


def parameter_groups(model: nn.Module, decay_norm_and_bias: bool):
    """All parameters in one group (decay on everything, the default), or two: parameters with more than
    one dimension (weight matrices, kernels, embeddings) decayed, and those with one (biases, norm
    scales and shifts) not, the split timm and most training recipes use."""
    if decay_norm_and_bias:
        return model.parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "decay": True},
              {"params": [p for p in params if p.ndim <= 1], "decay": False}]
    return [g for g in groups if g["params"]]


def lr_factor(cfg: DictConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warm-up, then the schedule."""
    scfg = cfg.schedule
    warmup = int(round(float(scfg.warmup_epochs) * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if scfg.name == "constant":
        return 1.0
    if scfg.name == "step":
        epoch = step // steps_per_epoch
        if scfg.milestones:
            passed = sum(1 for m in scfg.milestones if epoch >= m)
        else:
            passed = epoch // scfg.step_size
        return float(scfg.gamma) ** passed
    if scfg.name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        floor = float(scfg.min_lr_ratio)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {scfg.name!r}")


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, total_steps))
