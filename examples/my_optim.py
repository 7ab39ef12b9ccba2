"""An optimizer of your own in regbench: any torch.optim.Optimizer subclass, named by optimizer._target_.

    regbench optimizer=custom optimizer._target_=my_optim.Lion optimizer.lr=1e-4 optimizer.params.betas=[0.9,0.99]

(run it from this folder, or with it on PYTHONPATH). regbench calls Lion(param_groups, lr=...,
weight_decay=..., **optimizer.params), steps it, drives its lr with the schedule and checkpoints its state.
"""
from __future__ import annotations

import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an interpolation
    of the gradient and its momentum, so every weight moves by exactly lr per step; weight decay is applied
    decoupled, w -= lr * wd * w, as the paper does. The paper advises an lr 3-10x smaller than AdamW's."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"lr={lr} must be > 0 and betas={betas} in [0, 1)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                momentum = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(momentum * beta1 + p.grad * (1 - beta1)), alpha=-group["lr"])
                momentum.lerp_(p.grad, 1 - beta2)
        return loss
