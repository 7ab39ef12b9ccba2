"""Pieces every model shares: activation by name, weight initialisation by name, and their checks."""
from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from regbench import checks

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "gelu")
INITS = ("default", "kaiming", "xavier", "orthogonal")


def check_activation_and_init(cfg: DictConfig) -> None:
    """model.activation, model.init and (for leaky_relu) model.negative_slope."""
    checks.choice(cfg, "model.activation", ACTIVATIONS)
    checks.choice(cfg, "model.init", INITS)
    if cfg.model.activation == "leaky_relu":
        checks.number(cfg, "model.negative_slope", low=0, high=1)


def make_activation(name: str, negative_slope: float = 0.1) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    if name == "tanh":
        return nn.Tanh()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


def init_weights(model: nn.Module, scheme: str, activation: str = "relu", negative_slope: float = 0.1) -> None:
    """Re-initialise conv and linear weights (biases to zero); `default` keeps PyTorch's own init."""
    if scheme == "default":
        return
    nonlinearity = activation if activation in ("relu", "leaky_relu", "tanh") else "relu"
    for module in model.modules():
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        if scheme == "kaiming":
            nn.init.kaiming_normal_(module.weight, a=negative_slope if nonlinearity == "leaky_relu" else 0,
                                    nonlinearity=nonlinearity)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain(nonlinearity, negative_slope))
        elif scheme == "orthogonal":
            nn.init.orthogonal_(module.weight, gain=nn.init.calculate_gain(nonlinearity, negative_slope))
        else:
            raise ValueError(f"unknown init {scheme!r}")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
