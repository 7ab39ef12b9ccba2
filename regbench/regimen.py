"""The Regimen: everything a run does to regularize, resolved once from the config. It is the only thing
models and the training loop read about regularization.

A model numbers its own layers 1..n (CNN-13: its nine convs) and asks where normalisation and dropout
go: `placement = regimen.place(n_layers, default_norm=..., default_dropout=...)`, then builds each
layer's pieces with `placement.norm(i, num_features, dims=2)` and `placement.dropout(i)`, which return
`nn.Identity()` where layer i is not selected. The built-in models and a user's own model follow the same
contract, and after a model is built `regimen.check_placed()` refuses one that skipped a layer the
regimen selected. The loop applies the step-level parts (gradient clipping, the L1 penalty) from the
same object, and the optimizer takes its weight-decay policy from it.

`regularizer.norm.type` picks the normalisation the placement builds: `batch` (BatchNorm), `group`
(GroupNorm with `regularizer.norm.groups` groups) or `layer` (GroupNorm with one group: each example
normalised over its channels, and over its positions for images; nn.LayerNorm for (N, C) input). A
residual model asks `placement.drop_path(block, n_blocks)` for the stochastic depth of each block.
The task reads the rest: label smoothing, mixup/CutMix (regbench.mixing), and the loop the EMA.

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
NORM_TYPES = ("none", "batch", "group", "layer")
CLIP_MODES = ("none", "norm", "value", "agc")
NORM_NAMES = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm"}
AGC_EPS = 1e-3  # Brock et al. 2021: a unit's weight norm counts as at least this, so zero-initialised units can move


def regularizer_presets() -> set[str]:
    """The names of regbench's regularizer presets (conf/regularizer/*.yaml): none, bn, dropout, ..."""
    from importlib.resources import files

    return {f.name.removesuffix(".yaml") for f in files("regbench.conf").joinpath("regularizer").iterdir()
            if f.name.endswith(".yaml")}


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
                 dropout_layers: tuple[int, ...], norm_groups: int = 8, stochastic_depth: float = 0.0) -> None:
        self.n_layers = n_layers
        self.norm_type = norm_type
        self.norm_layers = norm_layers
        self.norm_groups = norm_groups
        self.dropout_p = dropout_p
        self.dropout_layers = dropout_layers
        self.stochastic_depth = stochastic_depth
        self.placed_norm: set[int] = set()
        self.placed_dropout: set[int] = set()
        self.built: list[nn.Module] = []  # every module this placement made: the model's other norms are its own
        self.asked_drop_path = False

    def has_norm(self, layer: int) -> bool:
        return layer in self.norm_layers

    def has_dropout(self, layer: int) -> bool:
        return layer in self.dropout_layers

    def norm(self, layer: int, num_features: int, dims: int = 2, batch_norm: type[nn.Module] | None = None) -> nn.Module:
        """The normalisation of layer `layer` over `num_features` channels (dims=2: images (N, C, H, W);
        dims=1: (N, C) or (N, C, L)), or nn.Identity() where the layer is not selected. `batch_norm`
        replaces the BatchNorm class (the tagger's masked BatchNorm); group and layer norm need no mask,
        as they normalise each example (token) on its own."""
        if not self.has_norm(layer):
            return nn.Identity()
        self.placed_norm.add(layer)
        return self._keep(self._norm(layer, num_features, dims, batch_norm))

    def _keep(self, module: nn.Module) -> nn.Module:
        self.built.append(module)
        return module

    def _norm(self, layer: int, num_features: int, dims: int, batch_norm: type[nn.Module] | None) -> nn.Module:
        if self.norm_type == "group":
            if num_features % self.norm_groups:
                raise ConfigError(f"regularizer.norm.groups={self.norm_groups} does not divide the {num_features} "
                                  f"channels of layer {layer}: choose a divisor of {num_features} (e.g. "
                                  f"{_divisor_near(num_features, self.norm_groups)}) or regularizer.norm.type=layer")
            return nn.GroupNorm(self.norm_groups, num_features)
        if self.norm_type == "layer":
            return nn.GroupNorm(1, num_features)
        if batch_norm is not None:
            return batch_norm(num_features)
        return {2: nn.BatchNorm2d, 1: nn.BatchNorm1d}[dims](num_features)

    def drop_path(self, block: int, n_blocks: int) -> nn.Module:
        """Stochastic depth for residual block `block` of 1..n_blocks: during training the block's residual
        branch is dropped for a whole example with a probability rising linearly from 0 (block 1) to
        regularizer.stochastic_depth (block n_blocks), as in timm; nn.Identity() when the rate is 0. Apply it
        to the branch before the sum: `shortcut(x) + placement.drop_path(i, n)(branch(x))`."""
        self.asked_drop_path = True
        rate = self.stochastic_depth * (block - 1) / max(n_blocks - 1, 1)
        if rate == 0:
            return nn.Identity()
        from torchvision.ops import StochasticDepth  # the rows of a batch dropped independently, as timm's DropPath

        return self._keep(StochasticDepth(rate, mode="row"))

    def dropout(self, layer: int) -> nn.Module:
        """Dropout after layer `layer`, or nn.Identity() where the layer is not selected."""
        if not self.has_dropout(layer):
            return nn.Identity()
        self.placed_dropout.add(layer)
        return self._keep(nn.Dropout(self.dropout_p))


NO_PLACEMENT = Placement(0, "none", (), 0.0, ())


def _divisor_near(n: int, wanted: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - wanted), -d))


@dataclass
class Regimen:
    """The run's regularization, resolved once from the config (`from_config`); its values are not changed
    afterwards. `placements` is the log of where models asked for norms and dropout (`place`), which
    `check_placed` and the contract checks read."""

    name: str
    norm_type: str                 # none | batch
    norm_layers: LayerSelector
    dropout_p: float               # in [0, 1)
    dropout_layers: LayerSelector
    clip_mode: str                 # none | norm | value | agc
    clip_max: float                # the largest norm or value; for agc the clipping factor
    l1: float                      # lambda of the L1 penalty on weights (not biases or norm scales)
    weight_decay: float            # L2, from the optimizer preset
    decoupled_weight_decay: bool   # w -= lr * wd * w (the AdamW form) instead of adding it to the gradient
    norm_groups: int = 8           # GroupNorm's groups (norm_type group)
    label_smoothing: float = 0.0   # in [0, 1)
    mixup_alpha: float = 0.0       # Beta(alpha, alpha) of mixup; 0 = off
    cutmix_alpha: float = 0.0      # Beta(alpha, alpha) of CutMix; 0 = off
    ema_decay: float = 0.0         # decay of the weights' exponential moving average; 0 = off
    stochastic_depth: float = 0.0  # drop-path rate of the last residual block
    decay_norm_and_bias: bool = True  # false: no weight decay on parameters with one dimension (norms, biases)
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
        checks.boolean(cfg, "optimizer.decay_norm_and_bias")
        checks.number(cfg, "regularizer.norm.groups", low=1, integer=True)
        checks.number(cfg, "regularizer.label_smoothing", low=0, high=1, high_open=True)
        checks.number(cfg, "regularizer.mixup.alpha", low=0)
        checks.number(cfg, "regularizer.cutmix.alpha", low=0)
        checks.number(cfg, "regularizer.ema.decay", low=0, high=1, high_open=True)
        checks.number(cfg, "regularizer.stochastic_depth", low=0, high=1, high_open=True)
        reg = cfg.regularizer
        return cls(name=str(reg.name), norm_type=reg.norm.type,
                   norm_layers=LayerSelector.parse("regularizer.norm.layers", checks.get(cfg, "regularizer.norm.layers")),
                   dropout_p=float(reg.dropout.p),
                   dropout_layers=LayerSelector.parse("regularizer.dropout.layers",
                                                      checks.get(cfg, "regularizer.dropout.layers")),
                   clip_mode=reg.grad_clip.mode, clip_max=float(reg.grad_clip.max), l1=float(cfg.penalty.l1),
                   weight_decay=float(cfg.optimizer.weight_decay),
                   decoupled_weight_decay=bool(cfg.optimizer.decoupled_weight_decay),
                   norm_groups=int(reg.norm.groups), label_smoothing=float(reg.label_smoothing),
                   mixup_alpha=float(reg.mixup.alpha), cutmix_alpha=float(reg.cutmix.alpha),
                   ema_decay=float(reg.ema.decay), stochastic_depth=float(reg.stochastic_depth),
                   decay_norm_and_bias=bool(cfg.optimizer.decay_norm_and_bias))

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
        placement = Placement(n_layers, self.norm_type, norm, self.dropout_p, dropout, self.norm_groups,
                              self.stochastic_depth)
        self.placements.append(placement)
        return placement

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def no_residual_blocks(self, model: str, why: str = "") -> str:
        """Why stochastic depth cannot apply to `model`: said once, whether its module declares no residual
        blocks (validation) or a model that declares nothing never asked for drop_path (check_placed)."""
        return (f"regularizer.stochastic_depth={self.stochastic_depth:g} drops residual blocks, and {model} has none"
                f"{f' ({why})' if why else ''}: use model=resnet18, a model of your own with residual blocks, or "
                "regularizer.stochastic_depth=0")

    def check_placed(self) -> None:
        """After a model is built: refuse it when it did not put a selected layer's BN or dropout in place,
        or when stochastic depth is asked of a model without residual blocks."""
        if self.stochastic_depth > 0 and not any(p.asked_drop_path for p in self.placements):
            raise ConfigError(self.no_residual_blocks("this model", "it never asked placement.drop_path"))
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
        if self.clip_mode == "agc":
            return adaptive_clip_(params, self.clip_max)
        return torch.zeros((), dtype=torch.bool, device=norm.device)


def _unit_norms(t: Tensor) -> Tensor:
    """L2 norms of a tensor's units: of each output row (dim 0) of a weight, of the whole of a bias or scale."""
    if t.ndim <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(params: list[Tensor], factor: float) -> Tensor:
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, "High-performance large-scale image
    recognition without normalization", eq. 3): each unit's gradient is scaled down to at most `factor`
    times the unit's weight norm (counted as at least AGC_EPS). Applied to every parameter; returns whether
    any unit was clipped, as a device tensor. Written here because torch has no AGC (timm's is the same rule,
    but adding timm for one function is a heavy dependency); tested against a direct loop."""
    fired = None
    for p in params:
        if p.grad is None:
            continue
        limit = _unit_norms(p).clamp_min(AGC_EPS) * factor
        grad_norm = _unit_norms(p.grad)
        clipped = grad_norm > limit
        p.grad.mul_(torch.where(clipped, limit / grad_norm.clamp_min(1e-6), torch.ones_like(grad_norm)))
        any_clipped = clipped.any()
        fired = any_clipped if fired is None else fired | any_clipped
    return fired if fired is not None else torch.zeros((), dtype=torch.bool, device=params[0].device if params else None)
