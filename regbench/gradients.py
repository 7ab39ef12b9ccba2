"""Gradient diagnostics: global and per-layer gradient norms per step, summarised per epoch.

Vanishing and exploding gradients are one of the questions the study asks, so every run records them
in history.csv. Collecting them must not slow training down, so everything stays on the device: one
fused `torch._foreach_norm` over all gradients per step (the kernel `torch.nn.utils.get_total_norm`
uses itself), an `index_add_` that folds parameter norms into layer norms, and running sums that are
read once per epoch. The global norm computed here is the one gradient clipping uses, so clipping
costs no second pass over the gradients."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


# history.csv column prefixes of the per-layer statistics; compare's gradient-flow plot reads them.
LAYER_MEAN_PREFIX = "grad_layer_mean."
LAYER_MAX_PREFIX = "grad_layer_max."


@dataclass(frozen=True)
class Thresholds:
    vanishing_below: float  # a layer whose mean gradient norm over an epoch is below this is vanishing
    exploding_above: float  # a step whose global gradient norm is above this (or not finite) is exploding


def _layer_of(parameter_name: str) -> str:
    """The module that owns a parameter: "features.0.weight" -> "features.0"."""
    return parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


def layer_names(model: nn.Module) -> list[str]:
    """The trainable layers, in the order their parameters are registered (input side first): a layer
    is the module that owns a parameter, e.g. "features.0" for its weight and bias, "lstm" for all of
    an LSTM's gate matrices."""
    names: list[str] = []
    for name, param in model.named_parameters():
        layer = _layer_of(name)
        if param.requires_grad and layer not in names:
            names.append(layer)
    return names


class GradientMonitor:
    """Per-step gradient norms of one model, accumulated on its device and summarised per epoch."""

    def __init__(self, model: nn.Module, device: torch.device, thresholds: Thresholds, per_layer: bool = True):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._last_norm = torch.zeros((), device=device)
        self.layers = layer_names(model) if per_layer else []
        self.per_layer = per_layer
        self.thresholds = thresholds
        self.device = device
        if per_layer:
            index = {layer: i for i, layer in enumerate(self.layers)}
            owners = [index[_layer_of(name)] for name, p in model.named_parameters() if p.requires_grad]
            self._owner = torch.tensor(owners, device=device)
        self.start_epoch(0)

    def start_epoch(self, steps: int) -> None:
        self.global_norms = torch.zeros(steps, device=self.device)
        self.steps = 0
        if self.per_layer:
            n = len(self.layers)
            self._layer_sum = torch.zeros(n, device=self.device)
            self._layer_max = torch.zeros(n, device=self.device)

    def observe(self) -> Tensor:
        """Measure the current gradients (before clipping); return their global L2 norm as a device scalar."""
        grads = [p.grad for p in self.params]
        present = [g is not None for g in grads]
        if not all(present):  # a parameter unused in this step (e.g. a padding-only embedding row set)
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]
        param_norms = torch.stack(torch._foreach_norm(grads)).float()
        squares = param_norms.square()
        total = squares.sum().sqrt()
        if self.steps < len(self.global_norms):
            self.global_norms[self.steps] = total
        if self.per_layer:
            layer_norms = torch.zeros(len(self.layers), device=self.device).index_add_(0, self._owner, squares).sqrt()
            self._layer_sum += layer_norms
            torch.maximum(self._layer_max, layer_norms, out=self._layer_max)
        self.steps += 1
        self._last_norm = total
        return total

    def last_norm(self) -> Tensor:
        """The global L2 norm the last observe() measured (what gradient clipping by norm scales with)."""
        return self._last_norm

    def epoch_summary(self) -> dict[str, float]:
        """history.csv columns for the epoch just trained (one host read of everything)."""
        steps = max(min(self.steps, len(self.global_norms)), 1)
        norms = self.global_norms[:steps]
        finite = torch.isfinite(norms)
        exploding = (~finite | (norms > self.thresholds.exploding_above)).float().mean()
        summary = {"grad_norm_mean": norms.mean(), "grad_norm_max": norms.max(), "grad_norm_min": norms.min(),
                   "grad_exploding_rate": exploding}
        layer_means = layer_maxes = None
        if self.per_layer:
            layer_means, layer_maxes = self._layer_sum / steps, self._layer_max
        host = {k: float(v) for k, v in summary.items()}
        if layer_means is not None:
            means, maxes = layer_means.tolist(), layer_maxes.tolist()
            vanishing = sum(m < self.thresholds.vanishing_below for m in means)
            host["grad_vanishing_layers"] = vanishing
        else:
            vanishing = int(host["grad_norm_mean"] < self.thresholds.vanishing_below)
        host["grad_vanishing"] = int(vanishing > 0)
        host["grad_exploding"] = int(host["grad_exploding_rate"] > 0)
        if layer_means is not None:
            for layer, mean, peak in zip(self.layers, means, maxes):
                host[f"{LAYER_MEAN_PREFIX}{layer}"] = mean
                host[f"{LAYER_MAX_PREFIX}{layer}"] = peak
        return host


def run_summary(history: list[dict]) -> dict[str, float | int]:
    """Whole-run gradient facts for metrics.json (per-epoch detail is in history.csv)."""
    rows = [r for r in history if "grad_norm_max" in r]
    if not rows:
        return {}
    return {"norm_max": max(r["grad_norm_max"] for r in rows),
            "clip_rate": sum(r["clip_rate"] for r in rows) / len(rows),
            "vanishing_epochs": sum(int(r["grad_vanishing"]) for r in rows),
            "exploding_epochs": sum(int(r["grad_exploding"]) for r in rows)}
