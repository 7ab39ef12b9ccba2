"""Calibration of a classifier's probabilities: negative log-likelihood, expected calibration error and
the Brier score, accumulated batch by batch on the device (nothing waits for the host until the end).

Definitions (the usual ones, so numbers compare with papers):
- NLL: mean of -log p(true class).
- ECE (Guo et al. 2017): the top-label confidence (max probability) of each example falls into one of
  ECE_BINS equal-width bins (0, 1/15], (1/15, 2/15], ..., (14/15, 1]; ECE = sum over bins of
  (examples in bin / N) * |accuracy in bin - mean confidence in bin|.
- Brier: mean over examples of sum over classes of (p_c - [c = true class])^2, in [0, 2].
Written here because the definitions are a few lines and the libraries that have them (torchmetrics,
netcal) would be a dependency for one function each; tests check them against hand-computed values."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ECE_BINS = 15


class CalibrationSums:
    """Running sums over batches of probabilities, on one device."""

    def __init__(self, device: torch.device, bins: int = ECE_BINS) -> None:
        self.bins = bins
        self.n = torch.zeros((), device=device, dtype=torch.float64)
        self.nll = torch.zeros((), device=device, dtype=torch.float64)
        self.brier = torch.zeros((), device=device, dtype=torch.float64)
        self.bin_count = torch.zeros(bins, device=device, dtype=torch.float64)
        self.bin_confidence = torch.zeros(bins, device=device, dtype=torch.float64)
        self.bin_correct = torch.zeros(bins, device=device, dtype=torch.float64)

    def add(self, probs: Tensor, labels: Tensor, weights: Tensor | None = None) -> None:
        """probs (N, C) rows summing to 1, labels (N,) class indices; `weights` (N,) of 1 and 0 leaves rows
        out without selecting them (selecting by a mask would make the host wait for the device)."""
        probs = probs.double()
        w = torch.ones(len(labels), device=probs.device, dtype=torch.float64) if weights is None else weights.double()
        true = probs.gather(1, labels[:, None]).squeeze(1)
        self.n += w.sum()
        self.nll -= (w * true.clamp_min(torch.finfo(torch.float64).tiny).log()).sum()
        self.brier += (w * (probs.square().sum(1) - 2 * true + 1)).sum()
        confidence, predicted = probs.max(1)
        index = bin_index(confidence, self.bins)
        self.bin_count.scatter_add_(0, index, w)
        self.bin_confidence.scatter_add_(0, index, w * confidence)
        self.bin_correct.scatter_add_(0, index, w * (predicted == labels).double())

    def result(self) -> dict[str, float]:
        n = max(float(self.n), 1.0)
        gap = (self.bin_correct - self.bin_confidence).abs().sum()  # sum_b n_b |acc_b - conf_b|
        return {"nll": float(self.nll) / n, "ece": float(gap) / n, "brier": float(self.brier) / n}


def bin_index(confidence: Tensor, bins: int = ECE_BINS) -> Tensor:
    """The bin (lower, upper] each confidence falls in, 0-based."""
    return (confidence * bins).ceil().long().clamp(1, bins) - 1


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """NLL, ECE and Brier of probabilities on the host (test_outputs.npz, ensembles)."""
    sums = CalibrationSums(torch.device("cpu"), bins)
    sums.add(torch.as_tensor(probs), torch.as_tensor(labels, dtype=torch.long))
    return sums.result()


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per bin: examples, mean confidence and accuracy (NaN where a bin is empty), for the diagram."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    index = bin_index(torch.as_tensor(confidence), bins).numpy()
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=(predicted == labels).astype(float), minlength=bins) / count
    return {"count": count, "confidence": mean_confidence, "accuracy": accuracy,
            "edges": np.linspace(0, 1, bins + 1)}
