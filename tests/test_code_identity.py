"""A user's code is part of the run's identity: an edited model file trains anew, unchanged code is reused,
the record names the file and its hash, compare keeps runs of different code apart, and the built-in
configurations keep the run ids they had before any of this existed."""
from __future__ import annotations

import hashlib
import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from conftest import tiny_overrides
from regbench import runner
from regbench.preflight import allow_new_keys
from regbench.checkpoints import run_id
from regbench.code_identity import is_user_file, user_code
from regbench.compare import compare

MODEL = '''
from torch import nn


def build(*, regimen, num_classes, in_channels, image_size, width=4):
    placement = regimen.place(1, default_norm=(1,), default_dropout=(1,))
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), placement.norm(1, width), nn.ReLU(),
                         placement.dropout(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''

# Run ids at a933763 (before regularizer.extra, optimizer._target_ and the code hash), with these paths: the
# study's configurations and every optimizer preset must keep them, or every earlier record would be orphaned.
PATHS = ["paths.data_dir=/data", "paths.output_dir=/out", "paths.cache_dir=/cache"]
RUN_IDS = {
    "task=cifar10 regularizer=none": "2ddcdda62ee350c7", "task=cifar10 regularizer=bn": "74074cf3a3895bec",
    "task=cifar10 regularizer=dropout": "ab4d6962d17fe38c", "task=cifar10 regularizer=bn_dropout": "a3303c2b82524c6b",
    "task=cifar10 regularizer=bn_dropout_gc": "8d88240135bea6d6",
    "task=conll2003 regularizer=none": "c68a5a7bf4d41794", "task=conll2003 regularizer=bn": "4a2005089733674c",
    "task=conll2003 regularizer=dropout": "56dc9dd5d9a954ba",
    "task=conll2003 regularizer=bn_dropout": "35a50f6f37840913",
    "task=conll2003 regularizer=bn_dropout_gc": "ac44ab1a0ba75914",
    "task=movielens regularizer=none": "30e4654ee7d467c7", "task=movielens regularizer=bn": "7bdba1b0066c0a14",
    "task=movielens regularizer=dropout": "1e19e5f94c261ed5",
    "task=movielens regularizer=bn_dropout": "b6b2d87b0ac96da1",
    "task=movielens regularizer=bn_dropout_gc": "c08a06233214ee79",
    "optimizer=sgd": "53b8c710b9994549", "optimizer=nesterov": "557ab33e0381c858", "optimizer=adam": "86116fd100f86e4d",
    "optimizer=adamw": "917d4cc47673d7a6", "optimizer=adagrad": "1ab253c9cc89d900",
    "optimizer=rmsprop": "e813aac0236adaec", "optimizer=adam_recsys": "4e293d19a834c648",
}


@pytest.mark.parametrize("overrides", list(RUN_IDS))
def test_built_in_configurations_keep_their_run_ids(overrides):
    with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides.split(), *PATHS])
    assert run_id(cfg) == RUN_IDS[overrides]
    assert user_code(cfg) == []  # regbench's own task and model: covered by the version and commit


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    path = folder / "tiny_model.py"
    path.write_text(textwrap.dedent(MODEL))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("tiny_model", None)
    importlib.invalidate_caches()
    return path


def test_an_edited_model_trains_anew_and_unchanged_code_is_reused(compose_cfg, tiny_data_dir, user_model, tmp_path):
    overrides = allow_new_keys(tiny_overrides(tiny_data_dir, tmp_path / "cache", "model=custom",
                                              "model._target_=tiny_model.build", "model.width=4"))
    cfg = compose_cfg(*overrides)
    first = runner.run(cfg, tmp_path / "first")
    digest = hashlib.sha256(user_model.read_bytes()).hexdigest()
    assert first["code"] == [{"key": "model._target_", "target": "tiny_model.build", "path": str(user_model),
                              "sha256": digest}]
    assert first["config"]["code"] == {"model._target_": digest[:12]}

    again = runner.run(cfg, tmp_path / "again")
    assert again["reused_from"] == str(tmp_path / "first") and again["run_id"] == first["run_id"]

    user_model.write_text(user_model.read_text().replace("width=4", "width=6"))
    edited = runner.run(cfg, tmp_path / "edited")
    assert edited["reused_from"] is None and edited["run_id"] != first["run_id"]
    assert edited["code"][0]["sha256"] != digest

    comparison = compare([tmp_path / "first", tmp_path / "edited"])
    assert len(comparison.summary) == 2  # two versions of the code are two experiments, never one group
    assert sorted(comparison.summary["code.model._target_"]) == sorted([digest[:12], edited["code"][0]["sha256"][:12]])


def test_library_and_regbench_files_are_not_user_code(tmp_path):
    import json

    import regbench.loop
    import torch.optim

    assert not is_user_file(Path(regbench.loop.__file__)) and not is_user_file(Path(json.__file__))
    assert not is_user_file(Path(torch.optim.__file__))
    assert is_user_file(tmp_path / "mine.py")
