"""Cost figures of a model: parameters, forward FLOPs per example, peak memory."""
from __future__ import annotations

import resource
import sys

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    over the ops that dominate (matmul, conv, ...), plus LSTM layers counted by hand; in eval mode."""
    was_training = model.training
    model.eval()
    lstm_flops = [0]
    hooks = [m.register_forward_pre_hook(lambda mod, inp: _lstm_flops(mod, inp, lstm_flops))
             for m in model.modules() if isinstance(m, nn.LSTM)]
    try:
        with FlopCounterMode(display=False) as counter:
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return int(counter.get_total_flops()) + lstm_flops[0]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA's peak allocated tensor memory, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"
