"""Image classification: CIFAR-10, a folder of your own images, and the torchvision datasets, on one path.
Each task only says where its uint8 arrays come from (`load_arrays`); this module does the rest the
same way for all: a stratified validation split with its own seed (carved from train unless the data
has one), normalisation statistics from train only, the whole dataset on the run's device, batches cut
and augmented there with tensor ops (no DataLoader), so the GPU never waits on the host."""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks
from regbench.calibration import CalibrationSums
from regbench.errors import ConfigError
from regbench.record import classification_outputs
from regbench.regimen import Regimen
from regbench.tasks import image_augment
from regbench.tasks.base import Task

REFERENCE_SIZE = 32  # data.augment's pixel sizes are for 32 x 32 images; other sizes scale the crop padding


@dataclass
class ImageArrays:
    train_x: np.ndarray          # (N, H, W, C) uint8
    train_y: np.ndarray          # (N,) int64, class indices
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str
    val_x: np.ndarray | None = None   # a validation split of the data's own (else carved from train)
    val_y: np.ndarray | None = None


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices shuffled within each class and interleaved class by class, so every prefix is
    (nearly) class-balanced: the first N images are a stratified sample for any N."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rank = np.concatenate([np.arange(len(p)) for p in per_class])
    cls = np.concatenate([np.full(len(p), i) for i, p in enumerate(per_class)])
    order = np.lexsort((cls, rank))  # by rank within class, then class
    return np.concatenate(per_class)[order]


def validation_count(val_size: float, n_train: int) -> int:
    """data.val_size as a count (>= 1) or as a fraction of the training images (0 < val_size < 1)."""
    return int(round(val_size * n_train)) if 0 < val_size < 1 else int(val_size)


class ImageClassificationTask(Task):
    primary_metric = "accuracy"
    metric_directions = {"accuracy": True}
    inputs = "images"  # cnn13, resnet18
    accepts_custom_models = True   # any factory that takes num_classes, in_channels and image_size
    regularizers = frozenset({"label_smoothing", "mixup", "cutmix"})
    fixed_input_shapes = True      # every batch is (batch_size, C, H, W): the last partial batch is dropped

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        if "download" in cfg.data:
            checks.boolean(cfg, "data.download")
        checks.number(cfg, "data.val_size", low=0, low_open=True)
        checks.number(cfg, "data.split_seed", low=0, integer=True)
        checks.number(cfg, "data.train_eval_size", low=1, integer=True)
        checks.number(cfg, "data.augment.crop_padding", low=0, high=16, integer=True)
        checks.boolean(cfg, "data.augment.hflip")
        checks.number(cfg, "data.augment.cutout", low=0, high=32, integer=True)
        checks.number(cfg, "data.augment.color_jitter", low=0, high=1, high_open=True)
        checks.number(cfg, "data.augment.rotation", low=0, high=180)

    @abstractmethod
    def load_arrays(self) -> ImageArrays:
        """The dataset as uint8 arrays, from wherever the task keeps it."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self._test_outputs: dict[str, Any] | None = None  # set by evaluate(model, "test")
        dcfg = cfg.data
        arrays = self.read_once("arrays", self.load_arrays)
        self.source, self.classes = arrays.source, list(arrays.classes)
        self.num_classes = len(self.classes)
        order = balanced_order(arrays.train_y, dcfg.split_seed)
        if arrays.val_x is None:  # carved from train, stratified, with the split's own seed
            n_val = validation_count(float(dcfg.val_size), len(order))
            if not 1 <= n_val < len(order):
                raise ConfigError(f"data.val_size={dcfg.val_size} leaves {len(order) - n_val} of {len(order)} "
                                  "training images for training: give a count or a fraction that leaves some")
            val_x, val_y, train_idx = arrays.train_x, arrays.train_y, order[n_val:]
            val_idx = order[:n_val]
        else:
            val_x, val_y, train_idx = arrays.val_x, arrays.val_y, order
            val_idx = balanced_order(arrays.val_y, dcfg.split_seed)
        if dcfg.get("limit_train"):
            train_idx = train_idx[: dcfg.limit_train]
        test_idx = balanced_order(arrays.test_y, dcfg.split_seed)
        if dcfg.get("limit_eval"):
            val_idx, test_idx = val_idx[: dcfg.limit_eval], test_idx[: dcfg.limit_eval]
        if len(train_idx) == 0:
            raise ConfigError("the training split is empty: lower data.val_size or raise data.limit_train")
        train_x = arrays.train_x[train_idx]
        # Normalisation statistics from the training split only.
        self.mean = torch.tensor(train_x.mean(axis=(0, 1, 2)) / 255.0, dtype=torch.float32, device=device)
        self.std = torch.tensor(train_x.std(axis=(0, 1, 2), dtype=np.float64) / 255.0, dtype=torch.float32,
                                device=device)
        self.splits: dict[str, tuple[Tensor, Tensor]] = {
            "train": self._to_device(train_x, arrays.train_y[train_idx]),
            "val": self._to_device(val_x[val_idx], val_y[val_idx]),
            "test": self._to_device(arrays.test_x[test_idx], arrays.test_y[test_idx]),
        }
        self.image_size = int(arrays.train_x.shape[1])
        self.in_channels = int(arrays.train_x.shape[3])
        self.train_eval_size = min(dcfg.train_eval_size, len(train_idx))
        self.crop_padding = int(round(dcfg.augment.crop_padding * self.image_size / REFERENCE_SIZE))

    def _to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()  # NCHW uint8
        return images.to(self.device), torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)

    def model_inputs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size}

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
            if self.crop_padding:
                x = image_augment.random_crop(x, self.crop_padding, generator)
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
            yield x, labels[idx]  # mixup/CutMix, when on, mix it in the loop (regbench.hooks.Mixing)

    def training_step(self, model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch[:2]
        logits = model(x).float()
        smoothing = self.regimen.label_smoothing
        count = torch.full((), len(y), device=y.device)
        if len(batch) == 4:  # mixup/CutMix: each row's label weighs lam, its partner's 1 - lam
            partner, lam = batch[2], batch[3]
            loss = (lam * F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
                    + (1 - lam) * F.cross_entropy(logits, partner, reduction="none", label_smoothing=smoothing)).mean()
            predicted = logits.argmax(1)
            correct = (lam * (predicted == y) + (1 - lam) * (predicted == partner)).sum()
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing) if smoothing else F.cross_entropy(logits, y)
            correct = (logits.argmax(1) == y).sum()
        return loss, {"loss_sum": loss.detach() * len(y), "correct": correct, "count": count}

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
        calibration = CalibrationSums(self.device)
        keep = split == "test" and bool(self.cfg.trainer.test_outputs)  # gathered only to be written
        test_probs = []
        for start in range(0, len(labels), bs):
            x = self._normalise(images[start:start + bs].float().div_(255.0))
            y = labels[start:start + bs]
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            probs = logits.softmax(1)
            calibration.add(probs, y)
            if keep:
                test_probs.append(probs)
        if keep:  # test_outputs.npz: the final model's test probabilities, in the test set's order
            self._test_outputs = classification_outputs(
                torch.cat(test_probs).cpu().numpy() if test_probs else np.zeros((0, self.num_classes), np.float32),
                labels.cpu().numpy())
        n = max(1, len(labels))
        return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n, **calibration.result()}

    def test_outputs(self) -> dict[str, Any] | None:
        return self._test_outputs

    def example_input(self) -> Tensor:
        return self._normalise(self.splits["train"][0][:1].float().div_(255.0))

    def data_summary(self) -> dict[str, Any]:
        return {"source": self.source, "n_train": len(self.splits["train"][1]), "n_val": len(self.splits["val"][1]),
                "n_test": len(self.splits["test"][1]), "n_train_eval": self.train_eval_size,
                "classes": self.num_classes, "image_size": self.image_size, "channels": self.in_channels}
