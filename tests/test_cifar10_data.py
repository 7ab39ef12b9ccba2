"""CIFAR-10 loading from every supported form, caching, splits and on-device augmentation."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TEST_PER_CLASS, TINY_TRAIN_PER_CLASS, make_image_folder, tar_folder
from regbench.data import cifar10
from regbench.errors import DataError
from regbench.tasks import image_augment
from regbench.tasks.images import balanced_order


def test_image_folder_labels_follow_alphabetical_class_order(tiny_data_dir, tmp_path):
    arrays = cifar10.load(tiny_data_dir, tmp_path / "cache", download=False)
    assert arrays.train_x.shape == (10 * TINY_TRAIN_PER_CLASS, 32, 32, 3) and arrays.train_x.dtype == np.uint8
    assert arrays.test_x.shape == (10 * TINY_TEST_PER_CLASS, 32, 32, 3)
    assert list(arrays.train_y) == [c for c in range(10) for _ in range(TINY_TRAIN_PER_CLASS)]
    # The first "cat" training image (label 3) decodes to exactly what was written.
    written = np.asarray(Image.open(tiny_data_dir / "cifar10-jpeg" / "train" / "cat" / "0000.png"))
    assert np.array_equal(arrays.train_x[3 * TINY_TRAIN_PER_CLASS], written)


@pytest.mark.parametrize("archive", ["cifar10-jpeg.tar", "cifar10-jpeg.tar.gz"])
def test_tar_of_the_folder_gives_identical_arrays(tiny_data_dir, tmp_path, archive):
    from_folder = cifar10.load(tiny_data_dir, tmp_path / "c1", download=False)
    data = tmp_path / "data" / "cifar10"  # the <data_dir>/cifar10/ sub-folder is searched too
    data.mkdir(parents=True)
    tar_folder(tiny_data_dir / "cifar10-jpeg", data / archive)
    from_tar = cifar10.load(tmp_path / "data", tmp_path / "c2", download=False)
    assert np.array_equal(from_folder.train_x, from_tar.train_x) and np.array_equal(from_folder.test_y, from_tar.test_y)


def test_cache_is_written_once_and_reused(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data, train_per_class=2, test_per_class=1)
    first = cifar10.load(data, tmp_path / "cache", download=False)
    assert (tmp_path / "cache" / cifar10.CACHE_NAME).is_file()
    for image in (data / "cifar10-jpeg").rglob("*.png"):
        image.unlink()  # the source is gone: only the cache can answer now
    second = cifar10.load(data, tmp_path / "cache", download=False)
    assert np.array_equal(first.train_x, second.train_x) and second.source == first.source


DECODE_IN_A_PROCESS = """
import logging, sys
from pathlib import Path
from regbench.data import cifar10
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
arrays = cifar10.load(Path(sys.argv[1]), Path(sys.argv[2]), download=False)
print("checksum", int(arrays.train_x.sum()), int(arrays.test_y.sum()))
"""


@pytest.mark.integration
def test_runs_that_start_together_decode_once(tmp_path, cli_env):
    """A grid's runs start at once on one machine: one decodes, the others wait and read its cache."""
    import subprocess
    import sys

    data = tmp_path / "data"
    make_image_folder(data, train_per_class=150, test_per_class=10)  # a decode long enough to overlap
    procs = [subprocess.Popen([sys.executable, "-c", DECODE_IN_A_PROCESS, str(data), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env)
             for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum("decoded" in out for out in outputs) == 1, outputs
    assert len({out.strip().splitlines()[-1] for out in outputs}) == 1  # every process has the same arrays


def test_a_read_only_cache_folder_caches_beside_it_and_is_read_back(tmp_path, monkeypatch):
    """A read-only data folder (a shared copy) caches into a folder of its own under ~/.cache/regbench,
    and the next run finds it there."""
    from regbench.data import files

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    make_image_folder(data, train_per_class=2, test_per_class=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    unwritable = blocker / "cache"  # cannot be created, even by root
    first = cifar10.load(data, unwritable, download=False)
    fallback = files.fallback_cache_dir(unwritable)
    assert (fallback / cifar10.CACHE_NAME).is_file() and fallback.is_relative_to(tmp_path / "home")
    for image in (data / "cifar10-jpeg").rglob("*.png"):
        image.unlink()
    again = cifar10.load(data, unwritable, download=False)
    assert np.array_equal(first.train_x, again.train_x)
    assert files.fallback_cache_dir(tmp_path / "other") != fallback  # another folder's cache never mixes in


def test_torchvision_format_is_read(tmp_path, monkeypatch):
    """A cifar-10-batches-py folder in the official pickle layout (tiny, so its md5s cannot match:
    torchvision's integrity check is bypassed here and nowhere else)."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "data" / cifar10.TORCHVISION_DIR
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=4))
        batches[name] = (pixels, labels)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": pixels, "labels": labels}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(cifar10.CLASSES)}, fh)
    arrays = cifar10.load(tmp_path / "data", tmp_path / "cache", download=False)
    assert arrays.train_x.shape == (20, 32, 32, 3) and arrays.source.startswith("torchvision")
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(arrays.train_x[0], first) and arrays.test_y.tolist() == batches["test_batch"][1]


def test_missing_data_offline_names_the_accepted_files_and_the_folder(tmp_path):
    with pytest.raises(DataError) as info:
        cifar10.load(tmp_path / "empty", tmp_path / "cache", download=False)
    message = str(info.value)
    for expected in ("cifar-10-python.tar.gz", "cifar-10-batches-py", "cifar10-jpeg.tar", str(tmp_path / "empty"),
                     "data.download=true", "REGBENCH_DATA"):
        assert expected in message


def test_wrong_image_size_and_unknown_class_are_reported(tmp_path):
    folder = make_image_folder(tmp_path / "a", train_per_class=1, test_per_class=1)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "train" / "dog" / "9999.png")
    with pytest.raises(DataError, match=r"dog/9999.png is 16x16"):
        cifar10.load(tmp_path / "a", tmp_path / "c", download=False)
    folder = make_image_folder(tmp_path / "b", train_per_class=1, test_per_class=1)
    (folder / "train" / "unicorn").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "train" / "unicorn" / "0.png")
    with pytest.raises(DataError, match="unicorn"):
        cifar10.load(tmp_path / "b", tmp_path / "c2", download=False)


def test_corrupt_tar_is_reported(tmp_path):
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="not a readable tar"):
        cifar10.load(tmp_path, tmp_path / "c", download=False)


def test_balanced_order_prefixes_are_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    order = balanced_order(labels, seed=0)
    assert sorted(order) == list(range(500))
    assert np.bincount(labels[order[:100]], minlength=10).tolist() == [10] * 10
    assert np.array_equal(order, balanced_order(labels, seed=0))
    assert not np.array_equal(order, balanced_order(labels, seed=1))


def test_augmentations_are_per_example_and_seeded():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    cropped = image_augment.random_crop(x, 2, gen)
    assert cropped.shape == x.shape
    # Each crop is a shifted window of the zero-padded image.
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        assert any(torch.equal(cropped[b], padded[b, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    flipped = image_augment.random_hflip(x, torch.Generator().manual_seed(3))
    for b in range(2):
        assert torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(2))
    again = image_augment.random_crop(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(cropped, again)


def test_cutout_zeroes_one_square_per_example():
    x = torch.ones(4, 3, 32, 32)
    out = image_augment.cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert all(0 < z <= 64 for z in zeros.tolist())
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # the same square in every channel


def test_color_jitter_and_rotation_keep_shape_and_range():
    x = torch.rand(4, 3, 32, 32)
    jittered = image_augment.color_jitter(x, 0.4, torch.Generator().manual_seed(0))
    assert jittered.shape == x.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, x)
    rotated = image_augment.random_rotation(x, 15.0, torch.Generator().manual_seed(0))
    assert rotated.shape == x.shape and not torch.allclose(rotated, x)
    assert torch.allclose(image_augment.random_rotation(x, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-5)


@pytest.mark.parametrize("evil", ["../escape.png", "/etc/cifar.png", "link"])
def test_a_tar_with_a_member_that_escapes_or_links_out_is_refused(tiny_data_dir, tmp_path, evil):
    import io
    import tarfile

    archive = tar_folder(tiny_data_dir / "cifar10-jpeg", tmp_path / "cifar10-jpeg.tar")
    with tarfile.open(archive, "a") as tar:
        info = tarfile.TarInfo(evil)
        if evil == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match=f"member '{evil}' is .*refusing the archive"):
        cifar10.load(tmp_path, tmp_path / "cache", source="imagefolder", download=False)
    assert not (tmp_path / "escape.png").exists()


def test_torchvision_extraction_runs_under_the_data_filter(tmp_path):
    import io
    import tarfile

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    target = tmp_path / "deep" / "root"
    target.mkdir(parents=True)
    with cifar10.safe_tar_extraction(), tarfile.open(archive) as tar:  # what torchvision's extractall meets
        with pytest.raises(tarfile.FilterError):
            tar.extractall(target)
    assert not (tmp_path / "deep" / "escaped.txt").exists()
    assert tarfile.TarFile.extraction_filter is None  # restored afterwards
