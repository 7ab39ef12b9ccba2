"""What only a GPU can show, for every task of the study, in about a minute: does a CUDA training step
make the host wait (torch.cuda.set_sync_debug_mode), how many kernels does a step launch, and the card's
dense bf16 matrix rate (the ceiling for achieved TFLOP/s).

    python benchmarks/gpu_checks.py OUT.json [--steps 20] [Hydra overrides added to every task]
    python benchmarks/gpu_checks.py OUT.json --smoke paths.data_dir=... (a CPU: checks the script itself)

Host waits: one epoch cut to N steps and one cut to 2N steps run under sync debug mode "warn"; every
warning is counted with where it came from, and what the longer epoch adds is what happens per step
(it must be nothing). The periodic non-finite check is switched off for this, as in
tests/test_host_sync.py, which checks the same calls on a CPU. Launches: the CUDA runtime's kernel
launches in a profiled epoch of N steps, divided by N. scripts/study.sh --checks runs this first.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.profiler import ProfilerActivity, profile

from regbench import loop

TASKS = {"cifar10": [], "conll2003": [], "movielens": []}
SMOKE = {"cifar10": ["model.width=0.0625", "data.val_size=20", "data.train_eval_size=20", "trainer.batch_size=8"],
         "conll2003": ["model.hidden=16", "model.word_dim=16", "model.char_hidden=8", "model.char_dim=8",
                       "trainer.batch_size=8"],
         "movielens": ["trainer.batch_size=64"]}


def matrix_rate(device: torch.device, size: int = 8192, repeats: int = 20) -> float | None:
    """Dense bf16 matrix-multiply TFLOP/s on random data (None on a CPU)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return round(2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12, 1)


def cut(task, steps: int) -> None:
    """Make the task's epochs `steps` batches long (the epoch's own order and augmentation unchanged)."""
    full = type(task).train_batches

    def train_batches(generator):
        return itertools.islice(full(task, generator), steps)
    task.train_batches = train_batches


def host_waits(cfg, device: torch.device, steps: int) -> dict:
    """Sync warnings in an epoch of `steps` and of 2 * `steps` steps, by where they came from."""
    counts = {}
    for n in (steps, 2 * steps):
        task, regimen, model, generator = loop.build(cfg, device)
        cut(task, n)
        training = loop.prepare(cfg, task, model, regimen, generator)
        loop.train_epoch(training, 1)  # warm-up: cuDNN benchmarking and allocator growth wait legitimately
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                loop.train_epoch(training, 2)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[n] = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                        if "synchroniz" in str(w.message).lower())
    per_step = counts[2 * steps] - counts[steps]
    return {"epoch_of_n_steps": sum(counts[steps].values()), "epoch_of_2n_steps": sum(counts[2 * steps].values()),
            "per_step": dict(per_step), "none_per_step": not per_step, "where": dict(counts[2 * steps])}


def launches(cfg, device: torch.device, steps: int) -> float:
    """Kernel launches (CUDA) or dispatched ops (CPU) per training step."""
    task, regimen, model, generator = loop.build(cfg, device)
    cut(task, steps)
    training = loop.prepare(cfg, task, model, regimen, generator)
    loop.train_epoch(training, 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        loop.train_epoch(training, 2)
    name = "cudaLaunchKernel" if device.type == "cuda" else "aten::"
    n = sum(1 for e in prof.events() if e.name.startswith(name))
    return round(n / steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny models on a CPU: checks the script, not a GPU")
    parser.add_argument("overrides", nargs="*")
    opts = parser.parse_intermixed_args()
    setattr(loop, "NONFINITE_CHECK_EVERY", 10**9)  # its one read every 25 steps is by design
    report: dict = {"torch": torch.__version__, "device": None, "matrix_rate_tflops": None, "tasks": {}}
    for task_name, extra in TASKS.items():
        overrides = [f"task={task_name}", "trainer.progress=false", *extra, *(SMOKE[task_name] if opts.smoke else []),
                     *(["trainer.device=cpu"] if opts.smoke else []), *opts.overrides]
        with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        device = loop.resolve_device(cfg.trainer.device)
        report["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        entry: dict = {}
        try:
            if device.type == "cuda":
                entry["host_waits"] = host_waits(cfg, device, opts.steps)
            entry["launches_per_step" if device.type == "cuda" else "ops_per_step"] = launches(cfg, device, opts.steps)
        except Exception as err:  # noqa: BLE001 - one task's failure must not lose the others' results
            entry["error"] = f"{type(err).__name__}: {err}"
        report["tasks"][task_name] = entry
        print(task_name, json.dumps(entry)[:400], flush=True)
    report["matrix_rate_tflops"] = matrix_rate(device)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "tasks"}))


if __name__ == "__main__":
    main()
