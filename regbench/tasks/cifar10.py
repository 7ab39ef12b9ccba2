"""CIFAR-10 image classification (regbench.tasks.images does the work): 50k train, a stratified
validation split carved from it, 10k test, 10 classes, from any of CIFAR-10's usual forms."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from regbench import checks
from regbench.data import cifar10 as cifar10_data
from regbench.tasks.images import ImageArrays, ImageClassificationTask


class Cifar10Task(ImageClassificationTask):
    name = "cifar10"

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        super().validate_config(cfg)
        checks.choice(cfg, "data.source", cifar10_data.SOURCES)
        checks.number(cfg, "data.val_size", low=1, high=49000, integer=True)

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        cifar10_data.check(Path(cfg.paths.data_dir), Path(cfg.paths.cache_dir), cfg.data.source, cfg.data.download)

    def load_arrays(self) -> ImageArrays:
        d = self.cfg.data
        arrays = cifar10_data.load(Path(self.cfg.paths.data_dir), Path(self.cfg.paths.cache_dir), d.source, d.download)
        return ImageArrays(arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y,
                           classes=list(cifar10_data.CLASSES), source=arrays.source)
