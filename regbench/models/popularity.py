"""Popularity baseline: every user gets the items ranked by their number of training interactions.
It has no trainable parameters, so the runner scores it without a training loop."""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench.errors import ConfigError
from regbench.regimen import Regimen


class Popularity(nn.Module):
    def __init__(self, item_counts: Tensor) -> None:
        super().__init__()
        self.register_buffer("counts", item_counts.float())

    def user_vectors(self, users: Tensor) -> Tensor:
        return torch.ones(len(users), 1, device=self.counts.device)

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        return (self.counts if items is None else self.counts[items])[:, None]

    def logits(self, u: Tensor, v: Tensor) -> Tensor:
        return u @ v.T

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Score of each (user, item) pair: the item's count, whoever the user."""
        return self.counts[items]


def build(*, regimen: Regimen, item_counts: Tensor, users: object = None, items: object = None) -> Popularity:
    """`users` and `items` (the towers' inputs) are not needed: the ranking is the same for every user."""
    return Popularity(item_counts)


# What this model supports (regbench.models.Capabilities): the tasks whose Task.inputs are "interactions",
# and regularizer.stochastic_depth not (no residual blocks).
INPUTS = "interactions"
RESIDUAL_BLOCKS = False


def validate_config(cfg: DictConfig, regimen: Regimen) -> None:
    """Nothing is trained, so a regimen would change nothing: a regimen grid would record five identical
    runs under five labels. Only regularizer=none (or its equivalent) is accepted."""
    if regimen.uses_norm or regimen.uses_dropout or regimen.clip_mode != "none" or regimen.l1 > 0:
        raise ConfigError(f"model=popularity trains nothing, so regularizer={regimen.name} would change nothing: "
                          "use regularizer=none (and no clipping or penalty.l1)")
