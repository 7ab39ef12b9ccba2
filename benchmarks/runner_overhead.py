"""What regbench's training loop costs over a minimal hand-written PyTorch loop, side by side in one process.

    REGBENCH_DATA=../shared/data python benchmarks/runner_overhead.py --rounds 5

Both loops train the same model (same initial weights, same optimizer) on the same batches, drawn by the
task's own on-device batching from generators with the same seed, at the same batch size:

- regbench: `loop.train_epoch`, the exact loop every run uses (gradient monitor with per-layer norms,
  clipping, LR schedule, on-device statistics, the non-finite check, the stop-signal check);
- minimal: `for batch in batches: loss = step(batch); zero_grad(); backward(); step()`.

Epochs of the two alternate, round by round (the order flips every round), so machine noise hits both
alike; the median training throughput of each is reported, and their ratio (goal: >= 0.95)."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from hydra import compose, initialize_config_module

from regbench import loop
from regbench.optim import build_optimizer
from regbench.tasks.base import batch_rows

SETUPS = {
    "CNN-13 w0.25 + bn_dropout, CIFAR-10 (2,048 images)":
        ["task=cifar10", "model.width=0.25", "regularizer=bn_dropout", "data.limit_train=2048"],
    "BiLSTM-CRF + bn_dropout, CoNLL-2003 (2,000 sentences)":
        ["task=conll2003", "regularizer=bn_dropout", "data.limit_train=2000"],
}


def minimal_epoch(task, model, optimizer, generator) -> tuple[float, int]:
    model.train()
    examples = 0
    t0 = time.perf_counter()
    for batch in task.train_batches(generator):
        loss, _ = task.training_step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        examples += batch_rows(batch)
    return time.perf_counter() - t0, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setup", choices=range(len(SETUPS)), type=int, nargs="+", default=range(len(SETUPS)))
    opts = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, {opts.rounds} rounds")
    print("| setup | batch | regbench examples/s (min-max) | minimal loop examples/s (min-max) | ratio of medians |")
    print("|---|---:|---:|---:|---:|")
    device = torch.device("cpu")
    for name in [list(SETUPS)[i] for i in opts.setup]:
        with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
            cfg = compose("config", overrides=[*SETUPS[name], "trainer.progress=false", "trainer.device=cpu"])
        task, regimen, ours, _ = loop.build(cfg, device)
        torch.manual_seed(0)
        theirs = task.build_model(regimen)
        theirs.load_state_dict(ours.state_dict())  # the same initial weights
        gen_ours, gen_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        training = loop.prepare(cfg, task, ours, regimen, gen_ours)
        optimizer, _ = build_optimizer(cfg, theirs, regimen)
        rates: dict[str, list[float]] = {"regbench": [], "minimal": []}
        for round_ in range(opts.rounds + 1):  # round 0 warms up both
            for which in (("regbench", "minimal") if round_ % 2 else ("minimal", "regbench")):
                if which == "regbench":
                    seconds = loop.train_epoch(training, round_ + 1).seconds
                else:
                    seconds, _ = minimal_epoch(task, theirs, optimizer, gen_theirs)
                if round_:  # both loops go through the same number of examples per epoch
                    rates[which].append(seconds)
        examples = sum(batch_rows(b) for b in task.train_batches(torch.Generator().manual_seed(0)))
        rates = {k: [examples / s for s in v] for k, v in rates.items()}
        ours_rate, theirs_rate = statistics.median(rates["regbench"]), statistics.median(rates["minimal"])
        spread = {k: f"{min(v):.0f}-{max(v):.0f}" for k, v in rates.items()}
        print(f"| {name} | {cfg.trainer.batch_size} | {ours_rate:.1f} ({spread['regbench']}) | {theirs_rate:.1f} "
              f"({spread['minimal']}) | {ours_rate / theirs_rate:.3f} |", flush=True)


if __name__ == "__main__":
    main()
