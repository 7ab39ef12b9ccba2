"""An exponential moving average of a model's weights (regularizer.ema.decay), which validation, test
and the saved best weights use instead of the trained weights.

After every optimizer step, every floating-point tensor of the model's state (parameters and buffers,
BatchNorm's running statistics among them) moves towards the trained model's: ema <- ema + (1 - decay)
(w - ema). Averaging the BN statistics with the same decay is what timm's ModelEma does; it keeps them
consistent with the averaged weights without an extra pass over the data. Integer buffers (BN's batch
counter) are copied. The copy starts equal to the model.

Written here rather than with torch.optim.swa_utils.AveragedModel because that class reads its update
counter on the host at every step (`if self.n_averaged == 0`), which makes a GPU wait; this update is two
fused foreach kernels and never synchronises."""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        ours, theirs = self.module.state_dict(), model.state_dict()
        self._float = ([ours[k] for k in ours if ours[k].is_floating_point()],
                       [theirs[k] for k in ours if ours[k].is_floating_point()])
        self._other = ([ours[k] for k in ours if not ours[k].is_floating_point()],
                       [theirs[k] for k in ours if not ours[k].is_floating_point()])

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the model's current state (the tensors it was built from)."""
        torch._foreach_lerp_(self._float[0], self._float[1], 1.0 - self.decay)
        for mine, theirs in zip(*self._other):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
