"""Regularizer hooks: what a regularizer does inside the training step, for the built-in parts (L1, gradient
clipping, the EMA, mixup/CutMix) and a user's own (`regularizer.extra`) alike.

A hook object defines any of these methods; the loop calls each where it sits in the step:

    start(model, task)            once, after the model is built, before training or resuming
    per step:
      transform_batch(batch, generator) -> batch    the training batch, before the forward pass (input-space
                                                     regularizers: mixup, CutMix); draws only from `generator`
      penalty(model) -> Tensor                      a scalar added to the task's loss before backward
      after_backward(model)                         the gradients are there (measured, unclipped): may change them
      (decoupled weight decay, then optimizer.step())
      after_step(model)                             the weights have moved: may change them or keep an average
      (the schedule steps)
    eval_model(model) -> nn.Module                  the weights that validation, test and best.pt use
    state_dict() / load_state_dict(state)           saved in last.pt and restored before a resumed run's next
                                                    step, so that it continues exactly (tensors, numbers,
                                                    strings, lists and dicts: last.pt is read weights_only)

Built-ins come first, in the order above (mixing; L1; clipping; EMA), then `regularizer.extra` in its list
order. A run without any hook pays nothing: the loop calls only the hooks that exist. No hook may read a
device value on the host in a step (`.item()`, `float()`, `if tensor:`): that makes the GPU wait every step.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from regbench import mixing
from regbench.ema import WeightAverage
from regbench.errors import ConfigError
from regbench.regimen import Regimen
from regbench.targets import locate

HOOKS = ("start", "transform_batch", "penalty", "after_backward", "after_step", "eval_model", "state_dict",
         "load_state_dict")
EXTRA_KEY = "regularizer.extra"


# -- the built-in regularizers, as hooks -----------------------------------------------------------------
class Mixing:
    """mixup / CutMix (regbench.mixing): each row of an image batch mixed with its partner (the batch
    reversed), carrying its partner's label and its own weight. The batch becomes (x, y, partner_y, lam),
    which an image task's training_step scores."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float) -> None:
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha

    def transform_batch(self, batch: tuple[Tensor, Tensor], generator: torch.Generator) -> tuple[Tensor, ...]:
        x, y = batch
        x, lam = mixing.mix(x, self.mixup_alpha, self.cutmix_alpha, generator)
        return x, y, y.flip(0), lam.expand(len(y))  # row-wise, so torchrun's shares stay paired


class L1Penalty:
    """penalty.l1: lambda * sum |w| over the trainable weights with more than one dimension (weight matrices,
    kernels, embeddings), not biases or norm scales."""

    def __init__(self, regimen: Regimen) -> None:
        self.regimen = regimen
        self.weights: list[Tensor] = []

    def start(self, model: nn.Module, task: Any = None) -> None:
        self.weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]

    def penalty(self, model: nn.Module) -> Tensor:
        return self.regimen.l1_penalty(self.weights)


class GradientClipping:
    """regularizer.grad_clip (norm, value, agc) on the gradients the monitor has just measured; counts on the
    device the steps in which clipping fired, for history.csv's clip_rate."""

    def __init__(self, regimen: Regimen, params: list[Tensor], norm: Callable[[], Tensor],
                 device: torch.device) -> None:
        self.regimen, self.params, self.norm = regimen, params, norm
        self.fired = torch.zeros((), device=device)

    def after_backward(self, model: nn.Module) -> None:
        self.fired += self.regimen.clip(self.params, self.norm())


class ExponentialMovingAverage:
    """regularizer.ema.decay: validation, test and best.pt use the average of the weights (regbench.ema)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.average: WeightAverage | None = None

    def start(self, model: nn.Module, task: Any = None) -> None:
        self.average = WeightAverage(model, self.decay)

    def after_step(self, model: nn.Module) -> None:
        self.average.update()

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.average.module

    def state_dict(self) -> dict[str, Tensor]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.average.load_state_dict(state)


# -- a user's own: regularizer.extra --------------------------------------------------------------------
def extra_entries(cfg: DictConfig) -> list[dict[str, Any]]:
    """regularizer.extra as plain dicts, each with its `_target_`; a malformed list is one ConfigError."""
    node = cfg.regularizer.get("extra")
    entries = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node or []
    if not isinstance(entries, list):
        raise ConfigError(f"{EXTRA_KEY} must be a list of {{_target_: PACKAGE.MODULE.CLASS, ...}} entries, got "
                          f"{entries!r}: e.g. '{EXTRA_KEY}=[{{_target_:my_reg.Orthogonality,weight:1e-4}}]'")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("_target_"):
            raise ConfigError(f"{EXTRA_KEY}[{i}]={entry!r} has no _target_: each entry names the class (or "
                              "function) that builds the hook object, e.g. {_target_:my_reg.Orthogonality,weight:1e-4}")
    return entries


def extra_factories(cfg: DictConfig) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """(its key for messages, the callable, its keyword arguments) for each entry of regularizer.extra,
    imported (a ConfigError names the entry that cannot be)."""
    found = []
    for i, entry in enumerate(extra_entries(cfg)):
        key = f"{EXTRA_KEY}[{i}]._target_"
        factory = locate(key, str(entry["_target_"]))
        if not callable(factory):
            raise ConfigError(f"{key}={entry['_target_']} is a {type(factory).__name__}, not a class or function")
        found.append((key, factory, {k: v for k, v in entry.items() if k != "_target_"}))
    return found


def build_extras(cfg: DictConfig) -> list[Any]:
    """The hook objects of regularizer.extra, each built once with its entry's other keys."""
    hooks = []
    for key, factory, kwargs in extra_factories(cfg):
        target = key.removesuffix("._target_")
        try:
            hook = factory(**kwargs)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's code: one line that says whose call failed
            raise ConfigError(f"{target} ({factory.__module__}.{factory.__qualname__}) failed: "
                              f"{type(err).__name__}: {err} (called with {', '.join(kwargs) or 'no arguments'})"
                              ) from None
        defined = [name for name in HOOKS if callable(getattr(hook, name, None))]
        if not defined:
            raise ConfigError(f"{target}: a {type(hook).__name__} defines none of the hooks ({', '.join(HOOKS)}): "
                              "see docs/own-model.md#your-own-regularizer")
        if ("state_dict" in defined) != ("load_state_dict" in defined):
            raise ConfigError(f"{target}: a {type(hook).__name__} defines only one of state_dict and "
                              "load_state_dict: a resumed run needs both to continue exactly")
        hooks.append(hook)
    return hooks


class Hooks:
    """Every hook of one run, the built-ins first, grouped by method so a step calls only what exists."""

    def __init__(self, builtins: list[Any], extras: list[Any]) -> None:
        self.builtins, self.extras = builtins, extras
        everything = builtins + extras
        self.by_name: dict[str, list[Any]] = {name: [h for h in everything if callable(getattr(h, name, None))]
                                              for name in HOOKS}
        self.clipping = next((h for h in builtins if isinstance(h, GradientClipping)), None)
        self.ema = next((h for h in builtins if isinstance(h, ExponentialMovingAverage)), None)
        owners = self.by_name["eval_model"]
        if len(owners) > 1:
            names = ", ".join(type(h).__name__ for h in owners)
            raise ConfigError(f"{len(owners)} regularizers choose the weights that validation and test use "
                              f"(eval_model: {names}): keep one (regularizer.ema.decay=0 turns the EMA off)")

    @classmethod
    def build(cls, cfg: DictConfig, regimen: Regimen, params: list[Tensor], norm: Callable[[], Tensor],
              device: torch.device, extras: list[Any] | None = None) -> Hooks:
        """The run's hooks: the regimen's built-in parts, then regularizer.extra (`extras` when already
        built). `params` and `norm` are the gradient monitor's (the gradients it measured, and their global
        norm of this step)."""
        builtins: list[Any] = []
        if regimen.mixes:
            builtins.append(Mixing(regimen.mixup_alpha, regimen.cutmix_alpha))
        if regimen.l1 > 0:
            builtins.append(L1Penalty(regimen))
        if regimen.clip_mode != "none":
            builtins.append(GradientClipping(regimen, params, norm, device))
        if regimen.ema_decay > 0:
            builtins.append(ExponentialMovingAverage(regimen.ema_decay))
        return cls(builtins, build_extras(cfg) if extras is None else extras)

    def start(self, model: nn.Module, task: Any) -> None:
        for hook in self.by_name["start"]:
            hook.start(model, task)

    def start_epoch(self) -> None:
        if self.clipping is not None:
            self.clipping.fired.zero_()

    def transform_batch(self, batch: Any, generator: torch.Generator) -> Any:
        for hook in self.by_name["transform_batch"]:
            batch = hook.transform_batch(batch, generator)
        return batch

    def objective(self, loss: Tensor, model: nn.Module) -> Tensor:
        """The loss plus every penalty."""
        for hook in self.by_name["penalty"]:
            loss = loss + hook.penalty(model)
        return loss

    def after_backward(self, model: nn.Module) -> None:
        for hook in self.by_name["after_backward"]:
            hook.after_backward(model)

    def after_step(self, model: nn.Module) -> None:
        for hook in self.by_name["after_step"]:
            hook.after_step(model)

    def eval_model(self, model: nn.Module) -> nn.Module:
        owners = self.by_name["eval_model"]
        return owners[0].eval_model(model) if owners else model

    def clip_steps(self) -> Tensor | None:
        """The steps in which clipping fired so far (a device count), or None without clipping."""
        return self.clipping.fired if self.clipping is not None else None

    def state_dict(self) -> dict[str, Any]:
        """What last.pt keeps: the EMA under "ema" (where earlier versions kept it), the extras by position."""
        return {"ema": self.ema.state_dict() if self.ema is not None else None,
                "extras": [h.state_dict() if callable(getattr(h, "state_dict", None)) else None
                           for h in self.extras]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for hook, saved in zip(self.extras, state.get("extras") or []):
            if saved is not None and callable(getattr(hook, "load_state_dict", None)):
                hook.load_state_dict(saved)
