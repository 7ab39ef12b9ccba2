"""Start-up checks of a composed config: every value a run depends on, with one clear message.

Hydra already rejects unknown group options and unknown keys; this rejects values that compose fine but
make no sense (dropout p = 1.5, a negative lr, an unknown activation). The shared groups are checked
here; the regimen, the task and the model check their own keys (regbench.checks has the helpers)."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from regbench import checks, tracking
from regbench.errors import ConfigError
from regbench.models import (Capabilities, builtin_models_for, capabilities, is_custom, model_factory, model_target,
                             model_validator)
from regbench.hooks import extra_factories
from regbench.optim import OPTIMIZERS, SCHEDULES, optimizer_class
from regbench.regimen import Regimen
from regbench.tasks import task_class

PRECISIONS = ("auto", "fp32", "bf16")


def validate(cfg: DictConfig, machine: bool = True) -> Regimen:
    """Raise ConfigError (or DataError) on the first problem; return the config's regimen. `machine`: also
    check what depends on this machine, the device and the data (not where a launcher runs the jobs on
    other machines, e.g. Slurm)."""
    checks.number(cfg, "seed", low=0, integer=True)
    regimen = Regimen.from_config(cfg)

    if optimizer_class(cfg) is None:  # optimizer._target_, when set, is imported here
        checks.choice(cfg, "optimizer.name", tuple(OPTIMIZERS))
    extra_factories(cfg)  # regularizer.extra: each entry has a _target_ that imports
    checks.number(cfg, "optimizer.lr", low=0, low_open=True)
    checks.choice(cfg, "schedule.name", SCHEDULES)
    checks.number(cfg, "schedule.warmup_epochs", low=0)
    if cfg.schedule.name == "step":
        checks.number(cfg, "schedule.step_size", low=1, integer=True)
        checks.number(cfg, "schedule.gamma", low=0, low_open=True)
        for m in checks.get(cfg, "schedule.milestones"):
            if not isinstance(m, int) or m < 1:
                raise ConfigError(f"schedule.milestones contains {m!r}: milestones are epochs, integers >= 1")
    if cfg.schedule.name == "cosine":
        checks.number(cfg, "schedule.min_lr_ratio", low=0, high=1)

    _check_trainer(cfg)
    tracking.check_config(cfg)
    for key in ("limit_train", "limit_eval"):  # the image and tagging tasks' size limits
        if key in cfg.data:
            checks.number(cfg, f"data.{key}", low=1, integer=True, allow_none=True)

    task = task_class(cfg)
    model_target(cfg)  # set, before anything reads model.name (model=custom names a model by its factory)
    model = _check_model_fits(cfg, task)
    _check_task_regularizers(cfg, task, regimen)
    if regimen.stochastic_depth > 0 and model.residual_blocks is False:
        raise ConfigError(regimen.no_residual_blocks(f"model={cfg.model.name}"))
    _check_data_keys(cfg, task)
    task.validate_config(cfg)
    check_model = model_validator(cfg)
    if check_model is not None:
        check_model(cfg, regimen)
    if machine:
        _check_device(cfg)
        task.check_data(cfg)
    return regimen


# Why a task-level part of the regimen does not apply to a task that does not list it in Task.regularizers.
TASK_REGULARIZERS = {
    "label_smoothing": ("regularizer.label_smoothing", "label_smoothing",
                        "it smooths class targets; it applies to the image tasks and the tagger without its CRF"),
    "mixup": ("regularizer.mixup.alpha", "mixup_alpha", "it mixes images; it applies to image classification only"),
    "cutmix": ("regularizer.cutmix.alpha", "cutmix_alpha", "it pastes image boxes; it applies to image "
               "classification only"),
}


def _check_task_regularizers(cfg: DictConfig, task, regimen: Regimen) -> None:
    for part, (key, attribute, why) in TASK_REGULARIZERS.items():
        value = getattr(regimen, attribute)
        if value > 0 and part not in task.regularizers:
            raise ConfigError(f"{key}={value:g} does not apply to task={cfg.task.name}: {why}. Set {key}=0")


def _check_model_fits(cfg: DictConfig, task) -> Capabilities:
    """A model fits a task that gives it the inputs its module declares (INPUTS = Task.inputs), or that names it
    in Task.models; a user's model that declares no INPUTS fits a task that accepts custom models. Returns
    what the model's module declares (its factory imported: refused in one line when it cannot be)."""
    custom = is_custom(cfg)
    model = Capabilities(None, None)
    if not custom or task.accepts_custom_models:  # a task that takes no custom model refuses it unimported
        model_factory(cfg)
        model = capabilities(cfg)
    if custom:
        fits = task.accepts_custom_models and (model.inputs is None or model.inputs == task.inputs)
    else:
        fits = cfg.model.name in task.models or (task.inputs is not None and model.inputs == task.inputs)
    if fits:
        return model
    options = [f"model={m}" for m in dict.fromkeys([*builtin_models_for(task.inputs), *task.models])]
    options += ["model=custom"] if task.accepts_custom_models else []
    takes = f" (its factory takes {model.inputs}, the task gives {task.inputs or 'inputs of its own'})" \
        if is_custom(cfg) and model.inputs is not None else ""
    raise ConfigError(f"model={cfg.model.name} does not fit task={cfg.task.name}{takes}: use {' or '.join(options)}")


def _check_data_keys(cfg: DictConfig, task) -> None:
    """A task of the user's own reads the data.* keys it declares (Task.data_keys); others are refused."""
    if any(c.__module__.startswith("regbench.tasks.") and c.__module__ != "regbench.tasks.base" for c in task.__mro__):
        return  # a built-in task, or a subclass of one: its data.* keys are the preset's YAML, which Hydra closes
    given = sorted(cfg.get("data") or {})
    if not given:
        return
    target = cfg.task.get("_target_")
    if task.data_keys is None:
        raise ConfigError(f"task._target_={target} is given data.{', data.'.join(given)} but declares no data_keys: add "
                          f"data_keys = {tuple(given)!r} (the keys it reads) to the class, so that a mistyped key is "
                          "refused rather than ignored")
    unread = [k for k in given if k not in task.data_keys]
    if unread:
        from difflib import get_close_matches

        hint = get_close_matches(unread[0], task.data_keys, n=1)
        mean = f" (did you mean data.{hint[0]}?)" if hint else ""
        raise ConfigError(f"data.{unread[0]}: task._target_={target} reads no such key{mean}; it reads "
                          f"{', '.join('data.' + k for k in task.data_keys) or 'no data.* key'} (Task.data_keys). "
                          "regbench refuses keys that nothing would read rather than ignore them")


def _check_device(cfg: DictConfig) -> None:
    device = str(cfg.trainer.device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={device} but this machine has no CUDA device: use trainer.device=auto "
                              "or cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={device} but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def _check_trainer(cfg: DictConfig) -> None:
    checks.number(cfg, "trainer.max_epochs", low=1, integer=True)
    checks.number(cfg, "trainer.batch_size", low=1, integer=True)
    checks.number(cfg, "trainer.eval_batch_size", low=1, integer=True)
    checks.number(cfg, "trainer.early_stopping.patience", low=0, integer=True)
    checks.number(cfg, "trainer.threads", low=0, integer=True)
    checks.choice(cfg, "trainer.precision", PRECISIONS)
    for key in ("progress", "compile", "save_checkpoint", "resume", "gradients.per_layer", "test_outputs",
                "flush_denormal"):
        checks.boolean(cfg, f"trainer.{key}")
    checks.number(cfg, "trainer.checkpoint_every", low=0, integer=True)
    checks.number(cfg, "trainer.test_outputs_max_mb", low=0)
    checks.number(cfg, "trainer.gradients.vanishing_below", low=0)
    checks.number(cfg, "trainer.gradients.exploding_above", low=0, low_open=True)
    fractions = checks.plain(checks.get(cfg, "trainer.compression.prune"))
    if not isinstance(fractions, (list, tuple)) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f < 1 for f in fractions):
        raise ConfigError(f"trainer.compression.prune={fractions!r} is invalid: give a list of fractions in [0, 1), "
                          "e.g. trainer.compression.prune=[0.5,0.9] (or [] for none)")
    checks.boolean(cfg, "trainer.compression.int8")
    checks.number(cfg, "trainer.latency.batch_size", low=1, integer=True, allow_none=True)
    checks.number(cfg, "trainer.latency.warmup", low=0, integer=True)
    checks.number(cfg, "trainer.latency.repeats", low=0, integer=True)
    checks.number(cfg, "trainer.latency.max_seconds", low=0)
    device = checks.get(cfg, "trainer.device")
    if not (device in ("auto", "cpu", "cuda") or (isinstance(device, str) and device.startswith("cuda:")
                                                  and device[5:].isdigit())):
        raise ConfigError(f"trainer.device={device!r} is not allowed: choose auto, cpu, cuda or cuda:N")
