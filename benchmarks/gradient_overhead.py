"""What the gradient diagnostics cost: training-step time with no gradient measurement at all, with the
global norm only (`trainer.gradients.per_layer=false`), and with per-layer statistics (the default).

    REGBENCH_DATA=../shared/data python benchmarks/gradient_overhead.py --steps 30 --rounds 5

Uses the real tasks, models, optimizer and GradientMonitor on real data (CIFAR-10 at width 0.25, CoNLL-2003,
MovieLens-100K two-tower); the three modes are interleaved round by round so machine noise hits them alike,
and the median step time of each mode is reported. Step times on a busy 2-core machine vary by several
per cent, more than the diagnostics cost, so the cost of `GradientMonitor.observe()` alone is also timed
(median of 200 calls on the real gradients) and given as a share of the step."""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from hydra import compose, initialize_config_module

from regbench import loop
from regbench.gradients import GradientMonitor, Thresholds
from regbench.optim import build_optimizer

SETUPS = {
    "cifar10 cnn13 w0.25": ["task=cifar10", "model.width=0.25", "regularizer=bn_dropout", "data.limit_train=2048"],
    "conll2003 bilstm": ["task=conll2003", "regularizer=bn_dropout"],
    "movielens two_tower": ["task=movielens", "regularizer=bn_dropout"],
}
MODES = ("none", "global", "per_layer")


def time_steps(task, model, optimizer, batches, mode: str) -> float:
    monitor = None if mode == "none" else GradientMonitor(model, torch.device("cpu"), Thresholds(1e-5, 100.0),
                                                          per_layer=mode == "per_layer")
    if monitor:
        monitor.start_epoch(len(batches))
    t0 = time.perf_counter()
    for batch in batches:
        loss, _ = task.training_step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if monitor:
            monitor.observe()
        optimizer.step()  # gradients are kept (no zero_grad after) for observe_ms
    if monitor:
        monitor.epoch_summary()  # the once-per-epoch host read is part of the cost
    return (time.perf_counter() - t0) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    args = parser.parse_args()
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.steps} steps x {args.rounds} rounds per mode, median ms/step")
    print("| setup | layers | step, no measurement | step, global norm only | step, per-layer (default) "
          "| observe(), global | observe(), per-layer | per-layer share of a step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.setups:
        with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
            cfg = compose("config", overrides=[*SETUPS[name], "trainer.device=cpu", "trainer.progress=false"])
        task, regimen, model, generator = loop.build(cfg, torch.device("cpu"))
        model.train()
        optimizer, _ = build_optimizer(cfg, model, regimen)
        batches = []
        for batch in task.train_batches(generator):
            batches.append(batch)
            if len(batches) == args.steps:
                break
        time_steps(task, model, optimizer, batches[:3], "per_layer")  # warm-up
        times = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                times[mode].append(time_steps(task, model, optimizer, batches, mode))
        med = {mode: statistics.median(t) * 1000 for mode, t in times.items()}
        observe = {mode: observe_ms(model, mode == "per_layer") for mode in ("global", "per_layer")}
        layers = len(GradientMonitor(model, torch.device("cpu"), Thresholds(1e-5, 100.0)).layers)
        print(f"| {name} | {layers} | {med['none']:.1f} | {med['global']:.1f} | {med['per_layer']:.1f} | "
              f"{observe['global']:.3f} | {observe['per_layer']:.3f} | "
              f"{100 * observe['per_layer'] / med['none']:.2f}% |", flush=True)


def observe_ms(model, per_layer: bool, calls: int = 200) -> float:
    """Median milliseconds of one observe() on the gradients the last step left."""
    monitor = GradientMonitor(model, torch.device("cpu"), Thresholds(1e-5, 100.0), per_layer=per_layer)
    monitor.start_epoch(calls)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        monitor.observe()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


if __name__ == "__main__":
    main()
