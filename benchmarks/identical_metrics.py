"""Does a change keep behaviour? The same configurations and seeds with revision REV's package and this
checkout's, in one process, on the real data: the metrics (train/val/test, best and run epochs, costs,
gradient summary, status, every history.csv column but the times) must be bit-identical.

    REGBENCH_DATA=../shared/data python benchmarks/identical_metrics.py --rev <git revision> [--only TEXT ...]

The configs come from this checkout (an earlier package ignores keys it does not know). Prints one line
per setup: IDENTICAL or DIFFERENT, with the test metric and validation loss of each side.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from importlib import import_module
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revision_ab import export_revision  # noqa: E402

SETUPS = {
    "cifar10 cnn13 w0.25 bn_dropout_gc + L1, momentum, 1,000 images, 2 epochs":
        ["model.width=0.25", "regularizer=bn_dropout_gc", "data.limit_train=1000", "data.limit_eval=500",
         "trainer.max_epochs=2", "augment=full", "penalty.l1=0.0001"],
    "cifar10 cnn13 w0.25 bn_dropout, adam, 2,500 images, 3 epochs":
        ["model.width=0.25", "regularizer=bn_dropout", "data.limit_train=2500", "data.limit_eval=1000",
         "trainer.max_epochs=3", "optimizer=adam"],
    "cifar10 cnn13 w0.25 mixup+cutmix, EMA, label smoothing, AGC, adam, 1,000 images, 2 epochs":
        ["model.width=0.25", "regularizer=mixup", "regularizer.ema.decay=0.99", "regularizer.label_smoothing=0.1",
         "regularizer.grad_clip.mode=agc", "regularizer.grad_clip.max=0.05", "data.limit_train=1000",
         "data.limit_eval=500", "trainer.max_epochs=2", "optimizer=adam"],
    "cifar10 cnn13 w0.25 mixup, value clipping, adam, 1,000 images, 2 epochs":
        ["model.width=0.25", "regularizer=bn_dropout", "regularizer.mixup.alpha=0.4", "regularizer.grad_clip.mode=value",
         "regularizer.grad_clip.max=0.01", "data.limit_train=1000", "data.limit_eval=500", "trainer.max_epochs=2",
         "optimizer=adam"],
    "movielens two_tower bn_dropout, 3 epochs": ["task=movielens", "regularizer=bn_dropout", "trainer.max_epochs=3"],
    "movielens mf bpr dropout, 3 epochs":
        ["task=movielens", "model=mf", "regularizer=dropout", "trainer.max_epochs=3", "optimizer=adam"],
    "movielens popularity": ["task=movielens", "model=popularity"],
    "conll2003 bilstm-crf bn_dropout, 1,000 sentences, 2 epochs":
        ["task=conll2003", "regularizer=bn_dropout", "data.limit_train=1000", "data.limit_eval=300",
         "trainer.max_epochs=2"],
    "conll2000 char-lstm bn_dropout_gc adamw, 600 sentences, 2 epochs":
        ["task=conll2000", "regularizer=bn_dropout_gc", "model.char=lstm", "data.limit_train=600",
         "data.limit_eval=200", "trainer.max_epochs=2", "optimizer=adamw"],
}
TIMES = {"train_time_s", "eval_time_s"}
COMPARED = ("train", "val", "test", "best_epoch", "epochs_run", "params", "flops_per_example", "gradients", "status")


def for_package(cfg: DictConfig, package: str) -> DictConfig:
    """The config with regbench's own `_target_`s (task, model) pointing into `package`, the exported copy:
    the old package accepts only Task subclasses of its own."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for section in ("task", "model"):
            target = cfg[section].get("_target_")
            if isinstance(target, str) and target.startswith("regbench."):
                cfg[section]._target_ = package + target[len("regbench"):]
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True)
    parser.add_argument("--only", nargs="+", default=[], metavar="TEXT",
                        help="run only the setups whose name contains one of these texts")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every setup")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    old = export_revision(opts.rev, tmp)
    sys.path.insert(0, str(tmp))
    data = os.environ.get("REGBENCH_DATA", "../shared/data")
    for name, overrides in SETUPS.items():
        if opts.only and not any(text in name for text in opts.only):
            continue
        with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, "trainer.progress=false", "trainer.device=cpu",
                                                 "trainer.resume=false", f"paths.output_dir={tmp}/out",
                                                 f"paths.data_dir={data}", *opts.overrides])
        out = {}
        for label, package in (("old", old), ("new", "regbench")):
            torch.set_flush_denormal(False)  # PyTorch's default: a package that never sets it inherits no other
            run_dir = tmp / name.replace(" ", "_") / label
            record = import_module(f"{package}.runner").run(for_package(cfg, package), run_dir)
            history = pd.read_csv(run_dir / "history.csv") if (run_dir / "history.csv").exists() else pd.DataFrame()
            out[label] = (record, history.drop(columns=[c for c in history.columns if c in TIMES]))
        (a, ha), (b, hb) = out["old"], out["new"]
        same, same_history = all(a[k] == b[k] for k in COMPARED), ha.equals(hb)
        m = a["primary_metric"]
        print(f"{'IDENTICAL' if same and same_history else 'DIFFERENT'} | {name} | test {m} {a['test'][m]!r} vs "
              f"{b['test'][m]!r} | val loss {a['val']['loss']!r} vs {b['val']['loss']!r} | history "
              f"{'same' if same_history else 'differs'}", flush=True)


if __name__ == "__main__":
    main()
