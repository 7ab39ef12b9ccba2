"""logger=tensorboard: one point per epoch in event files in the run directory, written by rank 0 while
the run trains, and an hparams summary (the identity config against the final test metrics) at the end.

`tensorboard --logdir <sweep dir>` shows a whole grid: every run directory is one run. A resumed run
opens its writer with purge_step at the first epoch it will train, so TensorBoard hides anything an
earlier attempt logged from there on: curves continue without duplicated or out-of-order steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from regbench.record import flatten
from regbench.tracking import scalars

# history.csv columns -> TensorBoard tags; train_*/val_* go under train/ and val/; per-layer gradient
# norms stay in history.csv (the gradient-flow plot)
RENAMED = {"lr": "lr", "grad_norm_mean": "gradients/norm_mean", "grad_norm_max": "gradients/norm_max",
           "grad_norm_min": "gradients/norm_min", "clip_rate": "gradients/clip_rate",
           "grad_exploding_rate": "gradients/exploding_rate", "grad_vanishing_layers": "gradients/vanishing_layers",
           "train_time_s": "time/train_s", "eval_time_s": "time/eval_s"}
FINAL = ("test", "val", "train")  # the record's final metrics, tagged <split>/final/<metric>


def epoch_tags(row: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tag and value of each number in one history row."""
    out = {}
    for key, value in scalars(row).items():
        if key in RENAMED:
            out[RENAMED[key]] = value
        elif key.startswith(("train_", "val_")):
            split, _, metric = key.partition("_")
            out[f"{split}/{metric}"] = value
    return out


class TensorBoardLogger:
    def __init__(self, run_dir: Path, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_epoch + 1, flush_secs=30)

    def log_epoch(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        for tag, value in epoch_tags(row).items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def finish(self, record: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = int(record.get("epochs_run") or 0)
        final = {f"{split}/final/{k}": v for split in FINAL
                 for k, v in scalars(flatten(record.get(split) or {})).items()}
        params = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                  for k, v in flatten(record.get("config") or {}).items() if v is not None}
        params["status"] = str(record.get("status"))
        experiment, start, end = hparams(params, final)
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.close()
