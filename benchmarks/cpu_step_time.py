"""Time one CNN-13 training step (forward, backward, optimizer step) on this machine's CPU.

    python benchmarks/cpu_step_time.py --widths 1.0 0.25 --batch-size 128 --steps 5

Uses the real model builder, regularizer placement and optimizer factory; reports the median of
`--steps` timed steps after one warm-up step."""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from regbench.models import build_model
from regbench.optim import build_optimizer
from regbench.regimen import Regimen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--regularizer", default="bn_dropout")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| width | batch | regularizer | s/step (median) | images/s |")
    print("|---:|---:|---|---:|---:|")
    for width in args.widths:
        with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"model.width={width}", f"regularizer={args.regularizer}"])
        torch.manual_seed(0)
        regimen = Regimen.from_config(cfg)
        model = build_model(cfg, regimen, num_classes=10, in_channels=3).train()
        optimizer, _ = build_optimizer(cfg, model, regimen)
        x = torch.randn(args.batch_size, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch_size,))
        times = []
        for step in range(args.steps + 1):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        print(f"| {width} | {args.batch_size} | {args.regularizer} | {median:.3f} | {args.batch_size / median:.1f} |")


if __name__ == "__main__":
    main()
