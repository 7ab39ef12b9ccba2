"""Image classification on your own folder of images (task=imagefolder) and on the torchvision datasets
(task=cifar100, svhn, fashion_mnist, mnist). regbench.tasks.images does the training and scoring; these
only say where the arrays come from."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from omegaconf import DictConfig

from regbench import checks
from regbench.data import imagefolder, vision
from regbench.errors import ConfigError
from regbench.tasks.images import ImageArrays, ImageClassificationTask


class ImageFolderTask(ImageClassificationTask):
    """train/<class>/*, test/<class>/* (and optionally val/<class>/*) under data.dir."""

    name = "imagefolder"

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        super().validate_config(cfg)
        if not cfg.data.get("dir"):
            raise ConfigError("task=imagefolder needs data.dir=PATH: a folder with train/<class>/ and test/<class>/ "
                              "folders of images")
        checks.number(cfg, "data.image_size", low=1, integer=True, allow_none=True)

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        imagefolder.scan(Path(cfg.data.dir))

    def load_arrays(self) -> ImageArrays:
        d = self.cfg.data
        folder, arrays, source = imagefolder.load(Path(d.dir), Path(self.cfg.paths.cache_dir), d.image_size)
        has_val = "x_val" in arrays
        return ImageArrays(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                           classes=folder.classes, source=source, val_x=arrays["x_val"] if has_val else None,
                           val_y=arrays["y_val"] if has_val else None)


class VisionDatasetTask(ImageClassificationTask):
    """A torchvision dataset, in torchvision's layout under paths.data_dir/<task> (where a download goes) or
    paths.data_dir."""

    dataset: ClassVar[vision.Dataset]

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        vision.check(cls.dataset, cls.data_dirs(cfg), cfg.data.download)

    def load_arrays(self) -> ImageArrays:
        arrays = vision.load(self.dataset, self.data_dirs(self.cfg), self.cfg.data.download)
        return ImageArrays(arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y, classes=arrays.classes,
                           source=arrays.source)


class Cifar100Task(VisionDatasetTask):
    name = "cifar100"
    dataset = vision.DATASETS["cifar100"]


class SvhnTask(VisionDatasetTask):
    name = "svhn"
    dataset = vision.DATASETS["svhn"]


class FashionMnistTask(VisionDatasetTask):
    name = "fashion_mnist"
    dataset = vision.DATASETS["fashion_mnist"]


class MnistTask(VisionDatasetTask):
    name = "mnist"
    dataset = vision.DATASETS["mnist"]
