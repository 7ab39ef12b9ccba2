"""Shared fixtures: a tiny CIFAR-10-format image folder made on disk, and real Hydra composition."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from regbench.data.cifar10 import CLASSES

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_TRAIN_PER_CLASS = 8
TINY_TEST_PER_CLASS = 3


def make_image_folder(root: Path, train_per_class: int = TINY_TRAIN_PER_CLASS,
                      test_per_class: int = TINY_TEST_PER_CLASS, seed: int = 0) -> Path:
    """cifar10-jpeg/{train,test}/<class>/NNNN.png with a class-dependent colour, so a model can learn it.
    PNG keeps the pixels exact, which lets tests compare decoded arrays with what was written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar10-jpeg"
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for label, cls in enumerate(CLASSES):
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array([25 * label, 255 - 25 * label, (80 * label) % 256], dtype=np.int16)
                pixels = np.clip(base + rng.integers(-30, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / split / cls / f"{i:04d}.png")
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    mode = "w:gz" if archive.name.endswith(".gz") else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture(autouse=True)
def outputs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run records and the run index of every test go under its tmp_path, never into the checkout."""
    monkeypatch.setenv("REGBENCH_OUTPUT", str(tmp_path / "outputs"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-cifar")
    make_image_folder(root)
    return root


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CoNLL corpus (train/valid/test.txt) with PER and LOC entities a tagger can learn."""
    from test_tagging import tiny_corpus, write

    root = tmp_path_factory.mktemp("tiny-conll")
    for split, n, seed in (("train", 120, 0), ("valid", 30, 1), ("test", 30, 2)):
        write(root / f"{split}.txt", tiny_corpus(n, seed))
    return root


def tiny_overrides(data_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    """Overrides that make a real run take about a second on a CPU."""
    return [f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={cache_dir.parent / 'outputs'}", "model.width=0.0625",
            "data.val_size=20", "data.train_eval_size=20", "trainer.max_epochs=1", "trainer.batch_size=16",
            "trainer.eval_batch_size=32", "trainer.progress=false", "trainer.device=cpu", *extra]


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> the config the `regbench` command would build for those overrides."""
    def _compose(*overrides: str):
        with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return _compose


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the `regbench` command in a subprocess with outputs in tmp_path."""
    env = dict(os.environ)
    env["REGBENCH_OUTPUT"] = str(tmp_path / "outputs")
    env.pop("REGBENCH_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return env
