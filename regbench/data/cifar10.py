"""CIFAR-10 from any of its usual forms, decoded once into uint8 arrays and cached.

Sources (all give identical tensors up to the JPEG re-encoding of the image-folder copies):
  - torchvision's files: `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/`;
  - an image folder `cifar10-jpeg/{train,test}/<class>/*.jpg|png`, or a tar (.tar, .tar.gz) of one;
  - a torchvision download, when `data.download=true` and the machine is online.
Class folders sorted alphabetically give the official label indices 0..9.
"""
from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regbench.data.files import cached_file, unsafe_member, writable_cache_dir
from regbench.fileio import locked, write_atomic
from regbench.errors import DataError

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TORCHVISION_ARCHIVE = "cifar-10-python.tar.gz"
TORCHVISION_DIR = "cifar-10-batches-py"
IMAGEFOLDER_NAMES = ("cifar10-jpeg", "cifar10")
IMAGEFOLDER_ARCHIVES = ("cifar10-jpeg.tar", "cifar10-jpeg.tar.gz", "cifar10-jpeg.tgz")
CACHE_NAME = "cifar10-uint8.npz"
LOCK_NAME = ".cifar10-uint8.lock"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SOURCES = ("auto", "cache", "torchvision", "imagefolder")


@dataclass
class Cifar10Arrays:
    train_x: np.ndarray  # (50000, 32, 32, 3) uint8
    train_y: np.ndarray  # (50000,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


def accepted_files_message(dirs: list[Path], download: bool = False) -> str:
    where = " or ".join(str(d) for d in dirs)
    how = "" if download else " Or set data.download=true on a machine that is online."
    return (f"CIFAR-10 not found in {where}. Put one of these there: {TORCHVISION_ARCHIVE} or its extracted "
            f"{TORCHVISION_DIR}/ (the official python version, as torchvision downloads it); or an image folder "
            f"{IMAGEFOLDER_NAMES[0]}/ with train/<class>/*.jpg and test/<class>/*.jpg, or a tar of it "
            f"({', '.join(IMAGEFOLDER_ARCHIVES)}).{how} The data folder is paths.data_dir (env REGBENCH_DATA).")


def search_dirs(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "cifar10"]


def find_source(data_dir: Path, source: str = "auto") -> tuple[str, Path] | None:
    """(kind, path) of the first CIFAR-10 copy on disk that `source` allows: torchvision's files, an image
    folder, or a tar of one; None when there is none."""
    dirs = search_dirs(Path(data_dir))
    if source in ("auto", "torchvision"):
        for d in dirs:
            if (d / TORCHVISION_DIR).is_dir() or (d / TORCHVISION_ARCHIVE).is_file():
                return "torchvision", d
    if source in ("auto", "imagefolder"):
        for d in dirs:
            for name in IMAGEFOLDER_NAMES:
                folder = d / name
                if (folder / "train").is_dir() and (folder / "test").is_dir():
                    return "folder", folder
            for name in IMAGEFOLDER_ARCHIVES:
                if (d / name).is_file():
                    return "tar", d / name
    return None


def check(data_dir: Path, cache_dir: Path, source: str = "auto", download: bool = True) -> None:
    """Raise DataError when load() could not get CIFAR-10: no cache, no copy on disk, no download allowed."""
    if source in ("auto", "cache") and cached_file(Path(cache_dir), CACHE_NAME) is not None:
        return
    if source == "cache":
        raise DataError(f"data.source=cache but {Path(cache_dir) / CACHE_NAME} does not exist: run once with "
                        "data.source=auto")
    if find_source(data_dir, source) is None and not (download and source in ("auto", "torchvision")):
        raise DataError(accepted_files_message(search_dirs(Path(data_dir))))


def load(data_dir: Path, cache_dir: Path, source: str = "auto", download: bool = True) -> Cifar10Arrays:
    """Load CIFAR-10 as uint8 arrays, decoding at most once per cache dir, even when many runs of a grid
    start at once on one machine: the first takes a lock and decodes, the others wait and read its cache."""
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    cached = cached_file(cache_dir, CACHE_NAME) if source in ("auto", "cache") else None
    if cached is not None:
        return _read_cache(cached)
    if source == "cache":
        raise DataError(f"data.source=cache but {cache_dir / CACHE_NAME} does not exist: run once with "
                        "data.source=auto")
    target = writable_cache_dir(cache_dir)
    with locked(target / LOCK_NAME):
        cached = cached_file(cache_dir, CACHE_NAME) if source == "auto" else None
        if cached is not None:  # another process decoded it while this one waited
            return _read_cache(cached)
        arrays = _load_uncached(data_dir, source, download)
        _write_cache(arrays, target / CACHE_NAME)
    return arrays


def _load_uncached(data_dir: Path, source: str, download: bool) -> Cifar10Arrays:
    found = find_source(data_dir, source)
    if found is not None:
        kind, path = found
        readers = {"torchvision": lambda: _from_torchvision(path, download=False),
                   "folder": lambda: _from_image_folder(path), "tar": lambda: _from_image_tar(path)}
        return readers[kind]()
    if download and source in ("auto", "torchvision"):
        return _from_torchvision(data_dir, download=True)
    raise DataError(accepted_files_message(search_dirs(data_dir)))


@contextmanager
def safe_tar_extraction() -> Iterator[None]:
    """torchvision extracts cifar-10-python.tar.gz with a plain extractall(); Python's "data" filter
    (PEP 706) makes it refuse members that are absolute, contain '..' or link out of the folder."""
    previous = tarfile.TarFile.extraction_filter
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
    try:
        yield
    finally:
        tarfile.TarFile.extraction_filter = previous


def _from_torchvision(root: Path, download: bool) -> Cifar10Arrays:
    from torchvision.datasets import CIFAR10

    log.info("reading CIFAR-10 (torchvision format) from %s%s", root, " (downloading if needed)" if download else "")
    try:
        # With the archive present, download=True only verifies its md5 and extracts: no network.
        has_archive = (root / TORCHVISION_ARCHIVE).is_file()
        with safe_tar_extraction():
            train = CIFAR10(str(root), train=True, download=download or has_archive)
        test = CIFAR10(str(root), train=False, download=False)
    except tarfile.FilterError as err:
        raise DataError(f"{root / TORCHVISION_ARCHIVE}: refusing to extract it: {err}") from None
    except (OSError, RuntimeError) as err:
        raise DataError(f"{accepted_files_message(search_dirs(root), download=download)} (torchvision said: "
                        f"{err})") from None
    return Cifar10Arrays(np.asarray(train.data, dtype=np.uint8), np.asarray(train.targets, dtype=np.int64),
                         np.asarray(test.data, dtype=np.uint8), np.asarray(test.targets, dtype=np.int64),
                         source=f"torchvision:{root}")


def _decode(blob: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # PIL raises many types for corrupt files
        raise DataError(f"cannot decode image {where}: {err}") from None
    if array.shape != (32, 32, 3):
        raise DataError(f"image {where} is {array.shape[1]}x{array.shape[0]}, CIFAR-10 images are 32x32")
    return array


def _split_and_label(parts: tuple[str, ...], where: str) -> tuple[str, int] | None:
    """('.../train/cat/0001.jpg') -> ('train', 3); None for files that are not images of a split."""
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-3] not in ("train", "test"):
        return None
    if parts[-2] not in CLASSES:
        raise DataError(f"{where}: class folder {parts[-2]!r} is not a CIFAR-10 class ({', '.join(CLASSES)})")
    return parts[-3], CLASSES.index(parts[-2])


def _assemble(items: Iterator[tuple[tuple[str, ...], bytes]], origin: str) -> Cifar10Arrays:
    """Decode (path parts, bytes) pairs into arrays, ordered by split, class, then file name."""
    keyed = []
    for parts, blob in items:
        split_label = _split_and_label(parts, f"{origin}:{'/'.join(parts)}")
        if split_label:
            keyed.append((split_label[0], split_label[1], parts[-1], "/".join(parts), blob))
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    if not keyed:
        raise DataError(f"{origin} holds no images under train/<class>/ or test/<class>/")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda k: _decode(k[4], f"{origin}:{k[3]}"), keyed, chunksize=256))
    out = {}
    for split in ("train", "test"):
        idx = [i for i, k in enumerate(keyed) if k[0] == split]
        if not idx:
            raise DataError(f"{origin} has no {split}/ images: expected {split}/<class>/*.jpg")
        out[f"{split}_x"] = np.stack([images[i] for i in idx])
        out[f"{split}_y"] = np.array([keyed[i][1] for i in idx], dtype=np.int64)
    log.info("decoded %d train and %d test images from %s", len(out["train_y"]), len(out["test_y"]), origin)
    return Cifar10Arrays(**out, source=f"imagefolder:{origin}")


def _from_image_folder(folder: Path) -> Cifar10Arrays:
    log.info("decoding CIFAR-10 image folder %s (once; later runs use the cache)", folder)

    def items() -> Iterator[tuple[tuple[str, ...], bytes]]:
        for path in sorted(folder.glob("*/*/*")):
            if path.is_file():
                yield path.relative_to(folder).parts, path.read_bytes()

    return _assemble(items(), str(folder))


def _from_image_tar(archive: Path) -> Cifar10Arrays:
    """Read images straight out of the tar: nothing is extracted, so no member can escape a folder."""
    log.info("decoding CIFAR-10 images from %s (once; later runs use the cache)", archive)

    def items() -> Iterator[tuple[tuple[str, ...], bytes]]:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    why = unsafe_member(member.name, member.issym() or member.islnk())
                    if why:
                        raise DataError(f"{archive}: member {member.name!r} is {why}; refusing the archive "
                                        "(a CIFAR-10 image folder holds only train/<class>/ and test/<class>/ files)")
                    if member.isfile():
                        fh = tar.extractfile(member)
                        yield tuple(Path(member.name).parts), fh.read()
        except (tarfile.TarError, EOFError, OSError) as err:
            reason = " ".join(str(err).split())  # one line: tarfile lists every method it tried on lines of their own
            raise DataError(f"{archive} is not a readable tar archive ({reason}); re-download or re-copy it") from None

    return _assemble(items(), str(archive))


def _read_cache(path: Path) -> Cifar10Arrays:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return Cifar10Arrays(npz["train_x"], npz["train_y"], npz["test_x"], npz["test_y"],
                                 source=str(npz["source"]))
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"the CIFAR-10 cache {path} is unreadable ({err}): delete it and it will be rebuilt") from None


def _write_cache(arrays: Cifar10Arrays, path: Path) -> None:
    write_atomic(path, lambda fh: np.savez(fh, train_x=arrays.train_x, train_y=arrays.train_y,
                                           test_x=arrays.test_x, test_y=arrays.test_y,
                                           source=np.array(arrays.source)))
    log.info("cached CIFAR-10 arrays in %s", path)
