"""A linear-chain CRF: negative log-likelihood by the forward algorithm and Viterbi decoding, both
vectorised over the batch (one loop over time steps). Written by hand because torch has no CRF and
the small third-party ones (pytorch-crf) add nothing this short module needs."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class CRF(nn.Module):
    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.empty(num_tags))
        self.end = nn.Parameter(torch.empty(num_tags))
        for p in (self.transitions, self.start, self.end):
            nn.init.uniform_(p, -0.1, 0.1)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Unnormalised log-score of the tag sequences `tags` (B, T); mask (B, T) marks real tokens
        and every sequence starts at t=0."""
        emissions = emissions.float()
        maskf = mask.float()
        batch = torch.arange(tags.shape[0], device=tags.device)
        s = self.start[tags[:, 0]] + emissions[batch, 0, tags[:, 0]]
        for t in range(1, tags.shape[1]):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[batch, t, tags[:, t]]
            s = s + step * maskf[:, t]
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
        return s + self.end[last]

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """log Z for each sequence, by the forward algorithm."""
        emissions = emissions.float()
        alpha = self.start + emissions[:, 0]  # (B, K)
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha[:, :, None] + self.transitions[None] + emissions[:, t, None, :], dim=1)
            alpha = torch.where(mask[:, t, None], nxt, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood of each sequence (B,)."""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    @torch.no_grad()
    def viterbi(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """The highest-scoring tag sequence for each sequence (B, T); padded positions hold 0."""
        emissions = emissions.float()
        b, t_max, _ = emissions.shape
        score = self.start + emissions[:, 0]
        backpointers = []
        for t in range(1, t_max):
            candidates = score[:, :, None] + self.transitions[None]  # (B, from, to)
            best, idx = candidates.max(dim=1)
            backpointers.append(idx)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        lengths = mask.sum(1)
        current = (score + self.end).argmax(dim=1)
        out = torch.zeros(b, t_max, dtype=torch.long, device=emissions.device)
        for t in range(t_max - 1, -1, -1):
            inside = t < lengths
            out[:, t] = torch.where(inside, current, torch.zeros_like(current))
            if t > 0:
                previous = backpointers[t - 1].gather(1, current[:, None]).squeeze(1)
                current = torch.where(inside, previous, current)
        return out
