"""Your own model and your own task, through the `regbench` command as a user runs them: the shipped
examples (examples/my_model.py, examples/my_task.py), the contract's refusals, and ResNet-18."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import tiny_overrides
from regbench import complexity, runner
from regbench.errors import ConfigError
from regbench.models import build_model
from regbench.regimen import Regimen
from regbench.validation import validate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def regbench(args, env, cwd, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(env, PYTHONPATH=str(extra_path or EXAMPLES))
    return subprocess.run([sys.executable, "-m", "regbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.integration
def test_the_example_model_runs_resumes_and_is_compared_under_its_factory(tiny_data_dir, tmp_path, cli_env):
    """model=custom with new model.* keys given without +, a regimen the model places, a grid, a re-run that
    reuses it, and compare naming the model by its factory."""
    sweep = tmp_path / "sweep"
    args = ["-m", "model=custom", "model._target_=my_model.build", "regularizer=none,bn_dropout",
            *tiny_overrides(tiny_data_dir, tmp_path / "cache", "trainer.max_epochs=2", "model.width=8"),
            f"hydra.sweep.dir={sweep}"]
    result = regbench(args, cli_env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = pd.read_csv(sweep / "results.csv")
    assert set(results["model"]) == {"my_model.build"} and set(results["status"]) == {"completed"}
    assert (results["config.model.width"] == 8).all() and results["run_id"].nunique() == 2
    record = json.loads((sweep / "1" / "metrics.json").read_text())
    assert record["params"] > record["flops_per_example"] / 10**4 and record["regularizer"] == "bn_dropout"
    again = regbench(args[:-1] + [f"hydra.sweep.dir={tmp_path / 'again'}"], cli_env, tmp_path)
    assert again.returncode == 0 and "reusing its record" in again.stderr
    compared = regbench(["compare", str(sweep)], cli_env, tmp_path)
    assert compared.returncode == 0 and "bn_dropout" in compared.stdout
    cnn13 = regbench(tiny_overrides(tiny_data_dir, tmp_path / "cache", "trainer.max_epochs=2",
                                    f"hydra.run.dir={tmp_path / 'cnn13'}"), cli_env, tmp_path)
    assert cnn13.returncode == 0
    assert json.loads((tmp_path / "cnn13" / "metrics.json").read_text())["run_id"] not in set(results["run_id"])


@pytest.mark.integration
def test_the_example_task_runs_through_the_command(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    result = regbench(["task=custom", "task._target_=my_task.SineRegression", "model=custom",
                       "model._target_=my_task.build_mlp", "data.n_train=512", "model.hidden=32", "optimizer=adam",
                       "optimizer.lr=0.01", "trainer.max_epochs=15", "trainer.batch_size=64", "trainer.progress=false",
                       f"hydra.run.dir={run_dir}"], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed" and record["task"] == "my_task.SineRegression"
    assert record["primary_metric"] == "rmse" and record["higher_is_better"] is False
    assert record["test"]["rmse"] < 0.4  # sin(x) has rmse 0.71 around 0: the MLP learnt the curve
    history = pd.read_csv(run_dir / "history.csv")
    assert history["val_rmse"].iloc[-1] < history["val_rmse"].iloc[0]


@pytest.mark.integration
def test_the_example_regularizer_runs_through_the_command_and_is_compared_with_bn_dropout(tiny_data_dir, tmp_path,
                                                                                         cli_env):
    """docs/own-model.md's command: an orthogonality penalty of the user's own beside bn_dropout, named by
    regularizer.name, in one sweep, and compare ranks the two."""
    sweep = tmp_path / "sweep"
    ortho = "[{_target_:my_regularizer.Orthogonality,weight:0.001}]"
    common = [*tiny_overrides(tiny_data_dir, tmp_path / "cache", "trainer.max_epochs=2"), "regularizer=bn_dropout"]
    plain = regbench([*common, f"hydra.run.dir={sweep / 'plain'}"], cli_env, tmp_path)
    mine = regbench([*common, f"regularizer.extra={ortho}", "regularizer.name=bn_dropout_ortho",
                     f"hydra.run.dir={sweep / 'ortho'}"], cli_env, tmp_path)
    assert plain.returncode == 0 and mine.returncode == 0, mine.stderr[-3000:]
    record = json.loads((sweep / "ortho" / "metrics.json").read_text())
    assert record["regularizer"] == "bn_dropout_ortho" and record["status"] == "completed"
    assert record["config"]["regularizer"]["extra"] == [{"_target_": "my_regularizer.Orthogonality", "weight": 0.001}]
    assert record["code"][0]["path"] == str(EXAMPLES / "my_regularizer.py")
    assert record["val"] != json.loads((sweep / "plain" / "metrics.json").read_text())["val"]  # the penalty acted
    compared = regbench(["compare", str(sweep), "--baseline", "regularizer=bn_dropout"], cli_env, tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert "bn_dropout_ortho" in compared.stdout and "bn_dropout " in compared.stdout


BROKEN = '''
import torch
from torch import nn


def ignores_the_regimen(*, regimen, num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))


def lazy(*, regimen, num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def raises(**kwargs):
    raise RuntimeError("out of ideas")


def not_a_module(**kwargs):
    return "a string"
'''


@pytest.mark.integration
@pytest.mark.parametrize("target, extra, message", [
    ("broken.ignores_the_regimen", ["regularizer=bn"],
     "regularizer=bn asks for BatchNorm, but the model never asked the regimen where to put them"),
    ("broken.raises", [], "model._target_=broken.raises failed: RuntimeError: out of ideas (regbench called it "
                          "with regimen, num_classes, in_channels, image_size)"),
    ("broken.not_a_module", [], "model._target_=broken.not_a_module returned a str, not a torch.nn.Module"),
    ("broken.lazy", [], "model._target_=broken.lazy returned a model with an uninitialised (lazy) parameter 1.weight"),
    ("broken.nowhere", [], "model._target_=broken.nowhere: broken has no 'nowhere' (in "),
    ("nosuchmodule.build", [], "model._target_=nosuchmodule.build: no module 'nosuchmodule' on Python's path"),
])
def test_a_model_that_breaks_the_contract_is_one_line(target, extra, message, tiny_data_dir, tmp_path, cli_env):
    (tmp_path / "broken.py").write_text(BROKEN)
    overrides = [o for o in tiny_overrides(tiny_data_dir, tmp_path / "cache") if not o.startswith("model.width")]
    result = regbench(["model=custom", f"model._target_={target}", *extra, *overrides,
                       f"hydra.run.dir={tmp_path / 'run'}"],
                      cli_env, tmp_path, extra_path=tmp_path)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and message in last and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.json").exists()  # refused before training: no record


def test_a_plain_model_works_without_a_regimen(compose_cfg, tiny_data_dir, tmp_path, monkeypatch):
    (tmp_path / "plain.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [o for o in tiny_overrides(tiny_data_dir, tmp_path / "cache") if not o.startswith("model.width")]
    cfg = compose_cfg(*overrides, "model=custom", "model._target_=plain.ignores_the_regimen", "regularizer=none")
    validate(cfg)
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["model"] == "plain.ignores_the_regimen"
    assert record["params"] == 3 * 32 * 32 * 10 + 10


def test_model_custom_without_a_target_and_an_image_model_for_a_tagger_are_refused(compose_cfg, monkeypatch):
    with pytest.raises(ConfigError, match=r"model=custom needs model._target_=PACKAGE.MODULE.CALLABLE"):
        validate(compose_cfg("model=custom"), machine=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    with pytest.raises(ConfigError, match=r"model=my_model.build does not fit task=conll2003 \(its factory takes "
                                          r"images, the task gives token_sequences\): use model=bilstm or model=custom$"):
        validate(compose_cfg("task=conll2003", "model=custom", "model._target_=my_model.build"), machine=False)
    # a task that no built-in model fits names only model=custom
    with pytest.raises(ConfigError, match="model=cnn13 does not fit task=my_task.SineRegression: use model=custom$"):
        validate(compose_cfg("task=custom", "task._target_=my_task.SineRegression"), machine=False)


def test_resnet18_has_the_cifar_parameter_count_and_places_the_regimen(compose_cfg):
    def build(*overrides):
        cfg = compose_cfg("model=resnet18", *overrides)
        regimen = Regimen.from_config(cfg)
        model = build_model(cfg, regimen, num_classes=10, in_channels=3, image_size=32)
        regimen.check_placed()
        return model

    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    with_bn = build("regularizer=bn")
    assert complexity.count_parameters(with_bn) == 11_173_962 and count(with_bn, torch.nn.BatchNorm2d) == 20
    plain = build("regularizer=dropout")  # no BN: every conv keeps a bias; one dropout, before the classifier
    assert count(plain, torch.nn.BatchNorm2d) == 0 and count(plain, torch.nn.Dropout) == 1
    assert isinstance(plain.dropout, torch.nn.Dropout)
    first_five = build("regularizer=bn", "regularizer.norm.layers=first:5")  # stem + the first stage's 4 convs
    assert count(first_five, torch.nn.BatchNorm2d) == 5
    assert with_bn(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"reaches past the model's layers: it has layers 1..17 \(resnet18"):
        from regbench.validation import validate
        validate(compose_cfg("model=resnet18", "regularizer=bn", "regularizer.norm.layers=[18]"), machine=False)


def test_a_model_declares_what_it_supports_and_fits_every_task_of_its_inputs(compose_cfg, tmp_path, monkeypatch):
    """INPUTS and RESIDUAL_BLOCKS beside the model's checks (regbench.models.Capabilities): the tasks list no model
    names, so a model module that declares its inputs fits them all without editing a task."""
    from regbench.models import builtin_models_for

    assert builtin_models_for("images") == ["cnn13", "resnet18"]
    assert builtin_models_for("token_sequences") == ["bilstm"]
    assert builtin_models_for("interactions") == ["mf", "popularity", "two_tower"]  # mf extends two_tower's preset
    assert builtin_models_for(None) == []
    (tmp_path / "seq_model.py").write_text(
        'INPUTS = "token_sequences"\nRESIDUAL_BLOCKS = False\n'
        "def build(**kwargs):\n    raise AssertionError('validation never builds')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    with pytest.raises(ConfigError, match=r"model=seq_model.build does not fit task=cifar10 \(its factory takes "
                                          r"token_sequences, the task gives images\): use model=cnn13 or model=resnet18 "
                                          r"or model=custom$"):
        validate(compose_cfg("model=custom", "model._target_=seq_model.build"), machine=False)
    # my_model declares INPUTS = "images": it fits every image task, and no task that gives other inputs
    validate(compose_cfg("task=svhn", "model=custom", "model._target_=my_model.build"), machine=False)
    with pytest.raises(ConfigError, match="does not fit task=my_task.SineRegression"):
        validate(compose_cfg("task=custom", "task._target_=my_task.SineRegression", "model=custom",
                             "model._target_=my_model.build"), machine=False)
    # RESIDUAL_BLOCKS = False refuses stochastic depth before anything is built (no placement needed to find out)
    with pytest.raises(ConfigError, match=r"^regularizer.stochastic_depth=0.1 drops residual blocks, and "
                                          r"model=my_model.build has none: use model=resnet18"):
        validate(compose_cfg("model=custom", "model._target_=my_model.build", "regularizer.stochastic_depth=0.1"),
                 machine=False)
