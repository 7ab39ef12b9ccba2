"""Models are found through the config's `model._target_`: a callable (a function or a class) that takes
keyword arguments, `regimen=` (where to put BatchNorm and dropout: regbench.regimen), the task's shape
information (e.g. num_classes, in_channels) and every other model.* key, and returns an nn.Module.
The module that holds the callable may define `validate_config(cfg, regimen)`, which checks the model's
keys before anything trains, and declare what the model supports beside it: `INPUTS` (what its factory
takes from a task: "images", "token_sequences", "interactions"; it fits every task whose `Task.inputs` is
the same) and `RESIDUAL_BLOCKS` (whether it applies regularizer.stochastic_depth). The built-in models
(cnn13, resnet18, bilstm, two_tower / mf, popularity) follow the same contract as a user's own, so a new
model fits the tasks of its inputs without editing a task."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from regbench.errors import ConfigError
from regbench.regimen import Regimen
from regbench.targets import locate

NOT_PASSED = ("name", "_target_")  # model.* keys that name the model rather than configure it


@dataclass(frozen=True)
class Capabilities:
    """What a model's module declares (None where it declares nothing: a user's model is then checked once
    built, by what it asks of the regimen)."""

    inputs: str | None            # INPUTS: the Task.inputs its factory takes
    residual_blocks: bool | None  # RESIDUAL_BLOCKS: it asks placement.drop_path (regularizer.stochastic_depth)


def capabilities(cfg: DictConfig) -> Capabilities:
    module = importlib.import_module(model_factory(cfg).__module__)
    return Capabilities(getattr(module, "INPUTS", None), getattr(module, "RESIDUAL_BLOCKS", None))


def builtin_models_for(inputs: str | None) -> list[str]:
    """The built-in model options (conf/model/*.yaml) whose factory takes these inputs, in name order."""
    from regbench.preflight import compose_config

    if inputs is None:
        return []
    targets = {name: compose_config([f"model={name}"]).model._target_ for name in sorted(builtin_models())}
    return [name for name, target in targets.items()
            if getattr(importlib.import_module(target.rpartition(".")[0]), "INPUTS", None) == inputs]


def builtin_models() -> set[str]:
    """The model options regbench ships (conf/model/*.yaml), `custom` aside."""
    return {f.name.removesuffix(".yaml") for f in files("regbench.conf").joinpath("model").iterdir()
            if f.name.endswith(".yaml")} - {"custom"}


def is_custom(cfg: DictConfig) -> bool:
    """A model of the user's own (model=custom, or any factory that is not one of regbench's)."""
    return cfg.model.get("name") not in builtin_models()


def model_target(cfg: DictConfig) -> str:
    """model._target_, refused in one line when model=custom left it unset."""
    if OmegaConf.is_missing(cfg.model, "_target_"):
        raise ConfigError("model=custom needs model._target_=PACKAGE.MODULE.CALLABLE: the function or class that "
                          "builds your model (docs/own-model.md)")
    target = cfg.model.get("_target_")
    if not target:
        raise ConfigError("model._target_ is not set: name the callable that builds the model, e.g. "
                          "model._target_=my_pkg.my_module.build")
    return str(target)


def model_factory(cfg: DictConfig) -> Callable[..., nn.Module]:
    target = model_target(cfg)
    factory = locate("model._target_", target)
    if not callable(factory):
        raise ConfigError(f"model._target_={target} is a {type(factory).__name__}, not a function or class")
    return factory


def model_validator(cfg: DictConfig) -> Callable[[DictConfig, Regimen], None] | None:
    """validate_config(cfg, regimen) of the module that holds the model's factory, if it has one."""
    factory = model_factory(cfg)
    module = importlib.import_module(factory.__module__)
    return getattr(module, "validate_config", None)


def model_keys(cfg: DictConfig, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The model.* keys the factory receives: all but its name, its _target_ and `exclude`."""
    keys = OmegaConf.to_container(cfg.model, resolve=True)
    return {k: v for k, v in keys.items() if k not in NOT_PASSED and k not in exclude}


def build_model(cfg: DictConfig, regimen: Regimen, exclude: tuple[str, ...] = (), **inputs: Any) -> nn.Module:
    """Call the factory with regimen=, the task's `inputs` and the model keys (less `exclude`, which the
    task reads itself). A user's factory that fails, or returns something other than a module, is one
    line naming model._target_ (a built-in one failing is a bug, and keeps its traceback)."""
    factory = model_factory(cfg)
    keys = model_keys(cfg, exclude)
    if not is_custom(cfg):
        return factory(regimen=regimen, **inputs, **keys)
    target = cfg.model._target_
    try:
        model = factory(regimen=regimen, **inputs, **keys)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's code: one line that says whose call failed
        passed = ", ".join(["regimen", *inputs, *keys])
        raise ConfigError(f"model._target_={target} failed: {type(err).__name__}: {err} (regbench called it with "
                          f"{passed})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={target} returned a {type(model).__name__}, not a torch.nn.Module")
    # Lazy modules have no shape until a forward pass, but parameter counts, the optimizer's groups and
    # the channels-last layout all need it first: ask for the sizes regbench already passes.
    lazy = next((name for name, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)),
                None)
    if lazy is not None:
        raise ConfigError(f"model._target_={target} returned a model with an uninitialised (lazy) parameter {lazy}: "
                          f"build layers with explicit sizes from {', '.join(inputs)} instead of nn.Lazy* modules")
    return model
