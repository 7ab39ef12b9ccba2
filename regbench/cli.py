"""The `regbench` command: a Hydra app (every config key is settable as key=value), plus two
subcommands that only read run records and take ordinary options (imports stay inside the functions
that need them, so `regbench compare` never loads torch and a run never loads the plotting code):

    regbench compare PATH... [--by KEY ...] [--metric M] [--baseline KEY=VALUE | --no-baseline] [--out DIR] [--plots]
    regbench report SWEEP_DIR... [--out FILE.html] [--by ...] [--metric ...] [--baseline ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from regbench.errors import RegbenchError

log = logging.getLogger("regbench")

# Shown with the traceback of an unexpected error hidden; REGBENCH_DEBUG=1 shows it.
DEBUG_ENV = "REGBENCH_DEBUG"


def _overrides() -> dict[str, str]:
    """The command-line overrides that made this job, e.g. {"regularizer": "bn", "seed": "1"}."""
    out = {}
    for item in HydraConfig.get().overrides.task:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


@hydra.main(version_base="1.3", config_path="pkg://regbench.conf", config_name="config")
def train(cfg: DictConfig) -> float | None:
    from regbench import runner
    from regbench.launchers import job_threads
    from regbench.record import METRICS_FILE

    from hydra.types import RunMode

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        launcher = HydraConfig.get().launcher if in_sweep else None
        threads = job_threads(cfg.trainer.threads, launcher, os.environ)
        record = runner.run(cfg, run_dir, _overrides(), threads, in_sweep)
    except runner.RunInterrupted as err:
        # Ctrl-C or SIGTERM ends the whole invocation; the record says `interrupted`. Under submitit,
        # SIGUSR2 (time limit, pre-emption) goes on to submitit, which requeues the job and exits.
        log.error("regbench: %s", err)
        if err.handoff is not None:
            err.handoff(err.signum, None)
        sys.exit(128 + int(err.signum))
    except Exception as err:  # noqa: BLE001 - the record (status failed, traceback) is already on disk
        # One line the user can act on; nothing already written is removed. In a sweep the other runs go on.
        where = "" if isinstance(err, RegbenchError) else f" (traceback in {run_dir / METRICS_FILE})"
        log.error("regbench: error: %s%s", err if isinstance(err, RegbenchError) else f"{type(err).__name__}: {err}",
                  where)
        if os.environ.get(DEBUG_ENV):
            raise
        if in_sweep:
            return None
        sys.exit(2 if isinstance(err, RegbenchError) else 1)
    metric = record["primary_metric"]
    value = record["test"].get(metric)
    log.info("%s: test %s %s (best epoch %s of %s); record in %s", record["status"], metric,
             f"{value:.4f}" if isinstance(value, float) else value, record["best_epoch"], record["epochs_run"],
             run_dir / METRICS_FILE)
    return tuning_score(record)


def tuning_score(record: dict) -> float | None:
    """What a tuner (`regbench tune`, a Hydra sweeper) maximises: the primary metric on the validation split at the
    best epoch, negated where lower is better. Never the test split. A diverged run scores NaN, which
    Optuna records as a failed trial."""
    if record.get("status") == "diverged":
        return float("nan")
    value = record.get("val", {}).get(record.get("primary_metric"))
    if value is None:
        return None
    return float(value) if record.get("higher_is_better", True) else -float(value)


SUBCOMMANDS = ("compare", "report", "ensemble", "export")


def _subcommand_parser() -> argparse.ArgumentParser:
    from regbench.compare import DEFAULT_BASELINE

    parser = argparse.ArgumentParser(prog="regbench", description="Compare and report regbench runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("compare", "aggregate runs over seeds, test against a baseline, write tables"),
                            ("report", "one self-contained HTML file: configuration, tables and every plot")):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("paths", nargs="+", metavar="PATH",
                         help="sweep directories, run directories or results.csv files, in any mix")
        sub.add_argument("--by", nargs="+", metavar="KEY",
                         help="group by these keys (default: every setting that differs between the runs of a "
                              "task: a config group by its name, e.g. regularizer, or a key, e.g. optimizer.lr)")
        sub.add_argument("--metric", help="the metric to compare, e.g. test.accuracy or val.f1 "
                                          "(default: each task's primary test metric)")
        sub.add_argument("--baseline", default=DEFAULT_BASELINE, metavar="KEY=VALUE",
                         help=f"the group every other group is tested against (default: {DEFAULT_BASELINE})")
        sub.add_argument("--no-baseline", dest="baseline", action="store_const", const=None,
                         help="no deltas or tests")
        sub.add_argument("--bootstrap", type=int, default=0, metavar="N",
                         help="also give percentile bootstrap intervals for the mean and the difference, from N "
                              "resamples (e.g. 10000); for 10+ seeds or skewed metrics, see docs/compare.md")
        if name == "compare":
            sub.add_argument("--out", type=Path, help="the folder summary.csv/.md/.tex (and plots/) go to "
                                                      "(default: the sweep directory when one sweep is given, "
                                                      "else ./compare-<time>)")
            sub.add_argument("--plots", action="store_true", help="also write every plot (PNG and SVG) to OUT/plots")
            sub.add_argument("--wide", action="store_true", help="print every column (std, min-max, rank, costs); "
                                                                 "summary.csv and summary.md always have them")
        else:
            sub.add_argument("--out", type=Path, help="the HTML file (default: SWEEP_DIR/report.html for one "
                                                      "directory, else ./report-<time>.html)")
    help_text = ("average each group's seeds' stored test predictions (probabilities, per-token tag probabilities "
                 "or MovieLens scores) and score the ensemble with the task's metrics")
    sub = commands.add_parser("ensemble", help=help_text, description=help_text)
    sub.add_argument("paths", nargs="+", metavar="PATH", help="sweep or run directories of one task")
    sub.add_argument("--by", nargs="+", metavar="KEY", help="group by these keys (default: as compare, every "
                                                             "setting but the seed that differs between the runs)")
    sub.add_argument("--out", type=Path, help="the folder ensemble.csv/.md go to (default: the sweep directory "
                                              "when one sweep is given, else ./ensemble-<time>)")
    help_text = "copy run records into an experiment tracker (MLflow), one tracker run per regbench run"
    sub = commands.add_parser("export", help=help_text, description=help_text)
    sub.add_argument("tracker", choices=["mlflow"], help="where to: mlflow")
    sub.add_argument("paths", nargs="+", metavar="PATH", help="sweep or run directories (any depth)")
    sub.add_argument("--tracking-uri", help="the MLflow tracking URI (default: sqlite:///<paths.output_dir>/mlflow.db, "
                                            "paths.output_dir being $REGBENCH_OUTPUT or ./outputs)")
    sub.add_argument("--experiment", default="regbench", help="the MLflow experiment (default: regbench)")
    sub.add_argument("--no-plots", dest="plots", action="store_false",
                     help="leave out the per-run plots (faster)")
    return parser


def is_sweep(path: Path) -> bool:
    """A multirun's directory (Hydra's multirun.yaml, or a sweep's results.csv): summaries belong there."""
    return path.is_dir() and ((path / "multirun.yaml").is_file() or (path / "results.csv").is_file())


def _default_out(paths: list[str], name: str) -> Path:
    """Into the sweep when exactly one sweep is compared; else a new folder (file) in the current one, so a
    run directory or a whole outputs/ folder never gets summary files of its own."""
    from datetime import datetime

    if len(paths) == 1 and is_sweep(Path(paths[0])):
        return Path(paths[0]) / name if name.endswith(".html") else Path(paths[0])
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path(f"report-{stamp}.html") if name.endswith(".html") else Path(f"{name or 'compare'}-{stamp}")


def run_subcommand(argv: list[str]) -> int:
    """`regbench compare|report ...`; returns the exit code (2 for anything the user can fix)."""
    import pandas as pd

    import textwrap

    from regbench.compare import compare
    from regbench.tables import TERMINAL_WIDTH, files_line

    args = _subcommand_parser().parse_args(argv)
    try:
        if args.command == "ensemble":
            return _ensemble(args)
        if args.command == "export":
            return _export(args)
        if args.command == "compare" and args.out is not None and args.out.exists() and not args.out.is_dir():
            raise RegbenchError(f"--out {args.out} is a file: give a folder for summary.csv, .md and .tex")
        if args.command == "report" and args.out is not None and args.out.is_dir():
            raise RegbenchError(f"--out {args.out} is a folder: give the HTML file to write, e.g. "
                                f"{args.out / 'report.html'}")
        comparison = compare(args.paths, by=args.by, metric=args.metric, baseline=args.baseline,
                             bootstrap=args.bootstrap)
        if args.command == "compare":
            out = args.out or _default_out(args.paths, "")
            files = comparison.write(out)
            notes = []
            if args.plots:
                from regbench.plots import write_plots

                plotted = write_plots(comparison, out / "plots")
                files += plotted.files
                notes += plotted.notes
            with pd.option_context("display.width", 250, "display.max_columns", None):
                print(comparison.text(wide=args.wide))
            for note in notes:
                print(textwrap.fill(f"note: {note}", TERMINAL_WIDTH, subsequent_indent="  "))
            print("\n" + files_line(files))
        else:
            from regbench.report import write_report

            out = args.out or _default_out(args.paths, "report.html")
            write_report(comparison, out)
            print(f"wrote {out}")
    except (RegbenchError, OSError) as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"regbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _export(args) -> int:
    from regbench.tracking.mlflow import default_tracking_uri, export

    uri = args.tracking_uri or default_tracking_uri(os.environ.get("REGBENCH_OUTPUT") or "outputs")
    done = export(args.paths, uri, args.experiment, plots=args.plots, progress=sys.stderr.isatty())
    print(f"MLflow: {done.created} runs added, {done.updated} updated in {uri} (experiment {args.experiment})")
    for skipped in done.skipped:
        print(f"regbench export: skipped {skipped}", file=sys.stderr)
    return 1 if done.skipped else 0


def _ensemble(args) -> int:
    from regbench.ensemble import ensemble

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise RegbenchError(f"--out {args.out} is a file: give a folder for ensemble.csv and .md")
    result = ensemble(args.paths, by=args.by)
    out = args.out or _default_out(args.paths, "ensemble")
    files = result.write(out)
    from regbench.tables import files_line

    print(result.text())
    print("\n" + files_line(files))
    return 0


def version_line() -> str:
    import hydra
    import torch

    from regbench import __version__

    return f"regbench {__version__} (torch {torch.__version__}, hydra {hydra.__version__})"


# Hydra's flags that print something instead of running: one configuration's worth each.
PRINTING_FLAGS = ("--cfg", "-c", "--info", "-i", "--resolve")


# OpenMP threads that wait for work sleep instead of spinning, so a run beside another busy process does not
# collapse: measured on a 2-core machine (CNN-13 w0.25, 2,000 images, 2 epochs, 2 threads), training took
# 8.1 s alone and 18.9 s beside a busy process when spinning (OpenMP's default), 8.7 s and 14.6 s sleeping,
# with bit-identical metrics (a thread count chosen from the load would change the last bits). Set before
# torch is imported; a value the user set wins.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def main() -> None:
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if sys.argv[1:2] == ["tune"]:
        sys.exit(_tune(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sys.exit(run_subcommand(sys.argv[1:]))
    if sys.argv[1:] == ["help"]:
        sys.argv[1:] = ["--help"]
    if sys.argv[1:2] in (["--version"], ["-V"]):
        print(version_line())
        sys.exit(0)
    if os.environ.get(DEBUG_ENV):
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from regbench.preflight import MULTIRUN_FLAGS, allow_new_keys, check_command_line, check_words

    try:  # what Hydra would answer with a usage page or a stack of lines
        check_words(sys.argv[1:], (*SUBCOMMANDS, "tune"))
    except RegbenchError as err:
        print(f"regbench: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = allow_new_keys(sys.argv[1:])
    if os.getcwd() not in sys.path:  # a model or task of the user's own, named by _target_, from this folder
        sys.path.append(os.getcwd())

    if any(a in MULTIRUN_FLAGS for a in sys.argv[1:]) and any(a in PRINTING_FLAGS for a in sys.argv[1:]):
        print("regbench: error: --cfg and --info show one configuration: drop -m and give one value per key "
              "(e.g. regularizer=bn, not regularizer=none,bn)", file=sys.stderr)
        sys.exit(2)
    try:  # every configuration of the command line, before anything starts
        check_command_line(sys.argv[1:])
        _prepare_rank(sys.argv)
    except RegbenchError as err:
        print(f"regbench: error: {err}", file=sys.stderr)
        sys.exit(2)
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        _help_in_100_columns()
    if any(a in PRINTING_FLAGS for a in sys.argv[1:]):
        _say_which_job_is_shown(sys.argv[1:])
    train()


def _say_which_job_is_shown(argv: list[str]) -> None:
    """`regbench experiment=study --cfg job` composes a grid's first job: say so, on stderr (stdout stays
    the YAML), with the grid's size and how to see another job."""
    import math
    import textwrap

    from regbench.preflight import FLAGS_WITH_VALUE, compose_config

    overrides, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = arg in FLAGS_WITH_VALUE and not skip
            continue
        overrides.append(arg)
    try:
        cfg = compose_config(overrides, with_hydra=True)
    except Exception:  # noqa: BLE001 - Hydra itself reports what does not compose
        return
    params = cfg.hydra.sweeper.get("params") or {}
    if str(cfg.hydra.mode) != "RunMode.MULTIRUN" or not params:
        return
    values = {key: str(value).split(",") for key, value in params.items()}
    jobs = math.prod(len(v) for v in values.values())
    first = " ".join(f"{key}={v[0]}" for key, v in values.items())
    note = (f"note: this is a grid of {jobs} jobs ({' x '.join(values)}); shown: job 1 of {jobs} ({first}); "
            "give one value of each to see another job")
    print(textwrap.fill(note, 100, subsequent_indent="  "), file=sys.stderr)


def _help_in_100_columns() -> None:
    """Hydra prints a config group's options on one line (task: 11 names, 112 columns): fold such lines
    at 100 columns, under the group's name."""
    import contextlib
    import io
    import re
    import textwrap

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            train()
        except SystemExit as done:
            code = done.code
        else:
            code = 0
    lines = []
    for line in out.getvalue().splitlines():
        group = re.match(r"^([\w/]+: )\S+, ", line)
        if group and len(line) > 100:
            line = textwrap.fill(line, 100, subsequent_indent=" " * len(group.group(1)), break_on_hyphens=False)
        lines.append(line)
    with contextlib.suppress(BrokenPipeError):  # `regbench --help | head`
        print("\n".join(lines))
        sys.stdout.flush()
    sys.exit(code)


TUNE_USAGE = """usage: regbench tune [OVERRIDE ...] [tune.KEY=VALUE ...]

Each regimen of tune.regimens gets its own nuisance hyper-parameters (learning rate, weight decay, and
its own keys where it reads them) tuned under the same budget, selected on validation; then each
regimen's best configuration is trained again on tune.final_seeds and only those runs are compared
(docs/tuning.md). OVERRIDEs are a run's (task=movielens, model.width=0.25, ...); the regimen and the
seed belong to the protocol. Run the same command again to continue a search.

example: regbench tune task=movielens 'tune.regimens=[none,bn]' tune.trials=16 tune.workers=2

tune's keys and their defaults (conf/tune/default.yaml):
"""


def _tune_help() -> str:
    from importlib.resources import files

    lines = files("regbench.conf").joinpath("tune", "default.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))  # below the header comment
    return TUNE_USAGE + "\n".join(lines[start:]) + "\n"


def _tune(argv: list[str]) -> int:
    """`regbench tune ...` (regbench.tune); bad input is one line and exit 2, as for a run."""
    if any(a in ("-h", "--help") for a in argv):
        import contextlib

        with contextlib.suppress(BrokenPipeError):  # `regbench tune --help | head`
            print(_tune_help(), end="")
            sys.stdout.flush()
        return 0
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    from regbench.tune import tune_main

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return tune_main(argv)
    except RegbenchError as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"regbench tune: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)


def _prepare_rank(argv: list[str]) -> None:
    """Under torchrun every process runs this command; rank 0 owns the run directory and its log, the
    other ranks get a throw-away Hydra directory and no log file."""
    import atexit
    import shutil
    import tempfile

    from regbench.distributed import from_environment
    from regbench.errors import ConfigError
    from regbench.preflight import MULTIRUN_FLAGS

    ranks = from_environment()
    if not ranks.active:
        return
    if any(arg in MULTIRUN_FLAGS for arg in argv[1:]):
        raise ConfigError("torchrun trains one run on several processes: drop -m (for a grid on a cluster use "
                          "hydra/launcher=slurm, with hydra.launcher.gpus_per_node for several GPUs per job)")
    if not ranks.is_main:
        scratch = tempfile.mkdtemp(prefix=f"regbench-rank{ranks.rank}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled"]


if __name__ == "__main__":
    main()
