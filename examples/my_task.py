"""Your own task in regbench: regression of y = sin(x) + noise on data the task generates, with an MLP
whose BatchNorm and dropout the regimen places.

    regbench task=custom task._target_=my_task.SineRegression model=custom model._target_=my_task.build_mlp \\
        regularizer=bn_dropout data.n_train=512 model.hidden=64

(run it from this folder, or with it on PYTHONPATH). A task owns its data, batches, loss and metrics;
regbench's loop never looks inside them. What lives on the device: the data and every batch (so a
step never waits for the host), and the statistics a step returns, which the loop adds up on the device
and reads once per epoch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from regbench import checks
from regbench.tasks.base import Task


class SineRegression(Task):
    primary_metric = "rmse"        # a key of evaluate()'s result; best epoch and early stopping use it
    higher_is_better = False
    inputs = "sine_samples"        # what model_inputs() gives: no built-in model takes these ...
    accepts_custom_models = True   # ... a model of your own does (model=custom)
    data_keys = ("n_train", "n_eval", "noise", "split_seed")  # the data.* keys it reads; others are refused

    @classmethod
    def validate_config(cls, cfg) -> None:
        """Check the task's own keys before anything trains (one line naming key, value and what is allowed)."""
        for key in ("n_train", "n_eval"):
            if key in cfg.data:
                checks.number(cfg, f"data.{key}", low=10, integer=True)
        if "noise" in cfg.data:
            checks.number(cfg, "data.noise", low=0)

    def __init__(self, cfg, device: torch.device) -> None:
        super().__init__(cfg, device)
        d = cfg.data
        rng = np.random.default_rng(d.get("split_seed", 0))  # the data's own seed: every run sees the same data
        sizes = {"train": d.get("n_train", 512), "val": d.get("n_eval", 256), "test": d.get("n_eval", 256)}
        self.splits = {}
        for split, n in sizes.items():
            x = rng.uniform(-math.pi, math.pi, size=(n, 1)).astype(np.float32)
            y = np.sin(x) + d.get("noise", 0.1) * rng.standard_normal((n, 1)).astype(np.float32)
            self.splits[split] = (torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.float32)).to(device))

    def model_inputs(self) -> dict:
        """What the model factory needs to know, as keyword arguments."""
        return {"in_features": 1, "out_features": 1}

    def num_train_batches(self) -> int:
        return max(1, len(self.splits["train"][0]) // self.cfg.trainer.batch_size)

    def train_batches(self, generator: torch.Generator):
        """One epoch of batches on the device, in an order drawn from `generator` (the run's device RNG)."""
        x, y = self.splits["train"]
        bs = self.cfg.trainer.batch_size
        order = torch.randperm(len(x), generator=generator, device=generator.device)
        for b in range(self.num_train_batches()):
            idx = order[b * bs:(b + 1) * bs]
            yield x[idx], y[idx]

    def training_step(self, model: nn.Module, batch):
        """(the mean loss to minimise, statistics summed over the epoch, as device tensors)."""
        x, y = batch
        loss = nn.functional.mse_loss(model(x).float(), y)
        n = torch.full((), float(len(x)), device=x.device)
        return loss, {"loss_sum": loss.detach() * n, "count": n}

    def train_metrics(self, sums: dict) -> dict:
        """An epoch's summed statistics (read once, as floats) -> {"loss": ..., and the primary metric}."""
        mse = sums["loss_sum"] / sums["count"]
        return {"loss": mse, "rmse": math.sqrt(mse)}

    def evaluate(self, model: nn.Module, split: str) -> dict:
        """Metrics on "val", "test" or "train", in eval mode, under no_grad and always in fp32."""
        x, y = self.splits[split]
        mse = nn.functional.mse_loss(model(x).float(), y).item()
        return {"loss": mse, "rmse": math.sqrt(mse)}

    def example_input(self):
        """One example as the model takes it (FLOP counting, latency)."""
        return self.splits["train"][0][:1]

    def loss_names(self) -> dict:
        return {"train": "mean squared error", "val": "mean squared error"}

    def data_summary(self) -> dict:
        return {split: len(x) for split, (x, _) in self.splits.items()}


def build_mlp(*, regimen, in_features, out_features, hidden=64, depth=2):
    """An MLP with `depth` hidden layers, numbered 1..depth for the regimen (BN and dropout after each by
    default)."""
    everything = tuple(range(1, depth + 1))
    placement = regimen.place(depth, default_norm=everything, default_dropout=everything)
    layers, width = [], in_features
    for i in everything:
        layers += [nn.Linear(width, hidden), placement.norm(i, hidden, dims=1), nn.Tanh(), placement.dropout(i)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, out_features))
