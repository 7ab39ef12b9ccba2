"""One `seed` drives every random number generator a run touches."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return the generator for data order and augmentation.

    It lives on the run's device: drawing crops, flips, negatives and the batch order there means no
    random numbers are copied from host to device in a step (a blocking copy that makes the host wait
    for the GPU). On a CPU this is the same generator as ever."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
