"""What subnormal floats cost a CPU run, and what trainer.flush_denormal (on by default) saves.

    REGBENCH_DATA=../shared/data python benchmarks/denormals.py --steps 1 --fractions 0 0.05 0.4

Weights that decay toward zero (a strong weight decay, units that gradients rarely reach) end up below
float32's smallest normal value, 1.2e-38, where x86 CPUs compute through a slow microcode path: in the
CPU study a CoNLL-2000 trial with weight decay 0.005 went from 28 s to 357 s an epoch once whole
embedding dimensions and 56% of its character filters were subnormal. This times (1) an elementwise
multiply of 4M normal and of 4M subnormal floats and (2) a validation pass of the CoNLL-2000 BiLSTM-CRF
(the task's defaults, real data) with a fraction of the units of every layer decayed to subnormal weights,
each with the mode off and on (torch.set_flush_denormal, as a run sets it). One thread: the mode is per
thread (regbench.runner.set_flush_denormal). Median of --steps after a warm-up."""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def median_seconds(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def subnormal_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Values in (1e-40, 1e-38), random signs: below float32's smallest normal (1.18e-38). Made with the
    mode off: with it on, they would be made as zeros."""
    torch.set_flush_denormal(False)
    magnitude = torch.empty_like(t).uniform_(1e-40, 1e-38, generator=generator)
    sign = torch.randint(0, 2, t.shape, generator=generator).to(t.dtype) * 2 - 1
    return magnitude * sign


def tagger_eval(fraction: float, seed: int = 0):
    """An evaluation of the CoNLL-2000 BiLSTM-CRF (the task's defaults) on its validation split, with
    `fraction` of the output units of every embedding, convolution and linear layer decayed to subnormal
    weights and bias: the pattern of the slowed trial (whole embedding dimensions and 56% of the character
    filters subnormal), whose outputs, subnormal in turn, feed every later matrix product."""
    from regbench import loop
    from regbench.preflight import compose_config

    cfg = compose_config(["task=conll2000", "trainer.device=cpu", f"seed={seed}"])
    task, _, model, _ = loop.build(cfg, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                units = torch.rand(module.weight.shape[1], generator=generator) < fraction
                module.weight[:, units] = subnormal_like(module.weight, generator)[:, units]
            elif isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear, torch.nn.LSTM)):
                # a layer's weights and biases share their first dimension (units; an LSTM's 4 gates x units)
                groups: dict[int, list[torch.Tensor]] = {}
                for name, p in module.named_parameters(recurse=False):
                    groups.setdefault(int(p.shape[0]), []).append(p)
                for size, tensors in groups.items():
                    units = torch.rand(size, generator=generator) < fraction
                    for p in tensors:
                        p[units] = subnormal_like(p, generator)[units]
    return lambda: loop.evaluate(task, model, "val")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.0, 0.05, 0.4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}")
    print("| what | flush off (s) | flush on (s) | off / on |")
    print("|---|---:|---:|---:|")
    normal, tiny, out = torch.full((4_000_000,), 1e-3), torch.full((4_000_000,), 1e-39), torch.empty(4_000_000)
    for name, operand in (("multiply 4M normal floats", normal), ("multiply 4M subnormal floats", tiny)):
        timed = []
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            # into one buffer (no allocation timed), 20 times the steps: each takes milliseconds
            timed.append(median_seconds(lambda: torch.mul(operand, 0.5, out=out), 20 * args.steps))
        print(f"| {name} | {timed[0]:.4f} | {timed[1]:.4f} | {timed[0] / timed[1]:.1f}x |")
    for fraction in args.fractions:
        timed = []
        evaluate = tagger_eval(fraction)
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            timed.append(median_seconds(evaluate, args.steps))
        print(f"| CoNLL-2000 tagger, validation pass, {fraction:.0%} of units subnormal | {timed[0]:.2f} | "
              f"{timed[1]:.2f} | {timed[0] / timed[1]:.1f}x |")
    torch.set_flush_denormal(False)


if __name__ == "__main__":
    main()
