"""Training speed against the hardware: the card's measured matrix rate, then a real regbench run of
CNN-13 + BN + Dropout on CIFAR-10, reported as images/s, achieved TFLOP/s, utilisation of the measured
rate, seconds per epoch and time to a target test accuracy.

    REGBENCH_DATA=../shared/data python benchmarks/gpu_throughput.py --epochs 40 --target 0.94
    python benchmarks/gpu_throughput.py --smoke      # a few seconds on a CPU: checks the script runs

Achieved FLOP/s counts a training step as 3 x the forward FLOPs (forward, and a backward pass that
costs about twice the forward), with the forward FLOPs from the run record (one multiply-add = 2
FLOPs). Time to target: the training time (train_time_s per epoch in history.csv, evaluation left
out) summed up to the first epoch whose validation accuracy reaches the target; the test accuracy
of the run's best epoch is reported beside it."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_module

from regbench import loop, runner


def matrix_rate(device: torch.device, n: int, repeats: int) -> float:
    """Measured dense matrix-multiply rate in FLOP/s: bf16 on a GPU, fp32 on a CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def significant(x: float, digits: int = 3) -> float:
    """x to `digits` significant figures: a tiny CPU rate must not round to 0."""
    return float(f"{x:.{digits}g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--target", type=float, default=0.94)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="trainer.compile=true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("overrides", nargs="*", help="more regbench overrides")
    opts = parser.parse_args()
    device = loop.resolve_device("auto")
    n, repeats = (512, 3) if opts.smoke else (8192, 50)
    rate = matrix_rate(device, n, repeats)
    overrides = ["task=cifar10", "regularizer=bn_dropout", f"trainer.max_epochs={opts.epochs}",
                 f"trainer.batch_size={opts.batch_size}", "trainer.progress=false", "trainer.save_checkpoint=false",
                 f"trainer.compile={str(opts.compile).lower()}", *opts.overrides]
    if opts.smoke:
        overrides += ["model.width=0.0625", "data.limit_train=256", "data.limit_eval=256", "trainer.max_epochs=2",
                      "trainer.batch_size=64"]
    with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        record = runner.run(cfg, Path(tmp) / "run")
        history = pd.read_csv(Path(tmp) / "run" / "history.csv")
    n_train = record["data"]["n_train"]
    epoch_s = history["train_time_s"].median()
    achieved = 3 * record["flops_per_example"] * n_train / epoch_s
    reached = history.index[history["val_accuracy"] >= opts.target]
    to_target = float(history["train_time_s"][: reached[0] + 1].sum()) if len(reached) else None
    result = {
        "device": record["device"], "precision": record["precision"], "torch": torch.__version__,
        "matrix_rate_tflops": significant(rate / 1e12), "batch_size": opts.batch_size, "epochs": int(len(history)),
        "seconds_per_epoch_median": round(epoch_s, 3), "images_per_s": round(n_train / epoch_s, 1),
        "achieved_tflops": significant(achieved / 1e12), "utilisation_of_matrix_rate": significant(achieved / rate),
        "compile_time_s": record["compile_time_s"], "target_val_accuracy": opts.target,
        "train_seconds_to_target": None if to_target is None else round(to_target, 1),
        "epoch_reaching_target": None if not len(reached) else int(history["epoch"][reached[0]]),
        "best_val_accuracy": record["val"]["accuracy"], "test_accuracy": record["test"]["accuracy"],
        "overrides": overrides,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
