"""One run on several processes: `torchrun --nproc_per_node=N -m regbench ...` trains a single run with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs).

How a step is shared: every rank draws the same global batch from the same seeded generator (so data
order, augmentation and negatives are exactly those of a one-process run) and trains on its contiguous
share of it. Each share's loss is weighted by its share of the batch's loss weight (examples, or tokens
for tagging), so DDP's gradient average equals the gradient of the whole batch's mean loss. BatchNorm
layers compute their statistics over the whole global batch (synchronised BatchNorm), so a run without
dropout follows the one-process run up to floating-point rounding. Dropout masks differ per rank.
Only rank 0 evaluates, writes files and the run record; the others receive its decisions.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def from_environment(environ: Mapping[str, str] | None = None) -> Ranks:
    environ = os.environ if environ is None else environ
    if int(environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    return Ranks(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", "0")))


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def backend() -> str:
    return str(dist.get_backend())


def stop(orderly: bool = True) -> None:
    """Leave the process group. After a normal end every rank first waits for the others: a rank that
    tears its gloo connections down while another is still reading the last collective's messages can make
    that one abort ("terminate called without an active exception"). After an error nothing waits and
    nothing is torn down, since the other ranks may never arrive; torchrun ends them."""
    if dist.is_initialized() and orderly:
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's `obj` on every rank (any picklable object)."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any: ranks must agree to leave a loop at the same step."""
    if not ranks.active:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(sums: dict[str, Tensor], ranks: Ranks) -> dict[str, Tensor]:
    """Per-epoch statistics (loss sums, counts) added up over the ranks, in one all-reduce."""
    if not ranks.active or not sums:
        return sums
    keys = sorted(sums)
    flat = torch.stack([sums[k].detach().double() for k in keys])
    dist.all_reduce(flat)
    return {k: flat[i] for i, k in enumerate(keys)}


def share(batch: Any, ranks: Ranks) -> Any:
    """This rank's contiguous share of every tensor in a batch (split along the first dimension)."""
    if isinstance(batch, Tensor):
        return torch.tensor_split(batch, ranks.world)[ranks.rank]
    if isinstance(batch, dict):
        return {k: share(v, ranks) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(share(v, ranks) for v in batch)
    return batch


# -- synchronised BatchNorm ------------------------------------------------------------------------
# Written by hand: torch.nn.SyncBatchNorm runs on GPUs only and replaces each layer with a new module,
# which would lose the tagger's masked BatchNorm (its forward takes a mask). This mixin keeps every
# layer's own class and forward and only makes the training-mode statistics global: per-channel sums,
# sums of squares and counts are added up over the ranks with a differentiable all-reduce, so the
# backward pass carries every rank's share of the gradient through the statistics too.
class _SyncStatistics(_BatchNorm):
    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        x = input.float()
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / channels], device=x.device, dtype=x.dtype)
        totals = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean * mean).clamp(min=0)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=momentum)
        return out.to(input.dtype)


_SYNC_CLASSES: dict[type, type] = {}


def sync_batchnorm(model: nn.Module) -> int:
    """Make every BatchNorm layer of `model` synchronise its statistics over the ranks (in place);
    returns how many layers it changed. Each layer keeps its own forward and its state dict."""
    changed = 0
    for module in model.modules():
        cls = type(module)
        if isinstance(module, _BatchNorm) and not isinstance(module, _SyncStatistics):
            if cls not in _SYNC_CLASSES:
                _SYNC_CLASSES[cls] = type(f"Sync{cls.__name__}", (cls, _SyncStatistics), {})
            module.__class__ = _SYNC_CLASSES[cls]
            changed += 1
    return changed


class TrainingStep(nn.Module):
    """The task's whole training step as one module, so DDP sees every parameter use inside forward
    (tasks call model methods other than forward, e.g. the tagger's CRF loss, the two towers)."""

    def __init__(self, task: Any, model: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return self.task.training_step(self.model, batch)


def wrap(task: Any, model: nn.Module, device: torch.device) -> nn.Module:
    step = TrainingStep(task, model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(step, device_ids=ids)
