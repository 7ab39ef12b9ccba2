"""Optimizer and LR-schedule factories: one place maps a config name to a constructor."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from regbench.regimen import Regimen

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


def build_optimizer(cfg: DictConfig, model: nn.Module, regimen: Regimen
                    ) -> tuple[torch.optim.Optimizer, DecoupledWeightDecay | None]:
    """The optimizer (cfg.optimizer: name, lr, its own params), with the regimen's weight-decay policy,
    and a decoupled-decay hook for optimizers that do not decouple natively."""
    ocfg = cfg.optimizer
    params = OmegaConf.to_container(ocfg.params, resolve=True) or {}
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    wd = regimen.weight_decay
    name = ocfg.name
    decoupled_hook = None
    groups = parameter_groups(model, regimen.decay_norm_and_bias)
    if name == "adamw":
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
