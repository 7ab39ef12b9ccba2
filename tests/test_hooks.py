"""Regularizers of the user's own (`regularizer.extra`): every hook called where docs/own-model.md says, on
real tiny training runs; a stateful hook resumes exactly; penalties and eval weights take effect; the
example regularizers; bad entries refused in one line before anything trains."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from regbench import loop, runner
from regbench.errors import ConfigError
from test_resume import _metrics_of, interrupted_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

RECORDER = '''
import torch
from torch import nn

CALLS = []


class Recorder:
    """Every hook, each noting its name and what it saw."""

    def __init__(self, tag="r"):
        self.tag = tag
        self.steps = 0

    def start(self, model, task):
        CALLS.append(("start", type(task).__name__))
        self.first = next(model.parameters())

    def transform_batch(self, batch, generator):
        CALLS.append(("transform_batch", type(batch).__name__))
        return batch

    def penalty(self, model):
        CALLS.append(("penalty", torch.is_grad_enabled()))  # part of the graph that backward differentiates
        return torch.zeros(())

    def after_backward(self, model):
        CALLS.append(("after_backward", self.first.grad is not None))
        self.before = self.first.detach().clone()

    def after_step(self, model):
        self.steps += 1
        CALLS.append(("after_step", not torch.equal(self.before, self.first)))

    def eval_model(self, model):
        CALLS.append(("eval_model", model.training))
        return model

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        CALLS.append(("load_state_dict", state["steps"]))
        self.steps = state["steps"]


class Shrink:
    """A large L2 penalty: the weights it sees must end up smaller than without it."""

    def __init__(self, weight):
        self.weight = weight

    def penalty(self, model):
        return self.weight * sum(p.square().sum() for p in model.parameters() if p.ndim > 1)


class FrozenCopy:
    """Validation and test on a copy of the weights taken at the start: the trained weights never count."""

    def start(self, model, task):
        import copy
        self.copy = copy.deepcopy(model)

    def eval_model(self, model):
        return self.copy


class Nothing:
    pass


class HalfState:
    def state_dict(self):
        return {}


def failing(**kwargs):
    raise RuntimeError("no GPU kernel for this")
'''


@pytest.fixture
def user_hooks(tmp_path, monkeypatch):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "user_hooks.py").write_text(textwrap.dedent(RECORDER))
    monkeypatch.syspath_prepend(str(folder))
    import importlib
    import sys
    sys.modules.pop("user_hooks", None)
    return importlib.import_module("user_hooks")


def extra(*entries: str) -> str:
    return f"regularizer.extra=[{','.join(entries)}]"


def test_every_hook_is_called_in_its_place_in_the_step(small_cfg, user_hooks, tmp_path):
    cfg = small_cfg("cifar10", extra("{_target_:user_hooks.Recorder}"), "trainer.max_epochs=2")
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "completed"
    calls = user_hooks.CALLS
    assert calls[0] == ("start", "Cifar10Task")
    names = [name for name, _ in calls]
    steps = names.count("after_step")
    assert steps >= 4 and names.count("transform_batch") == names.count("penalty") == steps
    in_step = [n for n in names if n in ("transform_batch", "penalty", "after_backward", "after_step")]
    assert in_step == ["transform_batch", "penalty", "after_backward", "after_step"] * steps
    assert all(seen for name, seen in calls if name in ("penalty", "after_backward", "after_step"))
    assert ("eval_model", False) in calls  # validation and test ask for the weights, in eval mode
    assert "load_state_dict" not in names


def test_an_extras_state_is_checkpointed_and_a_resumed_run_is_exact(small_cfg, user_hooks, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    noise = "{_target_:my_regularizer.WeightNoise,std:0.01,seed:3}"
    cfg = small_cfg("cifar10", extra(noise, "{_target_:user_hooks.Recorder}"), "trainer.max_epochs=3",
                    "trainer.resume=true", f"paths.output_dir={tmp_path / 'reference-outputs'}")
    reference = runner.run(cfg, tmp_path / "reference")
    steps_per_run = [s for n, s in user_hooks.CALLS if n == "after_step"]
    cfg = small_cfg("cifar10", extra(noise, "{_target_:user_hooks.Recorder}"), "trainer.max_epochs=3",
                    "trainer.resume=true")
    interrupted_run(cfg, tmp_path / "first", after=1)
    last = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    assert last["extras"][1] == {"steps": len(steps_per_run) // 3} and "generator" in last["extras"][0]
    user_hooks.CALLS.clear()
    resumed = runner.run(cfg, tmp_path / "second")
    assert "after epoch 1" in resumed["resumed_from"]
    assert ("load_state_dict", len(steps_per_run) // 3) in user_hooks.CALLS
    for split in ("train", "val", "test"):
        assert resumed[split] == reference[split]  # the noise drawn after the resume is the noise drawn before
    pd.testing.assert_frame_equal(_metrics_of(pd.read_csv(tmp_path / "second" / "history.csv")),
                                  _metrics_of(pd.read_csv(tmp_path / "reference" / "history.csv")))


def test_a_penalty_enters_the_loss_and_eval_model_chooses_the_weights(small_cfg, user_hooks, tmp_path):
    plain = small_cfg("cifar10", "trainer.max_epochs=2")
    shrunk = small_cfg("cifar10", extra("{_target_:user_hooks.Shrink,weight:5.0}"), "trainer.max_epochs=2")
    norms = []
    for cfg in (plain, shrunk):
        task, regimen, model, generator = loop.build(cfg, torch.device("cpu"))
        t = loop.prepare(cfg, task, model, regimen, generator)
        loop.train_epoch(t, 1)
        norms.append(sum(float(p.detach().norm()) for p in model.parameters() if p.ndim > 1))
    assert norms[1] < 0.9 * norms[0]

    frozen = small_cfg("cifar10", extra("{_target_:user_hooks.FrozenCopy}"), "trainer.max_epochs=2")
    task, regimen, model, generator = loop.build(frozen, torch.device("cpu"))
    untrained = loop.evaluate(task, model, "test")
    record = runner.run(frozen, tmp_path / "frozen")
    assert record["test"] == untrained  # validation and test scored the copy, not the trained weights


def test_the_example_orthogonality_penalty_is_the_hand_formula(small_cfg, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from my_regularizer import Orthogonality

    conv = torch.nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]).view(3, 2, 1, 1))
    hook = Orthogonality(weight=0.5)
    hook.start(torch.nn.Sequential(conv), None)
    # W W^T = [[1,0,1],[0,4,2],[1,2,2]]; minus I: [[0,0,1],[0,3,2],[1,2,1]]; squares sum to 1+9+4+1+4+1 = 20
    assert hook.penalty(None).item() == pytest.approx(0.5 * 20)


@pytest.mark.parametrize("entry,message", [
    ("{weight:1}", r"regularizer.extra\[0\]=\{'weight': 1\} has no _target_"),
    ("{_target_:user_hooks.Missing}", r"regularizer.extra\[0\]._target_=user_hooks.Missing: user_hooks has no 'Missing'"),
    ("{_target_:nowhere_module.Hook}", r"no module 'nowhere_module' on Python's path"),
    ("{_target_:user_hooks.Nothing}", r"regularizer.extra\[0\]: a Nothing defines none of the hooks \(start, "),
    ("{_target_:user_hooks.HalfState}", r"defines only one of state_dict and load_state_dict"),
    ("{_target_:user_hooks.failing,size:3}", r"regularizer.extra\[0\] \(user_hooks.failing\) failed: RuntimeError: no "
                                             r"GPU kernel for this \(called with size\)"),
])
def test_a_bad_extra_is_one_line_before_anything_trains(small_cfg, user_hooks, tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):  # while validating (imports) or building (the objects)
        runner.run(small_cfg("cifar10", extra(entry)), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_two_extras_that_choose_the_eval_weights_are_refused(small_cfg, user_hooks, tmp_path):
    cfg = small_cfg("cifar10", extra("{_target_:user_hooks.FrozenCopy}"), "regularizer.ema.decay=0.9")
    with pytest.raises(ConfigError, match=r"2 regularizers choose the weights that validation and test use "
                                          r"\(eval_model: ExponentialMovingAverage, FrozenCopy\)"):
        runner.run(cfg, tmp_path / "run")


def test_an_extras_keys_label_its_group_in_compare(small_cfg, monkeypatch, tmp_path):
    from regbench.compare import compare

    monkeypatch.syspath_prepend(str(EXAMPLES))
    runner.run(small_cfg("cifar10", "regularizer=bn_dropout"), tmp_path / "runs" / "plain")
    runner.run(small_cfg("cifar10", "regularizer=bn_dropout",
                         extra("{_target_:my_regularizer.Orthogonality,weight:0.001}")), tmp_path / "runs" / "ortho")
    summary = compare([tmp_path / "runs"]).summary
    assert sorted(summary["regularizer.extra"]) == ['[]', '[{"_target_": "my_regularizer.Orthogonality", "weight": 0.001}]']
    # the extra's source hash tells nothing the entry does not: it stays out of the label
    assert not [c for c in summary.columns if c.startswith("code.")]
