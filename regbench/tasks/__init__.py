"""Tasks are found through the config's `task._target_`: a Task subclass (regbench.tasks.base) that owns its
data, batches, loss and metrics. The built-in ones: cifar10.Cifar10Task, tagging.Conll2003Task /
Conll2000Task / ConllTask, recommendation.MovieLensTask."""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from regbench.errors import ConfigError
from regbench.targets import locate
from regbench.tasks.base import Task


def task_class(cfg: DictConfig) -> type[Task]:
    if OmegaConf.is_missing(cfg.task, "_target_"):
        raise ConfigError("task=custom needs task._target_=PACKAGE.MODULE.CLASS: your Task subclass "
                          "(docs/own-model.md)")
    target = cfg.task.get("_target_")
    if not target:
        raise ConfigError("task._target_ is not set: name a Task subclass, e.g. task._target_=my_pkg.MyTask")
    cls = locate("task._target_", str(target))
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task._target_={target} is not a subclass of regbench.tasks.base.Task")
    return cls


def build_task(cfg: DictConfig, device: torch.device) -> Task:
    """The task the config names, with its data loaded onto `device`."""
    return task_class(cfg)(cfg, device)
