"""What the best model keeps under compression, with no fine-tuning (trainer.compression):

- `prune: [f, ...]`: global magnitude pruning at each fraction f, with torch.nn.utils.prune's
  global_unstructured (L1): the f of all weights of the conv, linear, LSTM and embedding layers with the
  smallest magnitude, ranked together across layers, are set to 0. Biases and norm parameters stay.
- `int8: true`: post-training int8 weight quantization: every weight of those layers is stored as int8
  with one fp32 scale per output channel (symmetric, scale = max |w| / 127), and used dequantized.
  Written here rather than with torch.ao's dynamic quantization or torchao's Int8WeightOnlyConfig because
  both quantize only nn.Linear (torch.ao also LSTM): CNN-13's nine convs and ResNet-18's seventeen
  would stay fp32 and the number would say little. Dequantized use is what weight-only int8 kernels
  compute, so the metrics are the int8 model's (up to the order of float additions); `size_bytes` is the
  state_dict with those weights as int8 plus their scales.

Each setting's metrics are the task's test metrics of the compressed copy; the model itself is not
changed."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

COMPRESSED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.LSTM, nn.Embedding)


def compressible(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every weight that pruning and quantization act on."""
    out = []
    for module in model.modules():
        if isinstance(module, COMPRESSED_LAYERS):
            out += [(module, name) for name, p in module.named_parameters(recurse=False)
                    if "weight" in name and p.ndim > 1]
    return out


def pruned(model: nn.Module, fraction: float) -> nn.Module:
    """A copy of `model` with the `fraction` smallest-magnitude weights (globally) set to 0."""
    copied = copy.deepcopy(model)
    targets = compressible(copied)
    if fraction > 0 and targets:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=fraction)
        for module, name in targets:
            prune.remove(module, name)  # make the zeros permanent: a plain parameter again
    return copied


def zeroed_fraction(model: nn.Module) -> float:
    weights = [getattr(m, n) for m, n in compressible(model)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights)) / max(total, 1)


@torch.no_grad()
def int8_weights(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy whose compressible weights are int8-rounded per output channel, and the int8 model's size
    in bytes (int8 weights + fp32 scales + every other tensor of the state_dict at its own size)."""
    copied = copy.deepcopy(model)
    targets = compressible(copied)
    quantized = set()
    size = 0
    for module, name in targets:
        w = getattr(module, name)
        scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / 127
        w.copy_((w / scale).round().clamp(-127, 127) * scale)
        size += w.numel() + scale.numel() * 4
        quantized.add(id(w))
    for tensor in list(copied.parameters()) + list(copied.buffers()):
        if id(tensor) not in quantized:
            size += tensor.numel() * tensor.element_size()
    return copied, size


def compression_results(model: nn.Module, fractions: list[float], int8: bool,
                        evaluate: Callable[[nn.Module], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"prune@0.5": {metric: value, ..., "zeroed": fraction}, "int8": {metric: ..., "size_bytes": n}}."""
    out: dict[str, dict[str, Any]] = {}
    for fraction in fractions:
        smaller = pruned(model, fraction)
        out[f"prune@{fraction:g}"] = {**_scalars(evaluate(smaller)), "zeroed": round(zeroed_fraction(smaller), 6)}
    if int8:
        quantized, size = int8_weights(model)
        out["int8"] = {**_scalars(evaluate(quantized)), "size_bytes": size}
    return out


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}  # per-type breakdowns stay in test
