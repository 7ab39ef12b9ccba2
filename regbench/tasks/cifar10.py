"""CIFAR-10 image classification: the whole uint8 dataset lives on the run's device, batches are
cut and augmented there with tensor ops (no DataLoader), so the GPU never waits on the host."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks
from regbench.data import cifar10 as cifar10_data
from regbench.errors import ConfigError
from regbench.regimen import Regimen
from regbench.tasks import image_augment
from regbench.tasks.base import Task


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices shuffled within each class and interleaved class by class, so every prefix is
    (nearly) class-balanced: the first N images are a stratified sample for any N."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rank = np.concatenate([np.arange(len(p)) for p in per_class])
    cls = np.concatenate([np.full(len(p), i) for i, p in enumerate(per_class)])
    order = np.lexsort((cls, rank))  # by rank within class, then class
    return np.concatenate(per_class)[order]


class Cifar10Task(Task):
    name = "cifar10"
    primary_metric = "accuracy"
    models = ("cnn13",)
    num_classes = 10
    fixed_input_shapes = True  # every batch is (batch_size, 3, 32, 32): the last partial batch is dropped

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        checks.choice(cfg, "data.source", cifar10_data.SOURCES)
        checks.boolean(cfg, "data.download")
        checks.number(cfg, "data.val_size", low=1, high=49000, integer=True)
        checks.number(cfg, "data.split_seed", low=0, integer=True)
        checks.number(cfg, "data.train_eval_size", low=1, integer=True)
        checks.number(cfg, "data.augment.crop_padding", low=0, high=16, integer=True)
        checks.boolean(cfg, "data.augment.hflip")
        checks.number(cfg, "data.augment.cutout", low=0, high=32, integer=True)
        checks.number(cfg, "data.augment.color_jitter", low=0, high=1, high_open=True)
        checks.number(cfg, "data.augment.rotation", low=0, high=180)

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        cifar10_data.check(Path(cfg.paths.data_dir), Path(cfg.paths.cache_dir), cfg.data.source, cfg.data.download)

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        dcfg = cfg.data
        arrays = cifar10_data.load(Path(cfg.paths.data_dir), Path(cfg.paths.cache_dir), dcfg.source, dcfg.download)
        self.source = arrays.source
        order = balanced_order(arrays.train_y, dcfg.split_seed)
        val_idx, train_idx = order[: dcfg.val_size], order[dcfg.val_size:]
        if dcfg.limit_train:
            train_idx = train_idx[: dcfg.limit_train]
        test_idx = balanced_order(arrays.test_y, dcfg.split_seed)
        if dcfg.limit_eval:
            val_idx, test_idx = val_idx[: dcfg.limit_eval], test_idx[: dcfg.limit_eval]
        train_x = arrays.train_x[train_idx]
        # Normalisation statistics from the training split only.
        self.mean = torch.tensor(train_x.mean(axis=(0, 1, 2)) / 255.0, dtype=torch.float32, device=device)
        self.std = torch.tensor(train_x.std(axis=(0, 1, 2), dtype=np.float64) / 255.0, dtype=torch.float32,
                                device=device)
        self.splits: dict[str, tuple[Tensor, Tensor]] = {
            "train": self._to_device(train_x, arrays.train_y[train_idx]),
            "val": self._to_device(arrays.train_x[val_idx], arrays.train_y[val_idx]),
            "test": self._to_device(arrays.test_x[test_idx], arrays.test_y[test_idx]),
        }
        self.train_eval_size = min(dcfg.train_eval_size, len(train_idx))
        if len(train_idx) == 0:
            raise ConfigError("the training split is empty: lower data.val_size or raise data.limit_train")

    def _to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()  # NCHW uint8
        return images.to(self.device), torch.from_numpy(y).to(self.device)

    def model_inputs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_channels": 3}

    def build_model(self, regimen: Regimen) -> nn.Module:
        # channels_last lets cuDNN use its fastest (tensor-core) convolution kernels on the GPU.
        return super().build_model(regimen).to(memory_format=self.memory_format)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.device.type == "cuda" else torch.contiguous_format

    def _normalise(self, images: Tensor) -> Tensor:
        x = (images - self.mean[:, None, None]) / self.std[:, None, None]
        return x.contiguous(memory_format=self.memory_format)

    def num_train_batches(self) -> int:
        n, bs = len(self.splits["train"][1]), self.cfg.trainer.batch_size
        return max(1, n // bs)  # drop the last partial batch: a batch of one breaks BatchNorm

    def train_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        images, labels = self.splits["train"]
        aug = self.cfg.data.augment
        bs = self.cfg.trainer.batch_size
        perm = torch.randperm(len(labels), generator=generator, device=generator.device)
        for b in range(self.num_train_batches()):
            idx = perm[b * bs:(b + 1) * bs]
            x = images[idx].float().div_(255.0)
            if aug.crop_padding:
                x = image_augment.random_crop(x, aug.crop_padding, generator)
            if aug.hflip:
                x = image_augment.random_hflip(x, generator)
            if aug.color_jitter:
                x = image_augment.color_jitter(x, aug.color_jitter, generator)
            if aug.rotation:
                x = image_augment.random_rotation(x, aug.rotation, generator)
            if aug.cutout:  # cutout zeroes after normalisation, i.e. fills with the mean colour
                x = image_augment.cutout(self._normalise(x), aug.cutout, generator)
            else:
                x = self._normalise(x)
            yield x, labels[idx]

    def training_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"loss_sum": loss.detach() * len(y), "correct": (logits.argmax(1) == y).sum(),
                      "count": torch.full((), len(y), device=y.device)}

    def loss_names(self) -> dict[str, str]:
        return {"train": "cross-entropy", "val": "cross-entropy"}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / sums["count"], "accuracy": sums["correct"] / sums["count"]}

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        images, labels = self.splits[split]
        if split == "train":
            images, labels = images[: self.train_eval_size], labels[: self.train_eval_size]
        bs = self.cfg.trainer.eval_batch_size
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for start in range(0, len(labels), bs):
            x = self._normalise(images[start:start + bs].float().div_(255.0))
            y = labels[start:start + bs]
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = max(1, len(labels))
        return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n}

    def example_input(self) -> Tensor:
        return self._normalise(self.splits["train"][0][:1].float().div_(255.0))

    def data_summary(self) -> dict[str, Any]:
        return {"source": self.source, "n_train": len(self.splits["train"][1]), "n_val": len(self.splits["val"][1]),
                "n_test": len(self.splits["test"][1]), "n_train_eval": self.train_eval_size}
