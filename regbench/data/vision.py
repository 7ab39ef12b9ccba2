"""CIFAR-100, SVHN, Fashion-MNIST and MNIST in torchvision's on-disk layout: read from the files when they
are there, downloaded by torchvision when they are not and the machine is online.

The files are read here rather than through torchvision's dataset classes, which check every file's md5
against the official one before they read it: these readers take the official files as well as any copy
in the same format (the tests' tiny fixtures, a trimmed copy), and name the files and folder when
something is missing."""
from __future__ import annotations

import gzip
import logging
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regbench.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    name: str                 # the task's name
    title: str                # for messages
    files: tuple[str, ...]    # what must be on disk, relative to the folder torchvision downloads into
    torchvision_class: str    # the torchvision.datasets class that downloads it


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
MNIST_FILES = ("raw/train-images-idx3-ubyte", "raw/train-labels-idx1-ubyte", "raw/t10k-images-idx3-ubyte",
               "raw/t10k-labels-idx1-ubyte")
DATASETS = {
    "cifar100": Dataset("cifar100", "CIFAR-100", ("cifar-100-python/train", "cifar-100-python/test",
                                                  "cifar-100-python/meta"), "CIFAR100"),
    "svhn": Dataset("svhn", "SVHN", ("train_32x32.mat", "test_32x32.mat"), "SVHN"),
    "fashion_mnist": Dataset("fashion_mnist", "Fashion-MNIST", tuple(f"FashionMNIST/{f}" for f in MNIST_FILES),
                             "FashionMNIST"),
    "mnist": Dataset("mnist", "MNIST", tuple(f"MNIST/{f}" for f in MNIST_FILES), "MNIST"),
}


@dataclass
class Arrays:
    train_x: np.ndarray   # (N, H, W, C) uint8
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str


def _present(folder: Path, relative: str) -> Path | None:
    """The file, or its .gz (MNIST's raw files come either way)."""
    for candidate in (folder / relative, folder / f"{relative}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find(dataset: Dataset, dirs: list[Path]) -> Path | None:
    """The first folder of `dirs` that holds every file of the dataset (CIFAR-100's archive counts)."""
    for folder in dirs:
        if all(_present(folder, f) for f in dataset.files):
            return folder
        if dataset.name == "cifar100" and (folder / "cifar-100-python.tar.gz").is_file():
            return folder
    return None


def missing_message(dataset: Dataset, dirs: list[Path], download: bool, error: Exception | None = None) -> str:
    where = " or ".join(str(d) for d in dirs)
    files = ", ".join(dataset.files) + (" (or cifar-100-python.tar.gz)" if dataset.name == "cifar100" else "")
    message = f"{dataset.title} not found in {where}: put {files} there (torchvision's layout)"
    if error is not None:
        return f"{message}; the download failed ({error})"
    return message + ("" if download else ", or set data.download=true on a machine that is online")


def check(dataset: Dataset, dirs: list[Path], download: bool) -> None:
    if find(dataset, dirs) is None and not download:
        raise DataError(missing_message(dataset, dirs, download))


def load(dataset: Dataset, dirs: list[Path], download: bool) -> Arrays:
    folder = find(dataset, dirs)
    if folder is None:
        if not download:
            raise DataError(missing_message(dataset, dirs, download))
        folder = _download(dataset, dirs)
    reader = {"cifar100": _cifar100, "svhn": _svhn, "fashion_mnist": _mnist, "mnist": _mnist}[dataset.name]
    try:
        arrays = reader(dataset, folder)
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, struct.error) as err:
        raise DataError(f"{dataset.title} in {folder} cannot be read ({type(err).__name__}: {err}); re-download "
                        "it or replace the damaged file") from None
    log.info("read %s from %s: %d train and %d test images", dataset.title, folder, len(arrays.train_y),
             len(arrays.test_y))
    return arrays


def _download(dataset: Dataset, dirs: list[Path]) -> Path:
    import torchvision.datasets as tv

    from regbench.data.cifar10 import safe_tar_extraction

    root = dirs[0]
    log.info("downloading %s into %s", dataset.title, root)
    try:
        with safe_tar_extraction():
            cls = getattr(tv, dataset.torchvision_class)
            if dataset.name == "svhn":
                for split in ("train", "test"):
                    cls(str(root), split=split, download=True)
            else:
                for train in (True, False):
                    cls(str(root), train=train, download=True)
    except Exception as err:  # noqa: BLE001 - offline, a refused connection, a bad archive: one answer
        raise DataError(missing_message(dataset, dirs, True, err)) from None
    return root


# -- readers of each on-disk format --------------------------------------------------------------------
def _cifar100(dataset: Dataset, folder: Path) -> Arrays:
    base = folder / "cifar-100-python"
    if not base.is_dir():
        with tarfile.open(folder / "cifar-100-python.tar.gz") as tar:
            tar.extractall(folder, filter="data")

    def batch(name: str) -> dict:
        with open(base / name, "rb") as fh:
            return pickle.load(fh, encoding="latin1")

    def images(part: dict) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(part["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), np.asarray(part["fine_labels"], dtype=np.int64)

    train_x, train_y = images(batch("train"))
    test_x, test_y = images(batch("test"))
    return Arrays(train_x, train_y, test_x, test_y, list(batch("meta")["fine_label_names"]), f"cifar100:{base}")


def _svhn(dataset: Dataset, folder: Path) -> Arrays:
    from scipy.io import loadmat

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(folder / name)
        x = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2))  # (32,32,3,N) -> NHWC
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
        return x, y

    train_x, train_y = split("train_32x32.mat")
    test_x, test_y = split("test_32x32.mat")
    return Arrays(train_x, train_y, test_x, test_y, [str(d) for d in range(10)], f"svhn:{folder}")


def _idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): a magic number giving the type and rank, the dimensions, the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, kind, rank = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {array.size} values, its header says {shape}")
    return array.reshape(shape)


def _mnist(dataset: Dataset, folder: Path) -> Arrays:
    paths = [_present(folder, f) for f in dataset.files]
    train_x, train_y, test_x, test_y = (_idx(p) for p in paths)
    classes = list(FASHION_CLASSES) if dataset.name == "fashion_mnist" else [str(d) for d in range(10)]
    return Arrays(np.ascontiguousarray(train_x[..., None]), train_y.astype(np.int64),
                  np.ascontiguousarray(test_x[..., None]), test_y.astype(np.int64), classes,
                  f"{dataset.name}:{paths[0].parent}")
