"""What `regbench tune` adds to a trial beyond training it: a one-epoch MovieLens-100K run timed as a plain
run (runner.run) and as a trial (the study's ask, the same run, tell), alternating, in one process, each
at a learning rate of its own so nothing is reused.

    REGBENCH_DATA=../shared/data python benchmarks/tune_overhead.py [--repeats 5]

Prints each pair and the mean overhead in seconds and as a share of the plain run."""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from regbench import runner
from regbench.preflight import compose_config, merge_overrides
from regbench.tune import Plan, open_studies, run_trial, tune_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = os.environ.get("REGBENCH_DATA", "../shared/data")
    work = Path(tempfile.mkdtemp(prefix="regbench-tune-overhead-"))
    base = ["task=movielens", f"paths.data_dir={data}", f"paths.output_dir={work / 'outputs'}", "trainer.max_epochs=1",
            "trainer.device=cpu", "trainer.progress=false", "regularizer=none", "seed=100"]
    tune = tune_config([f"tune.dir={work / 'tune'}", "tune.regimens=[none]", "tune.space={}",
                        "+tune.space.optimizer.weight_decay={low:1e-6,high:1e-2,log:true}"])
    cfg = compose_config(base)
    from regbench.tune import ranges
    from regbench.validation import validate

    plan = Plan("none", base, cfg, ranges(tune, cfg, validate(cfg)))
    study = open_studies(tune, [plan], f"sqlite:///{work / 'optuna.db'}")["none"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plain_s, trial_s = [], []
    for i in range(args.repeats):
        t = time.perf_counter()
        runner.run(compose_config(merge_overrides(base, [f"optimizer.weight_decay={1e-7 * (i + 1)}"])),
                   work / "plain" / str(i))
        plain_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_trial(plan, study, study.ask(), work)
        trial_s.append(time.perf_counter() - t)
        print(f"pair {i}: plain {plain_s[-1]:.2f} s, trial {trial_s[-1]:.2f} s")
    overhead = statistics.mean(trial_s) - statistics.mean(plain_s)
    print(f"mean plain {statistics.mean(plain_s):.2f} s, mean trial {statistics.mean(trial_s):.2f} s, overhead "
          f"{overhead:+.2f} s = {100 * overhead / statistics.mean(plain_s):+.1f}% of a one-epoch run "
          f"(median of pairs {statistics.median(b - a for a, b in zip(plain_s, trial_s)):+.2f} s)")


if __name__ == "__main__":
    main()
