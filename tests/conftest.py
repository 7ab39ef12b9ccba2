"""Shared fixtures: tiny datasets made on disk in their real formats (a CIFAR-10 image folder, a CoNLL
corpus, an ml-100k zip), real Hydra composition, and real small runs of every task.

Tests marked `integration` start processes (the regbench command, sweeps, torchrun, Slurm, Optuna);
`python -m pytest -m "not integration"` is the fast tier."""
from __future__ import annotations

import gzip
import os
import random
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regbench import runner
from regbench.data.cifar10 import CLASSES
from regbench.preflight import compose_config, merge_overrides
from regbench.validation import validate

# Each test worker trains on its share of the CPUs, as regbench's own parallel launcher gives each run, and so
# do the processes it starts (OMP_NUM_THREADS is torch's default): two workers of two torch threads each on a
# 2-core machine spent their time waiting for each other's cores (the fast tier took 3:43 instead of 2:20).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    from regbench.launchers import available_cpus

    SHARE = max(1, available_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", str(SHARE))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_TRAIN_PER_CLASS = 8
TINY_TEST_PER_CLASS = 3


# -- tiny datasets in their real formats -----------------------------------------------------------
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


def write(path: Path, text: str) -> Path:
    """A text file, gzipped when its name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


PEOPLE = ["Smith", "Jones", "Brown", "Miller", "Davis"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna"]
FILLER = ["the", "a", "said", "went", "to", "on", "today", "visited", "met", "in"]


def tiny_corpus(n: int, seed: int) -> str:
    """NER-like sentences in CoNLL format: `Mr <Name>` is a PER span, `in <Place>` a LOC span."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        for _ in range(rng.randint(1, 3)):
            for _ in range(rng.randint(0, 3)):
                lines.append(f"{rng.choice(FILLER)} O")
            if rng.random() < 0.5:
                lines += ["Mr B-PER", f"{rng.choice(PEOPLE)} I-PER"]
            else:
                lines += ["in O", f"{rng.choice(PLACES)} B-LOC"]
        lines.append(". O")
        lines.append("")
    return "\n".join(lines) + "\n"


ML_USERS, ML_ITEMS = 40, 60


def make_ml100k_zip(path: Path, seed: int = 0) -> Path:
    """An ml-100k.zip in GroupLens's layout (u.data, u.user, u.item in latin-1): 40 users x 15 ratings."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, ML_USERS + 1):
        for i in rng.choice(np.arange(1, ML_ITEMS + 1), size=15, replace=False):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{rng.integers(874724710, 893286638)}")
    users = [f"{u}|{20 + u}|{'MF'[u % 2]}|{['student', 'writer', 'other'][u % 3]}|0000{u}"
             for u in range(1, ML_USERS + 1)]
    items = []
    for i in range(1, ML_ITEMS + 1):
        flags = ["1" if (i + g) % 7 == 0 else "0" for g in range(19)]
        release = "" if i == 5 else f"01-Jan-19{50 + i % 40}"
        items.append(f"{i}|Café {i} (19{50 + i % 40})|{release}||http://x|" + "|".join(flags))
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", "\n".join(lines) + "\n")
        z.writestr("ml-100k/u.user", "\n".join(users) + "\n")
        z.writestr("ml-100k/u.item", ("\n".join(items) + "\n").encode("latin-1"))
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first (those on real data, CIFAR-10's 2-3 minutes, and the study script's):
    under pytest-xdist a long test that starts last keeps one worker busy while the other has nothing
    left to do. The sort is stable: the rest keep their order."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, item.path.name != "test_study.py"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-cifar")
    make_image_folder(root)
    return root


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CoNLL corpus (train/valid/test.txt) with PER and LOC entities a tagger can learn."""
    root = tmp_path_factory.mktemp("tiny-conll")
    for split, n, seed in (("train", 120, 0), ("valid", 30, 1), ("test", 30, 2)):
        write(root / f"{split}.txt", tiny_corpus(n, seed))
    return root


@pytest.fixture(scope="session")
def tiny_ml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-movielens")
    make_ml100k_zip(folder / "ml-100k.zip")
    return folder


@pytest.fixture
def tiny_study_data(tmp_path, tiny_data_dir, tiny_corpus_dir) -> Path:
    """A data folder laid out as the real one (and as scripts/study_prepare.sh carries it), with tiny
    datasets: cifar10/cifar10-jpeg/, conll2003/{train,valid,test}.txt, movielens/ml-100k.zip."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "cifar10-jpeg", data / "cifar10" / "cifar10-jpeg")
    shutil.copytree(tiny_corpus_dir, data / "conll2003")
    make_ml100k_zip(data / "movielens" / "ml-100k.zip")
    return data


# -- configs and runs -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def outputs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run records and the run index of every test go under its tmp_path, never into the checkout."""
    monkeypatch.setenv("REGBENCH_OUTPUT", str(tmp_path / "outputs"))


@pytest.fixture(autouse=True)
def no_stop_left_over() -> Iterator[None]:
    """A test whose run completed after it signalled itself leaves this process's stop unheeded: the next
    test's first run would refuse to start (regbench.signals.heed_stop)."""
    from regbench.signals import heed_stop

    yield
    heed_stop()


def tiny_overrides(data_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    """CIFAR-10 overrides that make a real run take about a second on a CPU (for command lines); `extra`
    may change them (each key once: regbench refuses a key given twice)."""
    return merge_overrides([f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}",
                            f"paths.output_dir={cache_dir.parent / 'outputs'}", "model.width=0.0625",
                            "data.val_size=20", "data.train_eval_size=20", "trainer.max_epochs=1",
                            "trainer.batch_size=16", "trainer.eval_batch_size=32", "trainer.progress=false",
                            "trainer.device=cpu"], extra)


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> the config the `regbench` command would build for those overrides."""
    def _compose(*overrides: str):
        return compose_config(list(overrides))
    return _compose


TAGGER = ["model.hidden=16", "model.word_dim=16", "model.char_hidden=8", "model.char_dim=8", "trainer.batch_size=8",
          "trainer.max_epochs=2"]


@pytest.fixture
def small_cfg(compose_cfg, tiny_data_dir, tiny_corpus_dir, tiny_ml_dir, tmp_path):
    """small_cfg(task, *overrides) -> the validated config of a run of `task` that takes about a second on
    a CPU: cifar10 (the tiny image folder, 1 epoch of a 1/16-width CNN-13), conll (the tiny corpus; also
    conll2003 and conll2000, whose data the overrides name: 2 epochs of a 16-unit BiLSTM-CRF) or
    movielens (the tiny ml-100k zip, 3 epochs of the two-tower model)."""
    small = {
        "cifar10": tiny_overrides(tiny_data_dir, tmp_path / "cache"),
        "conll": ["task=conll", f"data.dir={tiny_corpus_dir}", *TAGGER],
        "conll2003": ["task=conll2003", *TAGGER],
        "conll2000": ["task=conll2000", *TAGGER],
        "movielens": ["task=movielens", f"data.dir={tiny_ml_dir}", "data.download=false", "trainer.max_epochs=3",
                      "trainer.batch_size=64"],
    }

    def _cfg(task: str = "cifar10", *overrides: str, check: bool = True):
        cfg = compose_cfg(*small[task], "trainer.progress=false", "trainer.device=cpu",
                          f"paths.output_dir={tmp_path / 'outputs'}", *overrides)
        if check:
            validate(cfg)
        return cfg
    return _cfg


@pytest.fixture
def small_run(small_cfg, tmp_path):
    """small_run(task, *overrides, name="run") -> (record, run_dir): a real run of small_cfg(task,
    *overrides) whose record is written into tmp_path / name."""
    def _run(task: str = "cifar10", *overrides: str, name: str = "run"):
        run_dir = tmp_path / name
        return runner.run(small_cfg(task, *overrides), run_dir), run_dir
    return _run


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the `regbench` command in a subprocess with outputs in tmp_path."""
    env = dict(os.environ)
    env["REGBENCH_OUTPUT"] = str(tmp_path / "outputs")
    env.pop("REGBENCH_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return env
