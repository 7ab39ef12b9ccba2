"""A folder of your own images: `train/<class>/*` and `test/<class>/*`, optionally `val/<class>/*`.

Class folders sorted by name give the labels 0..K-1 (train decides the classes; test and val may leave
some out, but not add any). PNG and JPEG, any size and channel count: a folder of grayscale images
gives 1 channel, anything else is converted to RGB (3). Every image must have one square size, unless
`image_size` resizes them all to image_size x image_size. Decoded once into uint8 arrays and cached
under a key of the folder's content (every file's name, size and modification time, and image_size),
so an edited folder is decoded again; the runs of a grid that start together decode it once."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regbench.data.files import cached_file, writable_cache_dir
from regbench.errors import DataError
from regbench.fileio import locked, write_atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
GRAYSCALE_MODES = ("1", "L", "I", "I;16", "F")


@dataclass
class Folder:
    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]   # split -> (file, class index), sorted by class then name


def scan(root: Path) -> Folder:
    """The splits, classes and image files of `root`; DataError names what is missing or wrong."""
    root = Path(root).expanduser()
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"{root} is not an image folder: it needs train/<class>/ and test/<class>/ folders of "
                        "images (and optionally val/<class>/); set data.dir to such a folder")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders: put the images of each class in "
                        "train/<class>/")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        entries = []
        for name in sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if name not in classes:
                raise DataError(f"{folder / name}: class {name!r} has no folder in train/ (the classes are "
                                f"{', '.join(classes)})")
            images = sorted(f for f in (folder / name).iterdir() if f.is_file() and not f.name.startswith("."))
            if not images and split == "train":
                raise DataError(f"{folder / name} holds no images: every class needs training images")
            entries += [(f, classes.index(name)) for f in images]
        if not entries:
            raise DataError(f"{folder} holds no images in its class folders")
        files[split] = entries
    return Folder(classes, files)


def content_key(folder: Folder, image_size: int | None) -> str:
    """Names, sizes and modification times of every file, and the resize: an edit makes a new key."""
    digest = hashlib.sha256(f"image_size={image_size}".encode())
    for split, entries in folder.files.items():
        for path, label in entries:
            stat = path.stat()
            digest.update(f"{split}/{path.parent.name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _mode(path: Path) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.mode
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not an image regbench can read ({err}); remove it or convert it to PNG or "
                        "JPEG") from None


def _decode(path: Path, mode: str, image_size: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path} cannot be decoded ({err}); remove it or convert it to PNG or JPEG") from None
    return array[:, :, None] if array.ndim == 2 else array


def _stack(arrays: list[np.ndarray], paths: Iterable[Path]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        paths = list(paths)
        first = arrays[0].shape
        other = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise DataError(f"images of different sizes: {paths[0]} is {first[1]}x{first[0]}, {paths[other]} is "
                        f"{arrays[other].shape[1]}x{arrays[other].shape[0]}; set data.image_size=N to resize them "
                        "all to N x N")
    height, width = arrays[0].shape[:2]
    if height != width:  # models are told one image_size; a resize states the choice instead of guessing
        raise DataError(f"the images are {width}x{height}, not square (e.g. {next(iter(paths))}); set "
                        f"data.image_size=N to resize them all to N x N")
    return np.stack(arrays)


def decode(folder: Folder, image_size: int | None) -> dict[str, np.ndarray]:
    """x_<split> (N, H, W, C) uint8 and y_<split> (N,) int64 for every split of the folder."""
    every = [path for entries in folder.files.values() for path, _ in entries]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        modes = list(pool.map(_mode, every, chunksize=64))
        mode = "L" if all(m in GRAYSCALE_MODES for m in modes) else "RGB"
        images = list(pool.map(lambda p: _decode(p, mode, image_size), every, chunksize=64))
    stacked = _stack(images, every)  # one size for every split, or a clear error
    out, start = {}, 0
    for split, entries in folder.files.items():
        out[f"x_{split}"] = stacked[start:start + len(entries)]
        out[f"y_{split}"] = np.array([label for _, label in entries], dtype=np.int64)
        start += len(entries)
    return out


def load(root: Path, cache_dir: Path, image_size: int | None = None) -> tuple[Folder, dict[str, np.ndarray], str]:
    """(the folder, its arrays, where they came from), decoding at most once per content."""
    folder = scan(root)
    name = f"imagefolder-{content_key(folder, image_size)}.npz"
    cached = cached_file(Path(cache_dir), name)
    if cached is None:
        target = writable_cache_dir(Path(cache_dir))
        with locked(target / f".{name}.lock"):  # the runs of a grid that start together decode once
            cached = cached_file(Path(cache_dir), name)
            if cached is None:
                log.info("decoding the image folder %s (once; later runs use the cache)", root)
                arrays = decode(folder, image_size)
                write_atomic(target / name, lambda fh: np.savez(fh, **arrays))
                return folder, arrays, f"imagefolder:{Path(root).expanduser()}"
    with np.load(cached, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return folder, arrays, f"imagefolder:{Path(root).expanduser()}"
