"""Start-up checks of a composed config: every value a run depends on, with one clear message.

Hydra already rejects unknown group options and unknown keys; this module rejects values that
compose fine but make no sense (dropout p = 1.5, a negative lr, an unknown activation)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from regbench.errors import ConfigError
from regbench.regularizers import LAYER_SELECTOR_HELP, parse_layer_selector

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "gelu")
INITS = ("default", "kaiming", "xavier", "orthogonal")
NORM_TYPES = ("none", "batch")
CLIP_MODES = ("none", "norm", "value")
PRECISIONS = ("auto", "fp32", "bf16")
DATA_SOURCES = ("auto", "cache", "torchvision", "imagefolder")


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, throw_on_missing=False, default=_MISSING)
    if value is _MISSING:
        raise ConfigError(f"missing config key '{key}': add it to your config or command line")
    return value


_MISSING = object()


def _choice(cfg: DictConfig, key: str, allowed: Sequence[str]) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(allowed)}")


def _number(cfg: DictConfig, key: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, integer: bool = False,
            allow_none: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r} is invalid: it must be {kind}" + (" or null" if allow_none else ""))
    if value != value:  # NaN
        raise ConfigError(f"{key}=nan is invalid: it must be {kind}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        if low is not None and high is not None:
            rng = f"in {lo}, {hi}"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low}"
        else:
            rng = f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{key}={value!r} is invalid: it must be {rng}")


def _bool(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is invalid: it must be true or false")


def _layers(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    try:
        parse_layer_selector(OmegaConf.to_object(value) if OmegaConf.is_config(value) else value)
    except ValueError as err:
        raise ConfigError(f"{key}={value!r} is invalid: {err}. Allowed: {LAYER_SELECTOR_HELP}") from None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid value. Task- and model-specific keys are checked
    by their own modules (they know their keys); this covers the shared groups."""
    _number(cfg, "seed", low=0, integer=True)
    _number(cfg, "penalty.l1", low=0)

    _choice(cfg, "regularizer.norm.type", NORM_TYPES)
    _layers(cfg, "regularizer.norm.layers")
    _number(cfg, "regularizer.dropout.p", low=0, high=1, high_open=True)
    _layers(cfg, "regularizer.dropout.layers")
    _choice(cfg, "regularizer.grad_clip.mode", CLIP_MODES)
    _number(cfg, "regularizer.grad_clip.max", low=0, low_open=True)

    from regbench.optim import OPTIMIZERS, SCHEDULES  # avoid importing torch for a config error

    _choice(cfg, "optimizer.name", tuple(OPTIMIZERS))
    _number(cfg, "optimizer.lr", low=0, low_open=True)
    _number(cfg, "optimizer.weight_decay", low=0)
    _bool(cfg, "optimizer.decoupled_weight_decay")
    _choice(cfg, "schedule.name", tuple(SCHEDULES))
    _number(cfg, "schedule.warmup_epochs", low=0)
    if cfg.schedule.name == "step":
        _number(cfg, "schedule.step_size", low=1, integer=True)
        _number(cfg, "schedule.gamma", low=0, low_open=True)
        for m in _get(cfg, "schedule.milestones"):
            if not isinstance(m, int) or m < 1:
                raise ConfigError(f"schedule.milestones contains {m!r}: milestones are epochs, integers >= 1")
    if cfg.schedule.name == "cosine":
        _number(cfg, "schedule.min_lr_ratio", low=0, high=1)

    _number(cfg, "trainer.max_epochs", low=1, integer=True)
    _number(cfg, "trainer.batch_size", low=1, integer=True)
    _number(cfg, "trainer.eval_batch_size", low=1, integer=True)
    _number(cfg, "trainer.early_stopping.patience", low=0, integer=True)
    _number(cfg, "trainer.threads", low=0, integer=True)
    _choice(cfg, "trainer.precision", PRECISIONS)
    _bool(cfg, "trainer.progress")
    _bool(cfg, "trainer.compile")
    _bool(cfg, "trainer.save_checkpoint")
    _bool(cfg, "trainer.resume")
    _number(cfg, "trainer.checkpoint_every", low=0, integer=True)
    _bool(cfg, "trainer.gradients.per_layer")
    _number(cfg, "trainer.gradients.vanishing_below", low=0)
    _number(cfg, "trainer.gradients.exploding_above", low=0, low_open=True)
    _number(cfg, "trainer.latency.batch_size", low=1, integer=True, allow_none=True)
    _number(cfg, "trainer.latency.warmup", low=0, integer=True)
    _number(cfg, "trainer.latency.repeats", low=0, integer=True)
    _number(cfg, "trainer.latency.max_seconds", low=0)
    device = _get(cfg, "trainer.device")
    if not (device in ("auto", "cpu", "cuda") or (isinstance(device, str) and device.startswith("cuda:")
                                                  and device[5:].isdigit())):
        raise ConfigError(f"trainer.device={device!r} is not allowed: choose auto, cpu, cuda or cuda:N")

    for key in ("limit_train", "limit_eval"):  # the image and tagging tasks' size limits
        if key in cfg.data:
            _number(cfg, f"data.{key}", low=1, integer=True, allow_none=True)

    from regbench.models import MODELS
    from regbench.tasks import TASKS

    _choice(cfg, "task.name", tuple(TASKS))
    _choice(cfg, "model.name", tuple(MODELS))
    task = TASKS[cfg.task.name]
    if cfg.model.name not in task.models:
        raise ConfigError(f"model={cfg.model.name} does not fit task={cfg.task.name}: "
                          f"use model={' or model='.join(task.models)}")
    task.validate_config(cfg)
    MODELS[cfg.model.name].validate_config(cfg)


def layer_selectors(cfg: DictConfig, n_layers: int, hint: str) -> None:
    """Both placement selectors must pick layers this model has (1..n_layers)."""
    from regbench.regularizers import plain, select_layers

    for key in ("regularizer.norm.layers", "regularizer.dropout.layers"):
        try:
            select_layers(plain(_get(cfg, key)), n_layers, ())
        except ValueError as err:
            raise ConfigError(f"{key}: {err} ({hint})") from None


def check_model_common(cfg: DictConfig) -> None:
    """Keys every model shares: activation and init."""
    _choice(cfg, "model.activation", ACTIVATIONS)
    _choice(cfg, "model.init", INITS)
    if cfg.model.activation == "leaky_relu":
        _number(cfg, "model.negative_slope", low=0, high=1)


# Re-exported for task and model modules, which check their own keys.
number = _number
choice = _choice
boolean = _bool
