"""What a task gives the training loop and the runner, which never name a task: data on the device,
batches, the loss, the metrics, and the model built for its inputs from the config's `model._target_`."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from regbench.models import build_model
from regbench.regimen import Regimen

Batch = Any

# What tasks read from disk, kept for later runs of the same process when a tuning worker runs many trials
# (keep_data_in_process); a plain run is one per process and never keeps anything.
_KEPT: dict[tuple, Any] = {}
_KEEPING = False


def keep_data_in_process(on: bool = True) -> None:
    """Keep the data tasks read (their arrays, sentences, ratings) for this process's later runs of the same
    data settings: what lets a tuning worker load the data once for all its trials."""
    global _KEEPING
    _KEEPING = on
    if not on:
        _KEPT.clear()


def batch_rows(batch: Batch) -> int:
    """Examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return len(batch)
    values = batch.values() if isinstance(batch, dict) else batch
    return next(batch_rows(v) for v in values if isinstance(v, (Tensor, dict, tuple, list)))


class Task(ABC):
    name: ClassVar[str]
    primary_metric: ClassVar[str]          # a key of evaluate()'s result, e.g. "accuracy"
    higher_is_better: ClassVar[bool] = True  # the primary metric's direction
    # Whether each metric evaluate() returns is better higher (True) or lower (False), by its name before any
    # "@K" (ndcg@10: "ndcg"); the record keeps them (metric_directions) so compare never guesses from a name.
    # A task adds its own metrics to these; the primary metric's direction is higher_is_better.
    metric_directions: ClassVar[dict[str, bool]] = {"loss": False, "nll": False, "ece": False, "brier": False}
    # What model_inputs() gives a model's factory ("images", "token_sequences", "interactions"): every
    # built-in model whose module declares the same INPUTS fits (regbench.models.Capabilities).
    inputs: ClassVar[str | None] = None
    models: ClassVar[tuple[str, ...]] = ()  # more model options that fit, by name, beside those of `inputs`
    # Batch entries that live on the host by design (e.g. lengths for packing); the rest is on the device.
    host_keys: ClassVar[tuple[str, ...]] = ()
    # Every training batch has the same shapes: cuDNN may time its convolution algorithms once and keep
    # the fastest (torch.backends.cudnn.benchmark). With shapes that vary it would re-time every new shape.
    fixed_input_shapes: ClassVar[bool] = False
    # model.* keys the task reads itself (the tagger's vocabulary settings, a recommender's loss); every
    # other model.* key goes to the model's factory.
    task_model_keys: ClassVar[tuple[str, ...]] = ()
    # A model of the user's own (model=custom) fits: the task's model_inputs() are all a factory needs.
    accepts_custom_models: ClassVar[bool] = False
    # The regimen's task-level parts this task applies (of "label_smoothing", "mixup", "cutmix"); the
    # others are refused for it before anything starts. EMA, clipping, norms and weight decay fit any task.
    regularizers: ClassVar[frozenset[str]] = frozenset()
    # A key of other tasks that this task spells another way (MovieLens limits its size by data.max_users,
    # not data.limit_train): what "did you mean" suggests when a user gives the other task's key here.
    equivalent_keys: ClassVar[dict[str, str]] = {}
    # The data.* keys a task of the user's own reads (task=custom): any other data.* key is refused rather than
    # ignored. A task that takes data.* keys must declare them (the built-in tasks' keys are their YAML's).
    data_keys: ClassVar[tuple[str, ...] | None] = None
    # The folder under paths.data_dir that holds this task's files (data_dirs); None: the task's name
    # ("conll2003", "movielens", "mnist", ...), "": none
    data_subdir: ClassVar[str | None] = None

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device

    def higher_is_better_for(self, metric: str) -> bool:
        """The direction of one of evaluate()'s metrics: the primary metric's is higher_is_better; the others
        come from metric_directions (merged over the class and its bases); an undeclared one counts as
        higher-is-better."""
        if metric == self.primary_metric:
            return bool(self.higher_is_better)
        directions: dict[str, bool] = {}
        for cls in reversed(type(self).__mro__):
            directions.update(vars(cls).get("metric_directions", {}))
        return bool(directions.get(metric.split("@")[0], True))

    def read_once(self, what: str, load: Callable[[], Any]) -> Any:
        """load(), or what an earlier run of this process loaded with the same task and data settings while
        keep_data_in_process is on. Callers treat the result as read-only (they copy what they change)."""
        if not _KEEPING:
            return load()
        data = json.dumps(OmegaConf.to_container(self.cfg.data, resolve=True), sort_keys=True, default=str)
        key = (type(self).__module__, type(self).__qualname__, what, data, str(self.cfg.paths.get("data_dir")))
        if key not in _KEPT:
            _KEPT[key] = load()
        return _KEPT[key]

    @cached_property
    def regimen(self) -> Regimen:
        """The run's regimen, for the parts a task applies itself (label smoothing, mixup/CutMix)."""
        return Regimen.from_config(self.cfg)

    @classmethod
    @abstractmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Raise ConfigError for a bad task key (`data.*`)."""

    @classmethod
    def data_dirs(cls, cfg: DictConfig) -> list[Path]:
        """Where the task's files are looked for, and downloaded into (the first): data.dir when it is set, else
        paths.data_dir/<data_subdir> (the task's name unless set), then paths.data_dir."""
        if cfg.get("data") is not None and cfg.data.get("dir"):
            return [Path(cfg.data.dir).expanduser()]
        root = Path(cfg.paths.data_dir)
        subdir = getattr(cls, "name", "") if cls.data_subdir is None else cls.data_subdir
        return [root / subdir, root] if subdir else [root]

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        """Raise DataError when the data cannot be had: not on disk and no download allowed. Cheap (nothing
        is read or downloaded), so every run of a grid is checked before anything starts."""

    @abstractmethod
    def model_inputs(self) -> dict[str, Any]:
        """What the model factory needs to know about this task's data, as keyword arguments (e.g.
        num_classes and in_channels)."""

    def build_model(self, regimen: Regimen) -> nn.Module:
        """The model cfg.model._target_ builds for this task's inputs and outputs, regularized by `regimen`."""
        return build_model(self.cfg, regimen, exclude=self.task_model_keys, **self.model_inputs())

    @abstractmethod
    def num_train_batches(self) -> int: ...

    @abstractmethod
    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of training batches, already on the device, in an order drawn from `generator`."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """(mean loss to minimise, summed statistics to accumulate over the epoch as device tensors)."""

    @abstractmethod
    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn one epoch's accumulated statistics into {"loss": ..., primary_metric: ...}."""

    def loss_names(self) -> dict[str, str]:
        """What the training loss and the validation loss measure (history.csv's train_loss and val_loss):
        plots draw them on one axis only when they are the same quantity."""
        return {"train": "loss", "val": "loss"}

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Metrics on "val", "test" or "train" (a fixed, unaugmented subset of the training split).
        Called under torch.no_grad() and the run's autocast, with the model in eval mode."""

    def loss_weight(self, batch: Batch) -> Tensor | float:
        """What training_step's mean loss averages over in this batch: examples by default (tagging:
        tokens). Distributed training weights each rank's share of a batch by its share of this."""
        return batch_rows(batch)

    @abstractmethod
    def example_input(self) -> Tensor | tuple[Tensor, ...]:
        """The model's input for one example (batch of 1) on the device, for FLOP counting."""

    def write_outputs(self, run_dir: Path) -> None:
        """Write task-specific files (e.g. predictions) after the final test evaluation."""

    def test_outputs(self) -> dict[str, Any] | None:
        """The arrays of test_outputs.npz (record.TEST_OUTPUTS_FILE documents each kind) from the last
        evaluate(model, "test"), or None when the task keeps none; the runner writes them."""
        return None

    def data_summary(self) -> dict[str, Any]:
        """Sizes of the splits and where the data came from, for the run record."""
        return {}
