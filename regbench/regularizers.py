"""The regularizer spec: what a `regularizer/*.yaml` asks for, independent of any model.

Each model numbers its own layers 1..n (CNN-13: its nine conv layers) and calls `resolve` to learn
where BatchNorm and Dropout go. Layer selectors:

    all | none | default | first:K | last:K | from:K | [i, j, ...]   (1-based)

`default` is the model's conventional placement (CNN-13: BN after every conv, dropout after each
pooling stage). "BN on the first five conv layers, dropout on the rest" is
`regularizer.norm.layers=first:5 regularizer.dropout.layers=from:6`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYER_SELECTOR_HELP = "all, none, default, first:K, last:K, from:K, or a list of 1-based layer indices like [1,2,5]"


def parse_layer_selector(value: Any) -> tuple[str, Any]:
    """Turn a selector into (kind, argument); raise ValueError with the reason when it is malformed."""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in value):
            raise ValueError("a layer list must hold integers >= 1")
        return "list", tuple(sorted(set(value)))
    if isinstance(value, str):
        if value in ("all", "none", "default"):
            return value, None
        kind, sep, arg = value.partition(":")
        if sep and kind in ("first", "last", "from") and arg.isdigit() and int(arg) >= (0 if kind != "from" else 1):
            return kind, int(arg)
    raise ValueError("unknown layer selector")


def select_layers(value: Any, n_layers: int, default: tuple[int, ...]) -> tuple[int, ...]:
    """The 1-based layer indices a selector picks out of n_layers, `default` for `default`."""
    kind, arg = parse_layer_selector(value)
    if kind == "all":
        chosen = range(1, n_layers + 1)
    elif kind == "none":
        chosen = ()
    elif kind == "default":
        chosen = default
    elif kind == "first":
        chosen = range(1, min(arg, n_layers) + 1)
    elif kind == "last":
        chosen = range(max(n_layers - arg, 0) + 1, n_layers + 1)
    elif kind == "from":
        chosen = range(arg, n_layers + 1)
    else:
        out_of_range = [i for i in arg if i > n_layers]
        if out_of_range:
            raise ValueError(f"layers {out_of_range} do not exist: this model has layers 1..{n_layers}")
        chosen = arg
    return tuple(chosen)


@dataclass(frozen=True)
class Placement:
    """Where one model puts its normalisation and dropout, resolved from the spec."""

    norm: str                       # "none" | "batch"
    norm_layers: tuple[int, ...]
    dropout_p: float
    dropout_layers: tuple[int, ...]


def resolve(reg_cfg: Any, n_layers: int, *, default_norm: tuple[int, ...],
            default_dropout: tuple[int, ...]) -> Placement:
    """Map a `regularizer` config onto a model with n_layers numbered layers."""
    norm = reg_cfg.norm.type
    norm_layers = select_layers(plain(reg_cfg.norm.layers), n_layers, default_norm) if norm != "none" else ()
    p = float(reg_cfg.dropout.p)
    dropout_layers = select_layers(plain(reg_cfg.dropout.layers), n_layers, default_dropout) if p > 0 else ()
    return Placement(norm, norm_layers, p, dropout_layers)


def plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def clip_gradients(params: list, mode: str, max_value: float, norm):
    """Clip the gradients of `params` in place, given their global L2 norm before clipping (measured
    once by the gradient monitor); return whether clipping fired, as a device tensor, so the training
    loop never waits for the host.

    mode "norm" rescales all gradients together so their global L2 norm is at most max_value;
    "value" clamps every element to [-max_value, max_value]; "none" does nothing."""
    import torch

    if mode == "norm":
        torch.nn.utils.clip_grads_with_norm_(params, max_value, norm)
        return norm > max_value
    if mode == "value":
        grads = [p.grad for p in params if p.grad is not None]
        fired = torch.stack([g.abs().amax() for g in grads]).amax() > max_value
        torch.nn.utils.clip_grad_value_(params, max_value)
        return fired
    return torch.zeros((), dtype=torch.bool, device=norm.device)
