"""Full-ranking top-K metrics with binary relevance, as RecBole defines them.

For a user with R relevant items and hit_i = 1 when the item at rank i (1-based) is relevant:
  Hit@K       = 1 if any hit in the top K
  Precision@K = hits@K / K
  Recall@K    = hits@K / R
  MRR@K       = 1 / rank of the first hit within the top K (0 without one)
  NDCG@K      = sum_i hit_i / log2(i + 1) over the top K, divided by the ideal DCG over min(R, K) hits.
Each is averaged over the users with R > 0. Ties in score are broken towards the lower item index
(a stable sort), so a run is reproducible even for a popularity ranking full of ties.
"""
from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("hit", "precision", "recall", "mrr", "ndcg")


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the k best items per row, ties to the lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def per_user_metrics(hits: Tensor, n_relevant: Tensor, ks: list[int]) -> dict[str, Tensor]:
    """hits: (U, max K) bool, hit at each rank; n_relevant: (U,). Returns "<metric>@<k>" -> (U,) values."""
    hits = hits.float()
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float32)
    discounts = 1.0 / torch.log2(ranks + 1)
    n_rel = n_relevant.float().clamp(min=1)
    first_hit = torch.where(hits.any(1), hits.argmax(1).float() + 1, torch.full_like(n_rel, float("inf")))
    out: dict[str, Tensor] = {}
    for k in ks:
        h = hits[:, :k]
        n_hits = h.sum(1)
        ideal = torch.cumsum(discounts[:k], 0)[(n_relevant.clamp(min=1, max=k) - 1).long()]
        out[f"hit@{k}"] = (n_hits > 0).float()
        out[f"precision@{k}"] = n_hits / k
        out[f"recall@{k}"] = n_hits / n_rel
        out[f"mrr@{k}"] = torch.where(first_hit <= k, 1.0 / first_hit, torch.zeros_like(n_rel))
        out[f"ndcg@{k}"] = (h * discounts[:k]).sum(1) / ideal
    return out
