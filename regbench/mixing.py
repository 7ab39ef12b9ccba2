"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch of images, on the device, with every
random number drawn from the run's generator (so a resumed run draws exactly what an uninterrupted one
would). Each image is mixed with its mirror in the batch (the batch reversed, as timm pairs them): the
batch order is already random. With both alphas > 0 each batch is one or the other, 50/50, as timm's
default `switch_prob`.

Written here rather than with torchvision.transforms.v2.MixUp/CutMix because those draw from torch's
global generator on the host (a host sync and another RNG per step), and torch's Beta sampler takes no
generator at all."""
from __future__ import annotations

import torch
from torch import Tensor

# Jöhnk's method accepts a pair with probability Γ(a+1)²/Γ(2a+1): >= 1/2 for alpha <= 1, so 256 pairs all fail
# with probability <= 2^-256 there. Above alpha = 1 the acceptance falls fast (1/6 at 2, 1.4% at 4, 0.04% at 8),
# and a fixed number of candidates would no longer be exact: there the ratio of two Gamma draws is used.
CANDIDATES = 256
JOHNK_MAX_ALPHA = 1.0


def sample_beta(alpha: float, generator: torch.Generator) -> Tensor:
    """One draw of Beta(alpha, alpha) as a 0-dim device tensor, without waiting for the device.

    alpha <= 1: Jöhnk's method. With U, V uniform, X = U^(1/alpha), Y = V^(1/alpha), the ratio X / (X + Y)
    given X + Y <= 1 is Beta(alpha, alpha). CANDIDATES pairs are drawn at once and the first accepted one is
    taken (in logs, in float64, so small alphas do not underflow); all of them fail with probability
    <= 2^-256, far below float64's resolution (the draw is then 0.5).
    alpha > 1: G1 / (G1 + G2) with G1, G2 ~ Gamma(alpha, 1), drawn by PyTorch's own rejection sampler
    (Marsaglia-Tsang, looping on the device until it accepts, so exact) from the run's generator. Runs at
    alpha <= 1 draw exactly the numbers they drew before this branch existed."""
    if alpha > JOHNK_MAX_ALPHA:
        shape = torch.full((2,), float(alpha), dtype=torch.float64, device=generator.device)
        # torch._standard_gamma is the kernel behind torch.distributions.Gamma; unlike the distribution it
        # takes a generator, so the draw comes from the run's own (resumable) stream.
        g = torch._standard_gamma(shape, generator=generator)
        return (g[0] / (g[0] + g[1])).float()
    u = torch.rand(2, CANDIDATES, generator=generator, device=generator.device, dtype=torch.float64)
    log_x, log_y = u.clamp_min(torch.finfo(torch.float64).tiny).log() / alpha
    accepted = torch.logaddexp(log_x, log_y) <= 0
    first = accepted.to(torch.uint8).argmax()
    lam = torch.sigmoid(log_x - log_y)[first]  # X / (X + Y)
    return torch.where(accepted.any(), lam, torch.full_like(lam, 0.5)).float()


def mixup(x: Tensor, lam: Tensor) -> Tensor:
    return lam * x + (1 - lam) * x.flip(0)


def cutmix(x: Tensor, lam: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Paste a box of each partner image, of (1 - lam) of the area, centred uniformly at random and clipped
    to the image (timm's rand_bbox); returns the images and the area share actually kept."""
    h, w = x.shape[-2:]
    centre = torch.rand(2, generator=generator, device=generator.device)
    ratio = (1 - lam).sqrt()
    half_h, half_w = (h * ratio).floor() / 2, (w * ratio).floor() / 2
    cy, cx = (centre[0] * h).floor(), (centre[1] * w).floor()
    top, bottom = (cy - half_h.floor()).clamp(0, h), (cy + half_h.floor()).clamp(0, h)
    left, right = (cx - half_w.floor()).clamp(0, w), (cx + half_w.floor()).clamp(0, w)
    rows = torch.arange(h, device=x.device)[:, None]
    cols = torch.arange(w, device=x.device)[None, :]
    box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    kept = 1 - (bottom - top) * (right - left) / (h * w)
    return torch.where(box, x.flip(0), x), kept.float()


def mix(x: Tensor, mixup_alpha: float, cutmix_alpha: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(mixed images, lam): the loss is lam * loss(y) + (1 - lam) * loss(y.flip(0))."""
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = torch.rand((), generator=generator, device=generator.device) < 0.5
        lam_m = sample_beta(mixup_alpha, generator)
        cut, lam_c = cutmix(x, sample_beta(cutmix_alpha, generator), generator)
        return torch.where(use_cutmix, cut, mixup(x, lam_m)), torch.where(use_cutmix, lam_c, lam_m)
    if mixup_alpha > 0:
        lam = sample_beta(mixup_alpha, generator)
        return mixup(x, lam), lam
    return cutmix(x, sample_beta(cutmix_alpha, generator), generator)
