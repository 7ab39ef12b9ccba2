"""Regularizers of your own in regbench: objects with any of the hooks of regbench/hooks.py, named in
`regularizer.extra` and built once per run with the entry's other keys.

    regbench -m regularizer=bn_dropout 'regularizer.extra=[{_target_:my_regularizer.Orthogonality,weight:1e-4}]' \\
        regularizer.name=bn_dropout_ortho seed=0,1,2

(run it from this folder, or with it on PYTHONPATH). The entry's keys belong to the run's identity, and
the source of this file too: edit it and the same command trains again instead of reusing the old runs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Orthogonality:
    """Soft orthogonality of the conv kernels (Bansal et al., NeurIPS 2018, "Can we gain more from
    orthogonality regularizations in training deep CNNs?"): weight * sum over conv layers of
    ||W W^T - I||_F^2, with W the layer's kernel as a (out_channels, in_channels * k * k) matrix. It keeps
    the filters of a layer decorrelated, which the paper finds speeds up training and helps accuracy."""

    def __init__(self, weight: float = 1e-4) -> None:
        if weight < 0:
            raise ValueError(f"weight={weight} must be >= 0")
        self.weight = weight
        self.kernels: list[Tensor] = []

    def start(self, model: nn.Module, task) -> None:
        """Once, before training: find the kernels (the model's own parameters, so they follow it)."""
        self.kernels = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not self.kernels:
            raise ValueError("Orthogonality needs a model with nn.Conv2d layers")

    def penalty(self, model: nn.Module) -> Tensor:
        total = torch.zeros((), device=self.kernels[0].device)
        for kernel in self.kernels:
            w = kernel.flatten(1).float()
            gram = w @ w.T
            total = total + (gram - torch.eye(len(gram), device=gram.device)).square().sum()
        return self.weight * total


class WeightNoise:
    """Gaussian noise on the weights after every optimizer step (a hook with a state of its own): its
    random generator is checkpointed, so a resumed run draws the same noise as one that never stopped."""

    def __init__(self, std: float = 1e-3, seed: int = 0) -> None:
        self.std, self.seed = std, seed
        self.generator: torch.Generator | None = None

    def start(self, model: nn.Module, task) -> None:
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(self.seed)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for p in model.parameters():
            if p.ndim > 1:
                p.add_(torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype), alpha=self.std)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
