"""Popularity baseline: every user gets the items ranked by their number of training interactions.
It has no trainable parameters, so the runner scores it without a training loop."""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn


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


def build(cfg: DictConfig, *, item_counts: Tensor, **_: object) -> Popularity:
    return Popularity(item_counts)


def validate_config(cfg: DictConfig) -> None:
    """Nothing to choose."""
