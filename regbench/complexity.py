"""Cost figures of a model: parameters, forward FLOPs per example, inference latency, size, peak memory.
`model_costs` and `latency` give them under the run record's keys (regbench.record).

FLOPs here are floating-point operations with one multiply-add counted as 2 (so MACs = FLOPs / 2)."""
from __future__ import annotations

import io
import resource
import statistics
import sys
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def state_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict as torch.save writes it: the size of a weights-only checkpoint."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _lstm_flops(module: nn.LSTM, inputs: tuple, flops: list[int]) -> None:
    """FlopCounterMode does not see inside the fused LSTM kernels: count their matrix products by hand,
    2 * 4 gates * (input + hidden) * hidden per token, direction and layer."""
    data = inputs[0].data if isinstance(inputs[0], torch.nn.utils.rnn.PackedSequence) else inputs[0]
    tokens = data.shape[0] if data.dim() == 2 else data.shape[0] * data.shape[1]
    directions = 2 if module.bidirectional else 1
    size_in = module.input_size
    for _ in range(module.num_layers):
        flops[0] += 2 * 4 * (size_in + module.hidden_size) * module.hidden_size * tokens * directions
        size_in = module.hidden_size * directions


@torch.no_grad()
def forward_flops(model: nn.Module, example: Tensor | tuple[Tensor, ...]) -> int:
    """FLOPs of one forward pass on one example (multiply-add = 2 FLOPs): PyTorch's FlopCounterMode
    over the ops that dominate (matmul, conv, ...), plus LSTM layers counted by hand; in eval mode.

    FlopCounterMode sees nothing inside the fused CPU/cuDNN LSTM kernels (it counts 0), but does see
    the decomposed matmuls on some backends (meta): whatever it attributes to an LSTM module is
    replaced by the analytic count, so an LSTM is counted exactly once on every device."""
    was_training = model.training
    model.eval()
    lstm_flops = [0]
    lstm_names = [f"{type(model).__name__}.{name}" for name, m in model.named_modules()
                  if isinstance(m, nn.LSTM) and name]
    hooks = [m.register_forward_pre_hook(lambda mod, inp: _lstm_flops(mod, inp, lstm_flops))
             for m in model.modules() if isinstance(m, nn.LSTM)]
    try:
        with FlopCounterMode(display=False) as counter:
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    counts = counter.get_flop_counts()
    seen_in_lstm = sum(sum(counts.get(name, {}).values()) for name in lstm_names)
    return int(counter.get_total_flops()) - int(seen_in_lstm) + lstm_flops[0]


def _memory_format(t: Tensor) -> torch.memory_format:
    """channels_last when `t` is laid out that way (a CIFAR batch on the GPU), else the plain layout."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def repeat_batch(example: Tensor | tuple[Tensor, ...], size: int) -> Tensor | tuple[Tensor, ...]:
    """A batch of `size` copies of a one-example input (every input tensor has the batch first), in the
    example's own memory layout: latency must be timed on the layout the run trains and evaluates on."""
    if isinstance(example, tuple):
        return tuple(repeat_batch(t, size) for t in example)
    return example.expand(size, *example.shape[1:]).contiguous(memory_format=_memory_format(example))


@torch.no_grad()
def inference_latency(model: nn.Module, batch: Tensor | tuple[Tensor, ...], device: torch.device,
                      autocast: torch.autocast, warmup: int = 1, repeats: int = 10,
                      max_seconds: float = 10.0) -> tuple[float | None, int]:
    """(median seconds of one forward pass over `batch` in eval mode, number of timed passes).

    Warm-up passes are not timed (allocator, cuDNN autotuning, lazy init); timing stops after
    `repeats` passes or once `max_seconds` are spent, but never before 3 passes."""
    if repeats <= 0:
        return None, 0
    was_training = model.training
    model.eval()
    call = (lambda: model(*batch)) if isinstance(batch, tuple) else (lambda: model(batch))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    try:
        with autocast:
            for _ in range(warmup):
                call()
            sync()
            started = time.perf_counter()
            while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < max_seconds):
                t0 = time.perf_counter()
                call()
                sync()
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return statistics.median(times), len(times)


def model_costs(model: nn.Module, example: Tensor | tuple[Tensor, ...]) -> dict[str, int]:
    """The record's size figures: params, params_trainable, model_size_bytes, flops_per_example."""
    return {"params": count_parameters(model), "params_trainable": count_parameters(model, trainable_only=True),
            "model_size_bytes": state_size_bytes(model), "flops_per_example": forward_flops(model, example)}


def latency(model: nn.Module, example: Tensor | tuple[Tensor, ...], device: torch.device, autocast: torch.autocast,
            *, batch_size: int, warmup: int, repeats: int, max_seconds: float) -> dict[str, Any]:
    """The record's latency figures for a batch of `batch_size` copies of `example`."""
    seconds, timed = inference_latency(model, repeat_batch(example, batch_size), device, autocast, warmup=warmup,
                                       repeats=repeats, max_seconds=max_seconds)
    return {"latency_s_per_batch": None if seconds is None else round(seconds, 6), "latency_batch_size": batch_size,
            "latency_repeats": timed}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA's peak allocated tensor memory, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"
