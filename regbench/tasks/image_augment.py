"""Per-example image augmentation for a whole batch at once, on whatever device holds the batch.

Hand-written because torchvision's transforms draw one set of random parameters per call (per
batch), while training needs independent crops, flips and cutouts per example; doing it as tensor
ops on the batch (airbench-style) keeps the data on the GPU with no DataLoader."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# Random numbers are drawn on the generator's device (the run's device): a draw on the host followed by
# a copy would make the host wait for the GPU in every step.
def _uniform(n: int, gen: torch.Generator) -> Tensor:
    return torch.rand(n, generator=gen, device=gen.device)


def _integers(high: int, n: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, high, (n,), generator=gen, device=gen.device)


def random_crop(x: Tensor, padding: int, gen: torch.Generator) -> Tensor:
    """Zero-pad by `padding` and crop back to the original size at a random offset per example."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding,) * 4)
    dy = _integers(2 * padding + 1, b, gen)
    dx = _integers(2 * padding + 1, b, gen)
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    return padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: Tensor, gen: torch.Generator) -> Tensor:
    flip = _uniform(x.shape[0], gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def color_jitter(x: Tensor, strength: float, gen: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1-s, 1+s]; x in [0, 1]."""
    b = x.shape[0]

    def factor() -> Tensor:
        return (1 + (2 * _uniform(b, gen) - 1) * strength)[:, None, None, None]

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x.mean(1, keepdim=True)
    x = (x - gray) * factor() + gray
    return x.clamp_(0, 1)


def random_rotation(x: Tensor, max_degrees: float, gen: torch.Generator) -> Tensor:
    angle = (2 * _uniform(x.shape[0], gen) - 1) * (max_degrees * math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def cutout(x: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Zero a size x size square (clipped at the border) centred at a random pixel of each example."""
    b, _, h, w = x.shape
    dev = x.device
    cy = _integers(h, b, gen)
    cx = _integers(w, b, gen)
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    half = size // 2
    in_y = (ys >= (cy[:, None] - half)) & (ys < (cy[:, None] - half + size))
    in_x = (xs >= (cx[:, None] - half)) & (xs < (cx[:, None] - half + size))
    mask = in_y[:, None, :, None] & in_x[:, None, None, :]
    return x.masked_fill(mask, 0.0)
