"""Config composition for every option of every group, and start-up rejection of bad values."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from regbench.errors import ConfigError
from regbench.validation import validate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["task", "model", "regularizer", "optimizer", "schedule", "trainer", "paths", "augment"]
TASK_OF_MODEL = {"bilstm": "task=conll2003", "two_tower": "task=movielens", "mf": "task=movielens",
                 "popularity": "task=movielens"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_options_the_study_needs():
    assert set(options("regularizer")) == {"none", "bn", "dropout", "bn_dropout", "bn_dropout_gc",  # the study's
                                           "label_smoothing", "mixup", "ema"}                      # bn_dropout + one
    assert set(options("optimizer")) >= {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"}
    assert set(options("schedule")) >= {"constant", "step", "cosine"}
    assert set(options("augment")) >= {"standard", "none"}
    assert set(options("experiment")) >= {"quickstart", "regimens"}
    assert set(options("task")) >= {"cifar10", "conll2003", "conll2000", "conll"}
    assert set(options("model")) >= {"cnn13", "bilstm"}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose_cfg, group, option, monkeypatch):
    monkeypatch.syspath_prepend(str(CONF.parent / "examples"))  # model=custom and task=custom name these
    extra = {("task", "conll"): ["data.dir=/any/corpus"], ("task", "imagefolder"): ["data.dir=/any/images"],
             ("task", "custom"): ["task._target_=my_task.SineRegression", "model=custom",
                                   "model._target_=my_task.build_mlp"],
             ("model", "custom"): ["model._target_=my_model.build"],
             ("optimizer", "custom"): ["optimizer._target_=my_optim.Lion"]}.get((group, option), [])
    if group == "model" and option in TASK_OF_MODEL:
        extra.append(TASK_OF_MODEL[option])
    cfg = compose_cfg(f"{group}={option}", *extra)
    validate(cfg, machine=False)
    if group == "regularizer":
        assert cfg.regularizer.name == option
    if group == "optimizer":
        # presets are named <optimizer>_<purpose> (adam_tagging) and keep the optimizer's name
        assert option == cfg.optimizer.name or option.startswith(cfg.optimizer.name + "_")
    if group == "schedule":
        assert cfg.schedule.name == option


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_validates(compose_cfg, experiment):
    validate(compose_cfg(f"experiment={experiment}"), machine=False)


def test_a_task_brings_its_model_optimizer_and_trainer_defaults_and_the_command_line_wins(compose_cfg):
    cfg = compose_cfg("task=conll2003")
    assert (cfg.model.name, cfg.optimizer.name, cfg.optimizer.lr, cfg.trainer.batch_size) == ("bilstm", "adam", 5e-3, 64)
    cfg = compose_cfg("task=conll2003", "optimizer=momentum", "trainer.batch_size=10")
    assert (cfg.optimizer.name, cfg.trainer.batch_size) == ("momentum", 10)
    assert compose_cfg("task=conll2003", "optimizer=adam").optimizer.lr == 1e-3  # the generic preset, untouched


def test_movielens_defaults_are_the_best_measured_two_tower_recipe(compose_cfg):
    cfg = compose_cfg("task=movielens")
    assert (cfg.model.name, cfg.model.loss, cfg.model.negatives) == ("two_tower", "softmax", "in_batch")
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", 5e-3)
    mf = compose_cfg("task=movielens", "model=mf")
    assert (mf.model.loss, mf.model.negatives) == ("bpr", "uniform")  # BPR-MF stays BPR
    bpr = compose_cfg("task=movielens", "model.loss=bpr", "model.negatives=uniform")
    validate(bpr, machine=False)


def test_the_study_preset_is_three_tasks_by_five_regimens_by_three_seeds():
    from regbench.preflight import compose_config

    params = compose_config(["experiment=study"], with_hydra=True).hydra.sweeper.params
    grid = {key: value.split(",") for key, value in params.items()}
    assert grid == {"task": ["cifar10", "conll2003", "movielens"],
                    "regularizer": ["none", "bn", "dropout", "bn_dropout", "bn_dropout_gc"], "seed": ["0", "1", "2"]}


def test_defaults_match_the_documented_keys(compose_cfg):
    cfg = compose_cfg()
    assert cfg.seed == 0 and cfg.model.width == 1.0 and cfg.trainer.device == "auto"
    assert cfg.model.activation == "leaky_relu" and cfg.model.negative_slope == 0.1
    assert cfg.data.limit_train is None and cfg.data.limit_eval is None
    assert cfg.data.augment.crop_padding == 4 and cfg.data.augment.hflip is True


def test_data_dir_defaults_to_env(compose_cfg, monkeypatch):
    monkeypatch.setenv("REGBENCH_DATA", "/somewhere/data")
    assert compose_cfg().paths.data_dir == "/somewhere/data"
    monkeypatch.delenv("REGBENCH_DATA")
    assert compose_cfg().paths.data_dir == "./data"


@pytest.mark.parametrize("override,key,allowed", [
    ("regularizer.dropout.p=1.5", "regularizer.dropout.p", "[0, 1)"),
    ("regularizer.dropout.p=1.0", "regularizer.dropout.p", "[0, 1)"),
    ("regularizer.dropout.p=-0.1", "regularizer.dropout.p", "[0, 1)"),
    ("optimizer.lr=-0.1", "optimizer.lr", "> 0"),
    ("optimizer.lr=0", "optimizer.lr", "> 0"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay", ">= 0"),
    ("model.activation=swish", "model.activation", "relu, leaky_relu, tanh, gelu"),
    ("model.init=magic", "model.init", "default, kaiming, xavier, orthogonal"),
    ("model.width=0", "model.width", "in (0"),
    ("regularizer.norm.type=instance", "regularizer.norm.type", "none, batch, group, layer"),
    ("regularizer.norm.layers=first:x", "regularizer.norm.layers", "first:K"),
    ("regularizer.dropout.layers=[12]", "regularizer.dropout.layers", "1..9"),
    ("regularizer.grad_clip.mode=both", "regularizer.grad_clip.mode", "none, norm, value, agc"),
    ("regularizer.grad_clip.max=0", "regularizer.grad_clip.max", "> 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs", ">= 1"),
    ("trainer.batch_size=1.5", "trainer.batch_size", "integer"),
    ("trainer.device=tpu", "trainer.device", "auto, cpu, cuda"),
    ("trainer.precision=fp8", "trainer.precision", "auto, fp32, bf16"),
    ("data.limit_train=0", "data.limit_train", ">= 1"),
    ("data.augment.color_jitter=2", "data.augment.color_jitter", "[0, 1)"),
    ("penalty.l1=-1", "penalty.l1", ">= 0"),
    ("seed=-3", "seed", ">= 0"),
    ("schedule=cosine schedule.min_lr_ratio=2", "schedule.min_lr_ratio", "[0, 1]"),
])
def test_bad_values_are_rejected_with_the_key_and_what_is_allowed(compose_cfg, override, key, allowed):
    cfg = compose_cfg(*override.split())
    with pytest.raises(ConfigError) as info:
        validate(cfg, machine=False)
    message = str(info.value)
    assert key in message and allowed in message


def test_placement_selectors_accepted(compose_cfg):
    for value in ("all", "none", "default", "first:5", "last:3", "from:6", "[1,2,9]"):
        validate(compose_cfg("regularizer=bn_dropout", f"regularizer.norm.layers={value}",
                             f"regularizer.dropout.layers={value}"), machine=False)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regbench", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.integration
def test_cli_bad_value_exits_2_with_one_clear_line(cli_env):
    result = _cli(["regularizer.dropout.p=1.5"], cli_env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "regularizer.dropout.p=1.5" in errors[0] and "[0, 1)" in errors[0]


@pytest.mark.integration
def test_cli_unknown_group_option_names_the_allowed_options(cli_env):
    result = _cli(["regularizer=bn_droput"], cli_env)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "Traceback" not in output
    assert "regularizer" in output and "bn_dropout_gc" in output  # the list of available options


@pytest.mark.integration
def test_cli_unknown_key_is_rejected_without_traceback(cli_env):
    result = _cli(["trainer.max_epoch=3"], cli_env)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "Traceback" not in output and "max_epoch" in output
