"""Models are found through the config's `model._target_`: a callable (a function or a class) that takes
keyword arguments, `regimen=` (where to put BatchNorm and dropout: regbench.regimen), the task's shape
information (e.g. num_classes, in_channels) and every other model.* key, and returns an nn.Module.
The module that holds the callable may define `validate_config(cfg, regimen)`, which checks the model's
keys before anything trains. The built-in models (cnn13, bilstm, two_tower / mf, popularity) follow the
same contract as a user's own."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from torch import nn

from regbench.errors import ConfigError
from regbench.regimen import Regimen

NOT_PASSED = ("name", "_target_")  # model.* keys that name the model rather than configure it


def model_factory(cfg: DictConfig) -> Callable[..., nn.Module]:
    target = cfg.model.get("_target_")
    if not target:
        raise ConfigError("model._target_ is not set: name the callable that builds the model, e.g. "
                          "model._target_=my_pkg.my_module.build")
    try:
        return get_method(str(target))
    except Exception as err:  # noqa: BLE001 - Hydra wraps import errors of every kind
        raise ConfigError(f"model._target_={target}: cannot be imported ({str(err).splitlines()[0]})") from None


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
    task reads itself)."""
    return model_factory(cfg)(regimen=regimen, **inputs, **model_keys(cfg, exclude))
