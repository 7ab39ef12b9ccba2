"""What a run trains, assembled before its record says `running`: the device, the task's data, the model
for the validated regimen, the regularizer.extra objects and the optimizer, each checked against the
contract (regbench.contract), with their facts in the record. A bad extra or a model that breaks the
contract is refused here, with no record: the run never started."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from regbench import complexity, contract, distributed, loop
from regbench.hooks import build_extras
from regbench.optim import build_optimizer
from regbench.record import RunRecord
from regbench.regimen import Regimen, regularizer_presets


@dataclass
class Built:
    """What a run trains (runner.Run) and what loop.prepare makes its Training from."""

    task: Any
    regimen: Regimen
    model: torch.nn.Module
    generator: torch.Generator
    device: torch.device
    extras: list[Any]  # the regularizer.extra objects (regbench.hooks)
    optimizer: tuple[Any, Any] | None  # optim.build_optimizer's pair; None for a model with nothing to train


def assemble(cfg: DictConfig, regimen: Regimen, record: RunRecord, ranks: distributed.Ranks,
             device: torch.device | None = None) -> Built:
    """Build everything on `device` (trainer.device's when None) and write the record's facts about it:
    device, precision, metric, losses, data, costs, the model's own regularization."""
    device = device or loop.resolve_device(cfg.trainer.device)
    record.device = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    record.precision = "bf16" if loop.uses_bf16(cfg.trainer.precision, device) else "fp32"
    complexity.reset_peak_memory(device)
    task, regimen, model, generator = loop.build(cfg, device, regimen)
    record.primary_metric, record.higher_is_better = task.primary_metric, task.higher_is_better
    record.losses, record.data = task.loss_names(), task.data_summary()
    if ranks.active:
        record.distributed["sync_batchnorm_layers"] = distributed.sync_batchnorm(model)
        torch.manual_seed(cfg.seed + ranks.rank)  # dropout masks differ per rank; DDP copies rank 0's weights
    for key, value in complexity.model_costs(model, task.example_input()).items():
        setattr(record, key, value)
    contract.check_model_output(task, model)
    record.model_own_regularization = contract.check_own_regularization(cfg, model, regimen, regularizer_presets())
    if contract.is_users_task(task):  # its evaluate() and test_outputs() before the first epoch, not after
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            contract.precheck_users_task(task, model, loop.evaluate)
    trains = any(p.requires_grad for p in model.parameters())  # the popularity baseline has nothing to train
    return Built(task, regimen, model, generator, device, build_extras(cfg),
                 build_optimizer(cfg, model, regimen) if trains else None)
