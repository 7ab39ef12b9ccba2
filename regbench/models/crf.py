"""A linear-chain CRF: negative log-likelihood by the forward algorithm and Viterbi decoding, both
vectorised over the batch. Written by hand because torch has no CRF and the small third-party ones
(pytorch-crf) add nothing this short module needs.

On a GPU a tagging step is bound by kernel launches, and the CRF loops over time steps in Python, so
every op inside those loops counts. Three things keep them few:
- Each step t >= 1 is one (K, K) matrix of log-potentials, transitions[i, j] + emissions[t, j], built
  for all steps at once. A padded step gets the identity of the log semiring (0 on the diagonal,
  -inf elsewhere), which carries every state through unchanged: the loops need no mask, and a path
  ends at each sequence's own last token without any bookkeeping.
- The forward algorithm runs in scaled probability space (the scaled HMM forward pass): one batched
  matrix product and one normalisation per step, instead of a log-sum-exp (about nine kernels). The
  scale factors are constants to autograd (log Z is exact for any constants), so they cost nothing in
  the backward pass. Underflow cannot happen: each step's matrix is divided by its own maximum, and
  the rows of a step's matrix differ only by their transition scores, so after normalising to sum 1
  the state mass shrinks by at most exp(-(max - min of the transitions)) per step.
- The score of the gold path is one gather from the same matrices.
"""
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

    def step_potentials(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """(B, T-1, K, K): log-potential of moving from tag i at t-1 to tag j at t, for t = 1..T-1;
        padded steps are the log-semiring identity. Every sequence starts at t=0."""
        emissions = emissions.float()
        k = self.num_tags
        identity = torch.full((k, k), float("-inf"), device=emissions.device).fill_diagonal_(0.0)
        step = self.transitions + emissions[:, 1:, None, :]
        return torch.where(mask[:, 1:, None, None], step, identity)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor, steps: Tensor | None = None) -> Tensor:
        """Unnormalised log-score of the tag sequences `tags` (B, T); mask (B, T) marks real tokens."""
        steps = self.step_potentials(emissions, mask) if steps is None else steps
        b, t_max = tags.shape
        k = self.num_tags
        first = self.start[tags[:, 0]] + emissions.float()[:, 0].gather(1, tags[:, :1]).squeeze(1)
        if t_max == 1:
            moves = first.new_zeros(b)
        else:  # one gather picks transition + emission of every step of every path
            pairs = tags[:, :-1] * k + tags[:, 1:]
            picked = steps.flatten(2).gather(2, pairs[..., None]).squeeze(2)
            moves = torch.where(mask[:, 1:], picked, 0.0).sum(1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
        return first + moves + self.end[last]

    def log_partition(self, emissions: Tensor, mask: Tensor, steps: Tensor | None = None) -> Tensor:
        """log Z for each sequence, by the scaled forward algorithm."""
        steps = self.step_potentials(emissions, mask) if steps is None else steps
        with torch.no_grad():  # constants to autograd: any constants leave log Z and its gradient exact
            first_max = (self.start + emissions[:, 0].float()).amax(1, keepdim=True)
            step_max = steps.amax((2, 3), keepdim=True)
            end_max = self.end.max()
        alpha = torch.exp(self.start + emissions[:, 0].float() - first_max)  # (B, K)
        probabilities = torch.exp(steps - step_max)
        scales = []
        for matrix in probabilities.unbind(1):  # unbind: one gradient stack, not one copy per step
            alpha = torch.bmm(alpha.unsqueeze(1), matrix).squeeze(1)
            with torch.no_grad():
                total = alpha.sum(1, keepdim=True)
            alpha = alpha / total
            scales.append(total)
        tail = (alpha * torch.exp(self.end - end_max)).sum(1)
        log_scales = torch.log(torch.cat(scales, 1)).sum(1) if scales else 0.0
        return torch.log(tail) + end_max + first_max.squeeze(1) + step_max.flatten(1).sum(1) + log_scales

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood of each sequence (B,)."""
        steps = self.step_potentials(emissions, mask)
        return self.log_partition(emissions, mask, steps) - self.score(emissions, tags, mask, steps)

    @torch.no_grad()
    def viterbi(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """The highest-scoring tag sequence for each sequence (B, T); padded positions hold 0. A padded
        step's identity potentials point every state back to itself, so backtracking from the last
        position starts at each sequence's own best last tag."""
        steps = self.step_potentials(emissions, mask)
        score = self.start + emissions[:, 0].float()
        backpointers = []
        for matrix in steps.unbind(1):
            score, best_from = (score[:, :, None] + matrix).max(dim=1)
            backpointers.append(best_from)
        current = (score + self.end).argmax(dim=1, keepdim=True)
        path = [current]
        for best_from in reversed(backpointers):
            current = best_from.gather(1, current)
            path.append(current)
        return torch.cat(path[::-1], 1) * mask
