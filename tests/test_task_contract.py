"""The Task and model contract a user's code must meet, checked before or at the first step with one line
naming the method and the fix (docs/own-model.md), on a real classification task of the user's own; and
calibration (NLL, ECE, Brier) for every task whose test outputs are class probabilities."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from regbench import runner
from regbench.calibration import calibration
from regbench.errors import ConfigError

BLOBS = '''
import torch
import torch.nn.functional as F
from torch import nn

from regbench import checks
from regbench.tasks.base import Task


class Blobs(Task):
    """Two Gaussian blobs in 2-D, two classes; data.mistake makes it break one rule of the contract."""

    primary_metric = "accuracy"
    models = ()
    accepts_custom_models = True
    data_keys = ("mistake",)

    @classmethod
    def validate_config(cls, cfg):
        pass

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.mistake = cfg.data.get("mistake", "none")
        g = torch.Generator().manual_seed(0)
        self.splits = {}
        for split, n in (("train", 256), ("val", 128), ("test", 128)):
            y = torch.randint(0, 2, (n,), generator=g)
            x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None].float()
            self.splits[split] = (x.to(device), y.to(device))

    def model_inputs(self):
        return {"in_features": 2, "num_classes": 2}

    def num_train_batches(self):
        return 8

    def train_batches(self, generator):
        x, y = self.splits["train"]
        order = torch.randperm(len(y), generator=generator, device=generator.device)
        for b in range(8):
            idx = order[b * 32:(b + 1) * 32]
            yield x[idx], y[idx]

    def training_step(self, model, batch):
        x, y = batch
        losses = F.cross_entropy(model(x), y, reduction="none")
        loss = losses if self.mistake == "loss_vector" else losses.mean()
        stats = {"correct": (model(x).argmax(1) == y).sum(), "count": torch.full((), len(y), device=y.device)}
        if self.mistake != "no_loss_sum":
            stats["loss_sum"] = losses.detach().sum()
        return loss, stats

    def train_metrics(self, sums):
        return {"loss": sums["loss_sum"] / sums["count"], "accuracy": sums["correct"] / sums["count"]}

    def evaluate(self, model, split):
        x, y = self.splits[split]
        logits = model(x)
        if split == "test":  # test_outputs(): what the last evaluate(model, "test") saw
            self.last = (F.softmax(logits, 1), y)
        result = {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}
        if self.mistake == "no_primary":
            del result["accuracy"]
        return result

    def test_outputs(self):
        probs, y = self.last
        labels = y[:, None] if self.mistake == "labels_n1" else y
        return {"kind": "classification", "probs": probs.cpu().numpy(), "labels": labels.cpu().numpy()}

    def example_input(self):
        return self.splits["test"][0][:1]


def build(*, regimen, in_features, num_classes, outputs=None):
    return nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, outputs or num_classes))
'''


@pytest.fixture
def blobs(tmp_path, monkeypatch, compose_cfg):
    (tmp_path / "blobs.py").write_text(textwrap.dedent(BLOBS))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("blobs", None)

    def cfg(*extra: str):
        return compose_cfg("task=custom", "task._target_=blobs.Blobs", "model=custom", "model._target_=blobs.build",
                           "optimizer=adam", "optimizer.lr=0.01", "trainer.max_epochs=3", "trainer.progress=false",
                           "trainer.device=cpu", f"paths.output_dir={tmp_path / 'outputs'}", *extra)
    return cfg


def test_a_users_classifier_gets_nll_ece_and_brier_from_its_test_outputs(blobs, tmp_path):
    record = runner.run(blobs(), tmp_path / "run")
    assert record["status"] == "completed" and record["test"]["accuracy"] > 0.8
    outputs = np.load(tmp_path / "run" / "test_outputs.npz")
    expected = calibration(outputs["probs"], outputs["labels"])
    assert {k: record["test"][k] for k in ("nll", "ece", "brier")} == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("overrides,message", [
    (["+data.mistake=loss_vector"], r"task._target_=blobs.Blobs: training_step\(model, batch\) returned a loss of "
                                    r"shape \(32,\): return the batch's mean loss as a scalar tensor"),
    (["+data.mistake=no_loss_sum"], r"training_step\(model, batch\) returned statistics \['correct', 'count'\] "
                                    r"without 'loss_sum'"),
    (["+data.mistake=no_primary"], r"task._target_=blobs.Blobs: evaluate\(model, 'val'\) returned \['loss'\], without "
                                   r"'accuracy': return a dict with 'loss' and the primary metric 'accuracy'"),
    (["+data.mistake=labels_n1"], r"test_outputs\(\) gave labels of shape \(128, 1\) for probs of shape \(128, 2\): "
                                  r"give one class index per example, shape \(N,\) \(labels.squeeze\(1\) for \(N, 1\)\)"),
    (["+model.outputs=3"], r"model._target_=blobs.build returns 3 outputs per example, and task._target_=blobs.Blobs "
                           r"has num_classes=2: its last layer must have num_classes outputs"),
])
def test_a_broken_contract_is_one_line_naming_the_method_before_an_epoch_trains(blobs, tmp_path, overrides, message):
    history = tmp_path / "run" / "history.csv"
    with pytest.raises(ConfigError, match=message):
        runner.run(blobs(*overrides), tmp_path / "run")
    assert not history.exists() or len(history.read_text().splitlines()) <= 1  # no epoch finished first


def test_the_command_says_it_in_one_line_with_exit_code_2(blobs, tmp_path, cli_env):
    env = dict(cli_env, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "regbench", "task=custom", "task._target_=blobs.Blobs",
                             "model=custom", "model._target_=blobs.build", "data.mistake=no_primary",
                             "trainer.max_epochs=1", "trainer.progress=false", f"hydra.run.dir={tmp_path / 'cli'}"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["regbench: error: task._target_=blobs.Blobs: evaluate(model, 'val') returned ['loss'], without "
                      "'accuracy': return a dict with 'loss' and the primary metric 'accuracy' (Task.primary_metric)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cli" / "metrics.json").exists() or \
        json.loads((tmp_path / "cli" / "metrics.json").read_text())["status"] != "completed"


OWN_NORM = '''
from torch import nn


def with_layernorm(*, regimen, num_classes, in_channels, image_size):
    regimen.place(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 8), nn.LayerNorm(8), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(8, num_classes))
'''


def test_a_model_with_norms_of_its_own_is_never_labelled_none(compose_cfg, tiny_data_dir, tmp_path, monkeypatch):
    from conftest import tiny_overrides
    from regbench.preflight import allow_new_keys

    (tmp_path / "own_norm.py").write_text(textwrap.dedent(OWN_NORM))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("own_norm", None)
    overrides = allow_new_keys(tiny_overrides(tiny_data_dir, tmp_path / "cache", "model=custom",
                                              "model._target_=own_norm.with_layernorm", "regularizer=none"))
    overrides = [o for o in overrides if not o.startswith("++model.width")]
    with pytest.raises(ConfigError, match=r"model._target_=own_norm.with_layernorm holds 1 LayerNorm, 1 Dropout that "
                                          r"the regimen did not place, so regularizer=none would be recorded"):
        runner.run(compose_cfg(*overrides), tmp_path / "refused")
    named = runner.run(compose_cfg(*overrides, "regularizer.name=own_ln_dropout"), tmp_path / "named")
    assert named["regularizer"] == "own_ln_dropout" and named["model_own_regularization"] == {"LayerNorm": 1,
                                                                                              "Dropout": 1}
    plain = runner.run(compose_cfg(*tiny_overrides(tiny_data_dir, tmp_path / "cache", "regularizer=bn_dropout")),
                       tmp_path / "cnn13")
    assert plain["model_own_regularization"] == {}  # what the regimen placed is the regimen's


@pytest.mark.parametrize("overrides,message", [
    (["data.n_trian=100"], r"data.n_trian: task._target_=my_task.SineRegression reads no such key \(did you mean "
                           r"data.n_train\?\); it reads data.n_train, data.n_eval, data.noise, data.split_seed"),
    (["data.val_fra=0.3"], r"data.val_fra: task._target_=my_task.SineRegression reads no such key; it reads"),
])
def test_a_data_key_a_users_task_does_not_read_is_refused(compose_cfg, overrides, message, monkeypatch):
    from pathlib import Path

    from regbench.preflight import allow_new_keys
    from regbench.validation import validate

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    args = allow_new_keys(["task=custom", "task._target_=my_task.SineRegression", "model=custom",
                           "model._target_=my_task.build_mlp", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*args), machine=False)


def test_a_users_task_that_takes_data_keys_must_declare_them(blobs, monkeypatch):
    from regbench.validation import validate

    import blobs as module
    monkeypatch.setattr(module.Blobs, "data_keys", None)
    with pytest.raises(ConfigError, match=r"task._target_=blobs.Blobs is given data.mistake but declares no data_keys: "
                                          r"add data_keys = \('mistake',\)"):
        validate(blobs("+data.mistake=none"), machine=False)
    validate(blobs(), machine=False)  # no data.* key given: nothing to declare


def test_a_subclass_of_a_built_in_task_reads_the_presets_data_keys(compose_cfg, tiny_data_dir, tmp_path,
                                                                    monkeypatch):
    from conftest import tiny_overrides
    from regbench.validation import validate

    (tmp_path / "sub_task.py").write_text("from regbench.tasks.cifar10 import Cifar10Task\n\n\n"
                                          "class Quieter(Cifar10Task):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("sub_task", None)
    cfg = compose_cfg(*tiny_overrides(tiny_data_dir, tmp_path / "cache", "task._target_=sub_task.Quieter",
                                      "data.limit_train=64"))
    validate(cfg, machine=False)  # cifar10's data.* keys: its YAML's, which the subclass inherits with the code
