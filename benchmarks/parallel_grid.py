"""Grid speed-up of the parallel launcher on this machine: the same small grid run one run at a time
(Hydra's basic launcher, PyTorch's default threads) and N runs at once (`hydra/launcher=parallel`,
cores / N threads each), end to end through the `regbench` command.

    REGBENCH_DATA=../shared/data python benchmarks/parallel_grid.py --n-jobs 2

Each grid gets its own output folder and trainer.resume=false, so nothing is reused between them.
Reports wall-clock seconds per grid, the speed-up, and how far apart the two grids' test metrics are
(the launcher must not change results beyond the rounding that a different thread count brings)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRIDS = {
    "movielens": ["task=movielens", "model=two_tower", "regularizer=none,bn,dropout,bn_dropout", "seed=0",
                  "trainer.max_epochs=5"],
    "conll2000": ["task=conll2000", "regularizer=none,bn,dropout,bn_dropout", "seed=0", "trainer.max_epochs=1",
                  "data.limit_train=2000"],
}


def run_grid(args: list[str], out: Path, launcher: list[str]) -> tuple[float, dict[str, float]]:
    cmd = [sys.executable, "-m", "regbench", "-m", *args, *launcher, f"paths.output_dir={out}",
           "trainer.resume=false", "trainer.progress=false"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    metrics = {}
    for path in sorted(out.glob("sweeps/*/*/metrics.json")):
        record = json.loads(path.read_text())
        metrics[f"{record['regularizer']} s{record['seed']}"] = record["test"][record["primary_metric"]]
    return seconds, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--grid", choices=sorted(GRIDS), nargs="+", default=sorted(GRIDS))
    opts = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print("| grid | runs | one at a time (s) | parallel n_jobs=%d (s) | speed-up | max abs diff of test metrics |"
          % opts.n_jobs)
    print("|---|---|---|---|---|---|")
    for name in opts.grid:
        with tempfile.TemporaryDirectory() as tmp:
            serial, m1 = run_grid(GRIDS[name], Path(tmp) / "serial", [])
            parallel, m2 = run_grid(GRIDS[name], Path(tmp) / "parallel",
                                    ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={opts.n_jobs}"])
        assert m1.keys() == m2.keys(), (m1, m2)
        # Not exactly 0: fewer threads per run add floating-point sums in another order.
        diff = max(abs(m1[k] - m2[k]) for k in m1)
        print(f"| {name} | {len(m1)} | {serial:.1f} | {parallel:.1f} | {serial / parallel:.2f}x | {diff:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
