"""Image classification beyond CIFAR-10: a folder of your own images (task=imagefolder) and the
torchvision datasets (task=cifar100, svhn, fashion_mnist, mnist), each read from tiny copies written
here in the dataset's real on-disk format."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regbench import runner
from regbench.data import imagefolder, vision
from regbench.errors import DataError
from regbench.tasks import task_class
from regbench.validation import validate

SMALL = ["model.width=0.0625", "trainer.max_epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=16",
         "data.train_eval_size=8", "trainer.progress=false", "trainer.device=cpu"]


def write_folder(root: Path, splits: dict[str, int], classes=("cat", "dog", "emu"), size=16, mode="L",
                 seed=0) -> Path:
    """root/<split>/<class>/NN.png, `splits[split]` images per class, class-dependent brightness."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for split, n in splits.items():
        for label, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(60 * label + rng.integers(0, 60, size=shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:02d}.png")
    return root


def make_task(compose_cfg, tmp_path, *overrides):
    cfg = compose_cfg(*SMALL, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'out'}",
                      *overrides)
    validate(cfg)
    return cfg, task_class(cfg)(cfg, torch.device("cpu"))


# -- your own folder of images ------------------------------------------------------------------------
@pytest.mark.integration
def test_a_grayscale_folder_trains_with_one_channel_and_a_carved_stratified_validation_split(compose_cfg, tmp_path):
    images = write_folder(tmp_path / "images", {"train": 8, "test": 2})
    cfg = compose_cfg("task=imagefolder", f"data.dir={images}", "data.val_size=0.25", *SMALL,
                      f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'out'}")
    validate(cfg)
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["task"] == "imagefolder"
    assert record["data"]["channels"] == 1 and record["data"]["image_size"] == 16 and record["data"]["classes"] == 3
    assert (record["data"]["n_train"], record["data"]["n_val"], record["data"]["n_test"]) == (18, 6, 6)

    _, task = make_task(compose_cfg, tmp_path, "task=imagefolder", f"data.dir={images}", "data.val_size=0.25")
    assert torch.bincount(task.splits["val"][1]).tolist() == [2, 2, 2]  # stratified: 2 of each class's 8
    train = task.splits["train"][0].double()
    assert torch.allclose(task.mean.double(), train.mean(dim=(0, 2, 3)) / 255, atol=1e-6)  # from train only
    assert torch.allclose(task.std.double(), train.std(dim=(0, 2, 3), unbiased=False) / 255, atol=1e-6)
    everything = np.stack([np.asarray(Image.open(p)) for p in sorted((images / "train").rglob("*.png"))])
    assert abs(task.mean.item() - everything.mean() / 255) > 1e-6  # ... which the validation images are not in


def test_a_val_folder_is_the_validation_split_and_mixed_modes_give_rgb(compose_cfg, tmp_path):
    images = write_folder(tmp_path / "images", {"train": 4, "val": 3, "test": 2}, mode="RGB")
    Image.fromarray(np.full((16, 16), 7, dtype=np.uint8)).save(images / "train" / "cat" / "gray.png")  # one 'L'
    _, task = make_task(compose_cfg, tmp_path, "task=imagefolder", f"data.dir={images}", "data.val_size=0.5")
    assert len(task.splits["val"][1]) == 9 and len(task.splits["train"][1]) == 13  # val/ is used whole
    assert task.in_channels == 3 and tuple(task.splits["train"][0].shape[1:]) == (3, 16, 16)
    gray = task.splits["train"][0][(task.splits["train"][0] == 7).flatten(1).all(1)]
    assert len(gray) == 1  # the grayscale image became RGB with all three channels equal


def test_image_size_resizes_images_of_every_size(tmp_path):
    images = write_folder(tmp_path / "images", {"train": 2, "test": 1}, size=20)
    Image.fromarray(np.zeros((40, 24), dtype=np.uint8)).save(images / "train" / "dog" / "big.png")
    _, arrays, _ = imagefolder.load(images, tmp_path / "cache", image_size=12)
    assert arrays["x_train"].shape == (7, 12, 12, 1) and arrays["x_test"].shape == (3, 12, 12, 1)
    assert arrays["y_train"].tolist() == [0, 0, 1, 1, 1, 2, 2]  # files sort by class, then by name
    assert (arrays["x_train"][4] == 0).all()  # dog's 00.png, 01.png, big.png: the resized big one


def test_the_cache_is_keyed_by_content_so_an_edited_folder_is_decoded_again(tmp_path, monkeypatch):
    images = write_folder(tmp_path / "images", {"train": 2, "test": 1})
    edited = images / "train" / "emu" / "01.png"
    Image.open(edited).save(edited, compress_level=0)  # stored uncompressed: an edit keeps the file's size
    _, first, _ = imagefolder.load(images, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("imagefolder-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although nothing changed")
    with monkeypatch.context() as m:
        m.setattr(imagefolder, "decode", no_decoding)
        _, again, _ = imagefolder.load(images, tmp_path / "cache")
    assert all(np.array_equal(first[k], again[k]) for k in first)

    size = edited.stat().st_size
    Image.fromarray(np.full((16, 16), 255, dtype=np.uint8)).save(edited, compress_level=0)
    os.utime(edited, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    assert edited.stat().st_size == size  # only the modification time tells the edit
    _, after, _ = imagefolder.load(images, tmp_path / "cache")
    assert (after["x_train"][5] == 255).all() and not (first["x_train"][5] == 255).all()
    assert len(list((tmp_path / "cache").glob("imagefolder-*.npz"))) == 2


@pytest.mark.parametrize("damage, message", [
    (lambda root: Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "train" / "cat" / "small.png"),
     r"images of different sizes: .*train/cat/00.png is 16x16, .*train/cat/small.png is 8x8; set data.image_size=N"),
    (lambda root: (root / "train" / "dog" / "notes.txt").write_text("not an image"),
     r"train/dog/notes.txt is not an image regbench can read .*remove it or convert it to PNG or JPEG"),
    (lambda root: (root / "test" / "yak").mkdir(),
     r"test/yak: class 'yak' has no folder in train/ \(the classes are cat, dog, emu\)"),
    (lambda root: (root / "train" / "fox").mkdir(), r"train/fox holds no images: every class needs training images"),
])
def test_a_broken_folder_names_the_file_and_the_fix(tmp_path, damage, message):
    images = write_folder(tmp_path / "images", {"train": 2, "test": 1})
    damage(images)
    with pytest.raises(DataError, match=message):
        imagefolder.load(images, tmp_path / "cache")


def test_images_that_are_not_square_ask_for_image_size(tmp_path):
    images = write_folder(tmp_path / "nonsquare", {"train": 1, "test": 1})
    for png in images.rglob("*.png"):
        Image.fromarray(np.zeros((10, 14), np.uint8)).save(png)
    with pytest.raises(DataError, match=r"the images are 14x10, not square .*set data.image_size=N"):
        imagefolder.load(images, tmp_path / "cache")


def regbench_cli(args, tmp_path, cli_env):
    return subprocess.run([sys.executable, "-m", "regbench", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["task=imagefolder"], "task=imagefolder needs data.dir=PATH: a folder with train/<class>/ and test/<class>/"),
    (["task=imagefolder", "data.dir=nowhere"], "nowhere is not an image folder: it needs train/<class>/ and "
                                               "test/<class>/ folders"),
    (["task=mnist", "paths.data_dir=empty", "data.download=false"],
     "MNIST not found in empty/mnist or empty: put MNIST/raw/train-images-idx3-ubyte, "),
    (["task=svhn", "paths.data_dir=empty", "data.download=false"],
     "or set data.download=true on a machine that is online"),
])
def test_missing_images_are_one_line_before_anything_starts(args, message, tmp_path, cli_env):
    result = regbench_cli([*args, "trainer.device=cpu"], tmp_path, cli_env)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and message in last and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.json").exists()


# -- the torchvision datasets, in torchvision's on-disk layout ---------------------------------------------
def tiny_images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8), np.arange(n) % 10


def write_cifar100(root: Path) -> dict[str, np.ndarray]:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    out = {}
    for split, n in (("train", 40), ("test", 20)):
        x, y = tiny_images(n, 32, 3, seed=len(split))
        data = x.transpose(0, 3, 1, 2).reshape(n, -1)  # CIFAR's rows: all red, then green, then blue
        with open(base / split, "wb") as fh:
            pickle.dump({"data": data, "fine_labels": (y * 7).tolist(), "coarse_labels": (y % 20).tolist()}, fh)
        out[f"{split}_x"], out[f"{split}_y"] = x, y * 7
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, fh)
    return out


def write_svhn(root: Path) -> dict[str, np.ndarray]:
    from scipy.io import savemat

    root.mkdir(parents=True)
    out = {}
    for split, n in (("train", 40), ("test", 20)):
        x, y = tiny_images(n, 32, 3, seed=len(split))
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": np.where(y == 0, 10, y)[:, None]})
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(root: Path, folder: str = "MNIST", compress: bool = True) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, n in (("train", "train", 40), ("test", "t10k", 20)):
        x, y = tiny_images(n, 28, 1, seed=len(split))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[..., 0], compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, compress)
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


@pytest.mark.parametrize("name, writer, classes", [
    ("cifar100", write_cifar100, 100),
    ("svhn", write_svhn, 10),
    ("mnist", write_mnist, 10),
    ("fashion_mnist", lambda root: write_mnist(root, "FashionMNIST", compress=False), 10),
])
def test_each_dataset_is_read_from_its_own_format(name, writer, classes, tmp_path):
    written = writer(tmp_path / "data" / name)  # paths.data_dir/<task>/ is one of the folders looked in
    dataset = vision.DATASETS[name]
    arrays = vision.load(dataset, [tmp_path / "data", tmp_path / "data" / name], download=False)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(arrays, key), written[key]), key
    assert len(arrays.classes) == classes
    if name == "fashion_mnist":
        assert arrays.classes[9] == "Ankle boot"


def test_a_damaged_file_names_the_folder_and_the_fix(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"MNIST in .* cannot be read .*re-download it or replace the damaged file"):
        vision.load(vision.DATASETS["mnist"], [tmp_path], download=False)


@pytest.mark.integration
def test_mnist_trains_through_the_command_from_torchvisions_layout(tmp_path, cli_env):
    write_mnist(tmp_path / "data")
    result = regbench_cli(["task=mnist", f"paths.data_dir={tmp_path / 'data'}", "data.download=false",
                           "data.val_size=10", *SMALL], tmp_path, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["task"] == "mnist"
    assert record["data"]["channels"] == 1 and record["data"]["image_size"] == 28
    assert (record["data"]["n_train"], record["data"]["n_val"], record["data"]["n_test"]) == (30, 10, 20)
