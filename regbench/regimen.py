"""The Regimen: everything a run does to regularize, resolved once from the config. It is the only thing
models and the training loop read about regularization.

A model numbers its own layers 1..n (CNN-13: its nine convs) and asks where normalisation and dropout
go: `placement = regimen.place(n_layers, default_norm=..., default_dropout=...)`, then builds each
layer's pieces with `placement.norm(i, num_features, dims=2)` and `placement.dropout(i)`, which return
`nn.Identity()` where layer i is not selected. The built-in models and a user's own model follow the same
contract, and after a model is built `regimen.check_placed()` refuses one that skipped a layer the
regimen selected. The loop applies the step-level parts (gradient clipping, the L1 penalty) from the
same object, and the optimizer takes its weight-decay policy from it.

Layer selectors (`regularizer.norm.layers`, `regularizer.dropout.layers`), 1-based:

    all | none | default | first:K | last:K | from:K | [i, j, ...]

`default` is the model's conventional placement (CNN-13: BN after every conv, dropout after each
pooling stage). "BN on the first five conv layers, dropout on the rest" is
`regularizer.norm.layers=first:5 regularizer.dropout.layers=from:6`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks
from regbench.errors import ConfigError

LAYER_SELECTOR_HELP = "all, none, default, first:K, last:K, from:K, or a list of 1-based layer indices like [1,2,5]"
NORM_TYPES = ("none", "batch")
CLIP_MODES = ("none", "norm", "value")
NORM_NAMES = {"batch": "BatchNorm"}


def format_layers(layers: Any) -> str:
    """(1, 2, 3, 5) -> "1-3, 5"."""
    layers = sorted(set(layers))
    if not layers:
        return "none"
    runs, start = [], layers[0]
    for previous, current in zip(layers, layers[1:] + [None]):
        if current != previous + 1:
            runs.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(runs)


@dataclass(frozen=True)
class LayerSelector:
    """A parsed `layers` value; `key` names the config key it came from, for messages."""

    key: str
    kind: str          # all | none | default | first | last | from | list
    arg: Any = None    # K, or the sorted tuple of a list

    @classmethod
    def parse(cls, key: str, value: Any) -> LayerSelector:
        value = checks.plain(value)
        if isinstance(value, (list, tuple)):
            if all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in value):
                return cls(key, "list", tuple(sorted(set(value))))
            reason = "a layer list must hold integers >= 1"
        elif isinstance(value, str) and value in ("all", "none", "default"):
            return cls(key, value)
        else:
            kind, sep, arg = str(value).partition(":")
            if sep and kind in ("first", "last", "from") and arg.isdigit() and int(arg) >= (kind == "from"):
                return cls(key, kind, int(arg))
            reason = "unknown layer selector"
        raise ConfigError(f"{key}={value!r} is invalid: {reason}. Allowed: {LAYER_SELECTOR_HELP}")

    def text(self) -> str:
        if self.kind == "list":
            return f"[{','.join(map(str, self.arg))}]"
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"

    def select(self, n_layers: int, default: tuple[int, ...] = (), hint: str = "") -> tuple[int, ...]:
        """The layer indices this selector picks out of 1..n_layers; a selector that reaches past the
        model's layers is a ConfigError, whether it is a list or first:/last:/from:."""
        beyond = None
        if self.kind == "list":
            beyond = [i for i in self.arg if i > n_layers] or None
        elif self.kind in ("first", "last", "from") and self.arg > n_layers:
            beyond = self.arg
        if beyond is not None:
            where = f" ({hint})" if hint else ""
            raise ConfigError(f"{self.key}={self.text()} reaches past the model's layers: it has layers "
                              f"1..{n_layers}{where}")
        if self.kind == "all":
            return tuple(range(1, n_layers + 1))
        if self.kind == "none":
            return ()
        if self.kind == "default":
            return tuple(default)
        if self.kind == "first":
            return tuple(range(1, self.arg + 1))
        if self.kind == "last":
            return tuple(range(n_layers - self.arg + 1, n_layers + 1))
        if self.kind == "from":
            return tuple(range(self.arg, n_layers + 1))
        return self.arg


class Placement:
    """Where one model puts normalisation and dropout, on its numbered layers 1..n_layers. It builds the
    modules and remembers what it built, so the regimen can check that every selected layer got one."""

    def __init__(self, n_layers: int, norm_type: str, norm_layers: tuple[int, ...], dropout_p: float,
                 dropout_layers: tuple[int, ...]) -> None:
        self.n_layers = n_layers
        self.norm_type = norm_type
        self.norm_layers = norm_layers
        self.dropout_p = dropout_p
        self.dropout_layers = dropout_layers
        self.placed_norm: set[int] = set()
        self.placed_dropout: set[int] = set()

    def has_norm(self, layer: int) -> bool:
        return layer in self.norm_layers

    def has_dropout(self, layer: int) -> bool:
        return layer in self.dropout_layers

    def norm(self, layer: int, num_features: int, dims: int = 2, batch_norm: type[nn.Module] | None = None) -> nn.Module:
        """The normalisation of layer `layer` over `num_features` channels (dims=2: images (N, C, H, W);
        dims=1: (N, C) or (N, C, L)), or nn.Identity() where the layer is not selected. `batch_norm`
        replaces the BatchNorm class (the tagger's masked BatchNorm)."""
        if not self.has_norm(layer):
            return nn.Identity()
        self.placed_norm.add(layer)
        if batch_norm is not None:
            return batch_norm(num_features)
        return {2: nn.BatchNorm2d, 1: nn.BatchNorm1d}[dims](num_features)

    def dropout(self, layer: int) -> nn.Module:
        """Dropout after layer `layer`, or nn.Identity() where the layer is not selected."""
        if not self.has_dropout(layer):
            return nn.Identity()
        self.placed_dropout.add(layer)
        return nn.Dropout(self.dropout_p)


NO_PLACEMENT = Placement(0, "none", (), 0.0, ())


@dataclass(frozen=True)
class Regimen:
    name: str
    norm_type: str                 # none | batch
    norm_layers: LayerSelector
    dropout_p: float               # in [0, 1)
    dropout_layers: LayerSelector
    clip_mode: str                 # none | norm | value
    clip_max: float
    l1: float                      # lambda of the L1 penalty on weights (not biases or norm scales)
    weight_decay: float            # L2, from the optimizer preset
    decoupled_weight_decay: bool   # w -= lr * wd * w (the AdamW form) instead of adding it to the gradient
    placements: list[Placement] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Regimen:
        """Check and resolve the regularizer group, penalty.l1 and the optimizer's weight-decay keys."""
        checks.choice(cfg, "regularizer.norm.type", NORM_TYPES)
        checks.number(cfg, "regularizer.dropout.p", low=0, high=1, high_open=True)
        checks.choice(cfg, "regularizer.grad_clip.mode", CLIP_MODES)
        checks.number(cfg, "regularizer.grad_clip.max", low=0, low_open=True)
        checks.number(cfg, "penalty.l1", low=0)
        checks.number(cfg, "optimizer.weight_decay", low=0)
        checks.boolean(cfg, "optimizer.decoupled_weight_decay")
        reg = cfg.regularizer
        return cls(name=str(reg.name), norm_type=reg.norm.type,
                   norm_layers=LayerSelector.parse("regularizer.norm.layers", checks.get(cfg, "regularizer.norm.layers")),
                   dropout_p=float(reg.dropout.p),
                   dropout_layers=LayerSelector.parse("regularizer.dropout.layers",
                                                      checks.get(cfg, "regularizer.dropout.layers")),
                   clip_mode=reg.grad_clip.mode, clip_max=float(reg.grad_clip.max), l1=float(cfg.penalty.l1),
                   weight_decay=float(cfg.optimizer.weight_decay),
                   decoupled_weight_decay=bool(cfg.optimizer.decoupled_weight_decay))

    # -- where BN and dropout go ----------------------------------------------------------------
    @property
    def uses_norm(self) -> bool:
        return self.norm_type != "none"

    @property
    def uses_dropout(self) -> bool:
        return self.dropout_p > 0

    def check_layers(self, n_layers: int, hint: str = "") -> None:
        """Both selectors must pick layers that a model with n_layers numbered layers has."""
        self.norm_layers.select(n_layers, (), hint)
        self.dropout_layers.select(n_layers, (), hint)

    def place(self, n_layers: int, *, default_norm: tuple[int, ...] = (),
              default_dropout: tuple[int, ...] = ()) -> Placement:
        """Map the regimen onto a model with layers 1..n_layers; `default_*` are the model's own
        conventional layers, which the selector `default` picks."""
        norm = self.norm_layers.select(n_layers, tuple(default_norm)) if self.uses_norm else ()
        dropout = self.dropout_layers.select(n_layers, tuple(default_dropout)) if self.uses_dropout else ()
        placement = Placement(n_layers, self.norm_type, norm, self.dropout_p, dropout)
        self.placements.append(placement)
        return placement

    def check_placed(self) -> None:
        """After a model is built: refuse it when it did not put a selected layer's BN or dropout in place."""
        wanted = [(NORM_NAMES.get(self.norm_type, self.norm_type), "norm")] if self.uses_norm else []
        wanted += [("dropout", "dropout")] if self.uses_dropout else []
        if not wanted:
            return
        if not self.placements:
            kinds = " and ".join(name for name, _ in wanted)
            raise ConfigError(f"regularizer={self.name} asks for {kinds}, but the model never asked the regimen where "
                              "to put them (regimen.place(n_layers, ...)); use regularizer=none with this model")
        for name, attr in wanted:
            selected = set().union(*(getattr(p, f"{attr}_layers") for p in self.placements))
            placed = set().union(*(getattr(p, f"placed_{attr}") for p in self.placements))
            if selected - placed:
                where = f"only on layers {format_layers(placed)}" if placed else "on none of them"
                raise ConfigError(f"regularizer={self.name} selects layers {format_layers(selected)} for {name}, "
                                  f"but the model placed {name} {where}")

    # -- step-level parts ------------------------------------------------------------------------
    def l1_penalty(self, weights: list[Tensor]) -> Tensor:
        """lambda * sum |w| over `weights` (the loop passes the weight matrices and kernels)."""
        return self.l1 * sum(p.abs().sum() for p in weights)

    def clip(self, params: list[Tensor], norm: Tensor) -> Tensor:
        """Clip the gradients of `params` in place, given their global L2 norm before clipping (measured
        once by the gradient monitor); return whether clipping fired, as a device tensor, so the loop
        never waits for the host. `norm` rescales all gradients together so their global L2 norm is at
        most clip_max; `value` clamps every element to [-clip_max, clip_max]."""
        if self.clip_mode == "norm":
            torch.nn.utils.clip_grads_with_norm_(params, self.clip_max, norm)
            return norm > self.clip_max
        if self.clip_mode == "value":
            grads = [p.grad for p in params if p.grad is not None]
            fired = torch.stack([g.abs().amax() for g in grads]).amax() > self.clip_max
            torch.nn.utils.clip_grad_value_(params, self.clip_max)
            return fired
        return torch.zeros((), dtype=torch.bool, device=norm.device)
