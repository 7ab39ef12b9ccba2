"""Is this checkout's training loop slower than an earlier revision's? Both, side by side in one process.

    REGBENCH_DATA=../shared/data python benchmarks/revision_ab.py --rev bc81252 --rounds 7

The `regbench` package of revision REV is exported from git (`git archive`) under another name
(`regbench_<rev>`, imports rewritten), so both versions load into one process. Each setup builds the
same task, model and loop with each version and trains one epoch of each in turn through
`train_epoch`, the order flipping every round, so the machine's drift (large on a shared 2-core
VM: about +-30 % between minutes) hits both alike. It prints the median epoch seconds of each and their
ratio (old / new: above 1 means this checkout is faster). The configs come from this checkout.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from importlib import import_module
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {
    "CoNLL-2003 BiLSTM-CRF + bn_dropout, 3,000 sentences":
        ["task=conll2003", "regularizer=bn_dropout", "data.limit_train=3000"],
    "CoNLL-2000 BiLSTM-CRF, no regularizer, 3,000 sentences":
        ["task=conll2000", "regularizer=none", "data.limit_train=3000"],
    "CoNLL-2003 BiLSTM-CRF, char LSTM, + bn_dropout, 3,000 sentences":
        ["task=conll2003", "regularizer=bn_dropout", "model.char=lstm", "data.limit_train=3000"],
    "MovieLens-100K two_tower + bn_dropout": ["task=movielens", "model=two_tower", "regularizer=bn_dropout"],
    "CIFAR-10 CNN-13 w0.25 + bn_dropout, 1,024 images":
        ["task=cifar10", "model.width=0.25", "regularizer=bn_dropout", "data.limit_train=1024"],
}


def export_revision(rev: str, into: Path) -> str:
    """Write revision `rev`'s regbench package into `into` as regbench_<rev>; return the package name."""
    name = "regbench_" + re.sub(r"\W", "_", rev)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "regbench"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "regbench").rename(into / name)
    for path in (into / name).rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bregbench\.(?!conf\b)", f"{name}.", text)  # the configs stay this checkout's
        text = re.sub(r"\bfrom regbench import\b", f"from {name} import", text)
        path.write_text(text)
    return name


class EpochTrainer:
    """One package's task, model and training loop, trained an epoch at a time. Revisions since the loop
    got its own module use it; earlier ones (before the restructuring of 2026-12-01) train through
    `Run.build_loop` and `Run.train_epoch`."""

    def __init__(self, package: str, cfg, device: torch.device, tmp: Path) -> None:
        try:
            loop = import_module(f"{package}.loop")
        except ModuleNotFoundError:
            loop = None
        if loop is not None and hasattr(loop, "build"):
            task, regimen, model, generator = loop.build(cfg, device)
            self.training = loop.prepare(cfg, task, model, regimen, generator)
            self.steps_per_epoch = self.training.steps_per_epoch
            self._epoch = lambda epoch: loop.train_epoch(self.training, epoch)
        else:
            runner = import_module(f"{package}.runner")
            generator = import_module(f"{package}.seeding").seed_everything(0)
            task = import_module(f"{package}.tasks").TASKS[cfg.task.name](cfg, device)
            torch.manual_seed(0)
            model = task.build_model()
            run = runner.Run(cfg, tmp)
            self.training = run.build_loop(task, model, device, generator, torch.autocast("cpu", enabled=False))
            self.steps_per_epoch = self.training.steps_per_epoch
            self._epoch = lambda epoch: run.train_epoch(self.training, epoch)

    def train_epoch(self, epoch: int):
        """The epoch's result (.seconds, .metrics, ...)."""
        return self._epoch(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with (e.g. a commit or main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setup", choices=range(len(SETUPS)), type=int, nargs="+", default=range(len(SETUPS)))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every setup (e.g. paths.data_dir=...)")
    opts = parser.parse_args()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        old = export_revision(opts.rev, Path(tmp))
        sys.path.insert(0, tmp)
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
              f"threads, torch {torch.__version__}, {opts.rounds} rounds after one warm-up round")
        print(f"| setup | {opts.rev} s/epoch (min-max) | this checkout s/epoch (min-max) | {opts.rev} / this |")
        print("|---|---:|---:|---:|")
        for name in [list(SETUPS)[i] for i in opts.setup]:
            with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
                cfg = compose("config", overrides=[*SETUPS[name], "trainer.progress=false", "trainer.device=cpu",
                                                     *opts.overrides])
            sides = {label: EpochTrainer(package, cfg, device, Path(tmp) / label)
                     for label, package in (("old", old), ("new", "regbench"))}
            seconds: dict[str, list[float]] = {"old": [], "new": []}
            for round_ in range(opts.rounds + 1):  # round 0 warms up both
                for label in (("old", "new") if round_ % 2 else ("new", "old")):
                    took = sides[label].train_epoch(round_ + 1).seconds
                    if round_:
                        seconds[label].append(took)
            med = {k: statistics.median(v) for k, v in seconds.items()}
            spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in seconds.items()}
            print(f"| {name} | {med['old']:.2f} ({spread['old']}) | {med['new']:.2f} ({spread['new']}) | "
                  f"{med['old'] / med['new']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
