"""The `regbench` command end to end in a subprocess: single runs, multiruns, compare and report, and
the command's own help, version and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_overrides

pytestmark = pytest.mark.integration  # every test here starts processes


def regbench(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_single_run_writes_its_record_under_outputs(tiny_data_dir, tmp_path, cli_env):
    result = regbench(tiny_overrides(tiny_data_dir, tmp_path / "cache", "regularizer=bn"), cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("_cifar10_bn_momentum_s0")
    for name in ("metrics.json", "history.csv", "checkpoints/best.pt", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (runs[0] / name).is_file(), name
    record = json.loads((runs[0] / "metrics.json").read_text())
    assert record["status"] == "completed" and record["overrides"]["regularizer"] == "bn"
    assert "completed: test accuracy" in result.stderr
    # one line when training starts (stderr is not a terminal here, so no progress bar), and the final
    # line's metric with 4 decimals
    assert "training cifar10 cnn13 with regularizer=bn on cpu for up to 1 epochs" in result.stderr
    value = result.stderr.split("completed: test accuracy ")[1].split(" ")[0]
    assert len(value.split(".")[1]) == 4


def test_two_job_multirun_writes_a_two_row_results_csv(tiny_data_dir, tmp_path, cli_env):
    args = ["-m", "regularizer=none,bn_dropout", *tiny_overrides(tiny_data_dir, tmp_path / "cache"),
            "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    result = regbench(args, cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    results = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(results) == 2
    assert sorted(results["regularizer"]) == ["bn_dropout", "none"]
    assert set(results["status"]) == {"completed"}
    for column in ("test.accuracy", "val.accuracy", "train.accuracy", "params", "flops_per_example", "seed",
                   "train_time_s", "run_dir", "overrides"):
        assert column in results.columns, column
    assert results["test.accuracy"].between(0, 1).all()
    assert all("regularizer=" in o for o in results["overrides"])
    # The table is printed when the sweep ends.
    assert "bn_dropout" in result.stdout and "results.csv" in result.stdout


def test_a_multirun_summarises_itself_and_compare_and_report_draw_it(tiny_data_dir, tmp_path, cli_env):
    sweep = tmp_path / "sweep"
    args = ["-m", "regularizer=none,bn_dropout", *tiny_overrides(tiny_data_dir, tmp_path / "cache",
                                                                 "trainer.max_epochs=2"), f"hydra.sweep.dir={sweep}"]
    result = regbench(args, cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    # Hydra's multirun-end callback wrote the grouped summary into the sweep directory.
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["regularizer"]) == ["bn_dropout", "none"] and set(summary["n"]) == {1}
    assert (sweep / "summary.md").stat().st_size > 0 and (sweep / "summary.tex").stat().st_size > 0

    out = tmp_path / "cmp"
    result = regbench(["compare", str(sweep), "--plots", "--out", str(out)], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bn_dropout" in result.stdout and "Δ vs regularizer=none" in result.stdout
    names = {"test_metric", "quality_vs_cost", "learning_curves", "gradient_flow_cifar10", "reliability_cifar10"}
    for name in names:
        for fmt in ("png", "svg"):
            assert (out / "plots" / f"{name}.{fmt}").stat().st_size > 5000, (name, fmt)
    assert (out / "plots" / "test_metric.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = regbench(["report", str(sweep)], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    check_report(sweep / "report.html", expected_images=len(names))


def check_report(path: Path, expected_images: int) -> None:
    """The report parses as HTML, and carries every plot inline (base64 PNG) and no external reference."""
    import base64
    from html.parser import HTMLParser

    class Collector(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.tags, self.external = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            attrs = dict(attrs)
            if tag == "img":
                self.images.append(attrs["src"])
            for key in ("href", "src"):
                if attrs.get(key, "").startswith(("http:", "https:", "file:")):
                    self.external.append(attrs[key])

    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    parser = Collector()
    parser.feed(text)
    parser.close()
    assert {"html", "head", "body", "table", "h1"} <= set(parser.tags) and not parser.external
    assert len(parser.images) == expected_images
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"


def test_help_names_the_subcommands_and_version_names_regbench(tmp_path, cli_env):
    for words in (["--help"], ["help"]):
        result = regbench(words, cli_env, tmp_path)
        assert result.returncode == 0 and "regbench compare PATH" in result.stdout and "regbench report" in result.stdout
        assert "regularizer: bn, bn_dropout" in result.stdout
        assert max(map(len, result.stdout.splitlines())) <= 100  # Hydra's task line was 112 columns
        assert "svhn" in result.stdout  # folded, not cut
    version = regbench(["--version"], cli_env, tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("regbench 0.") and "torch" in version.stdout


@pytest.mark.parametrize("args, message", [
    (["-m", "regularizer=none,bn", "--cfg", "job"], "--cfg and --info show one configuration: drop -m"),
    (["+trainer.max_epoch=3"], "there is no key 'trainer.max_epoch' in this configuration (did you mean "
                               "trainer.max_epochs?); regbench refuses keys that nothing would read"),
    (["task=movielens", "data.limit_train=100"], "data.limit_train=100: task=movielens has no key 'data.limit_train'"),
    (["task=conll2003", "+model.width=0.5"], "+model.width=0.5: model=bilstm has no key 'model.width'"),
    (["paths.data_dir=/nowhere", "data.download=false"], "CIFAR-10 not found in /nowhere"),
    (["trainer.device=cuda"], "trainer.device=cuda but this machine has no CUDA device"),
])
def test_what_cannot_run_is_one_line_exit_2_and_nothing_is_written(args, message, tmp_path, cli_env):
    result = regbench(args, cli_env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "+data.limit_train" not in result.stderr  # no advice to add a key that nothing would read
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_with_a_run_that_cannot_start_finishes_the_others_and_exits_1(tiny_data_dir, tmp_path, cli_env):
    """The other runs go on; the end of the sweep names the run that failed and why, and the exit status
    tells a script that the sweep went wrong. Run again once fixed: the finished run is reused."""
    (tmp_path / "net.py").write_text("from torch import nn\n\ndef build(*, regimen, num_classes, in_channels, "
                                     "image_size, width):\n    return nn.Sequential(nn.Flatten(), nn.Linear("
                                     "in_channels * image_size ** 2 // width, num_classes))\n")
    sweep = tmp_path / "sweep"
    args = ["-m", "model=custom", "model._target_=net.build",
            *tiny_overrides(tiny_data_dir, tmp_path / "cache", "model.width=1,0"), f"hydra.sweep.dir={sweep}"]
    result = regbench(args, cli_env, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == f"regbench: run {sweep / '1'} failed: model._target_=net.build failed: ZeroDivisionError: " \
        "integer division or modulo by zero (regbench called it with regimen, num_classes, in_channels, " \
        "image_size, width)"
    assert lines[-1].startswith("regbench: error: 1 of 2 runs failed (above)")
    assert "Traceback" not in result.stderr
    assert list(pd.read_csv(sweep / "results.csv")["status"]) == ["completed"]

    again = ["-m", "model=custom", "model._target_=net.build",
             *tiny_overrides(tiny_data_dir, tmp_path / "cache", "model.width=1"), f"hydra.sweep.dir={sweep}"]
    result = regbench(again, cli_env, tmp_path)
    assert result.returncode == 1 and "already completed" in result.stderr  # run 1 is still broken


def test_data_that_fails_while_loading_leaves_no_record(tmp_path, cli_env):
    """A damaged archive passes the start-up check (it is there) and fails while the run loads it: the run
    never started, so there is no record for compare to list, and the error is one line."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar10-jpeg.tar").write_bytes(b"not a tar at all")
    result = regbench([f"paths.data_dir={data}", f"paths.cache_dir={tmp_path / 'cache'}", "data.download=false",
                       f"hydra.run.dir={tmp_path / 'run'}"], cli_env, tmp_path)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("regbench: error:") and "is not a readable tar archive" in last
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "metrics.json").exists()


def test_compare_writes_summaries_into_a_sweep_or_out_only(tiny_data_dir, tmp_path, cli_env):
    sweep = tmp_path / "sweep"
    result = regbench(["-m", "regularizer=none,bn", *tiny_overrides(tiny_data_dir, tmp_path / "cache"),
                       f"hydra.sweep.dir={sweep}"], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cnn13" not in result.stdout.split("results:")[0] or "regularizer" in result.stdout  # swept keys shown
    run_dir = sweep / "0"
    work = tmp_path / "work"
    work.mkdir()
    assert regbench(["compare", str(run_dir)], cli_env, work).returncode == 0
    assert not list(run_dir.glob("summary.*")) and len(list(work.glob("compare-*/summary.csv"))) == 1
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    result = regbench(["compare", str(sweep), "--out", str(taken)], cli_env, tmp_path)
    assert result.returncode == 2 and "is a file: give a folder" in result.stderr and "Errno" not in result.stderr
    wide = regbench(["compare", str(sweep), "--wide"], cli_env, tmp_path)
    assert "min–max" in wide.stdout and "min–max" not in regbench(["compare", str(sweep)], cli_env, tmp_path).stdout


def test_the_table_at_the_end_of_a_sweep_tells_its_runs_apart(tiny_ml_dir, tmp_path, cli_env):
    result = regbench(["-m", "task=movielens", f"data.dir={tiny_ml_dir}", "model=two_tower,popularity",
                       "trainer.max_epochs=1", "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                      cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["task", "model"])  # not Hydra's log
    table = lines[start:start + 3]
    assert lines[start + 3] == "" and "train s" in table[0]
    assert {row.split()[1] for row in table[1:]} == {"two_tower", "popularity"}


def in_process(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`regbench ARGS` in this process, for what is refused before anything is composed (no 4 s start)."""
    from regbench import cli

    monkeypatch.setattr(sys, "argv", ["regbench", *args])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["comapre", "outputs/sweeps"], "comapre: no such command; did you mean `regbench compare`?"),
    (["regularizer", "bn"], "regularizer: a setting is written key=value, without spaces: regularizer=bn"),
    (["-m", "seed=0,1,"], "seed=0,1,: a list of values cannot end with a comma: seed=0,1"),
    (["-m", "hydra/launcher=paralel"], "hydra/launcher=paralel: no such option; choose one of basic, joblib, parallel"),
    (["--metric", "test.accuracy"], "--metric is an option of `regbench compare` and `regbench report`"),
    (["-m", "regularizer=none,bn", "regularizer=dropout"],
     "regularizer is given twice (regularizer=none,bn and regularizer=dropout)"),
    (["-m", "seed=0,1", "seed=2,3"], "seed is given twice (seed=0,1 and seed=2,3)"),
    (["-m", "task=cifar10,conll2003", "model.width=0.125"],
     "in the job with task=conll2003: model.width=0.125: model=bilstm has no key 'model.width', a key of model=cnn13"),
    (["task=movielens", "data.limit_train=100"], "(did you mean data.max_users?)"),
    (["task=conll2003", "model.width=0.5"], "(did you mean model.hidden?)"),
    (["model=resnet18", "model.width=0.5"], "model=resnet18 has no key 'model.width', a key of model=cnn13;"),
    (["model=custom", "model._target_=my_model.build"],
     "model._target_=my_model.build: no module 'my_model' on Python's path (searched the current folder"),
])
def test_what_hydra_would_answer_with_pages_is_one_line_that_says_what_was_meant(args, message, tmp_path,
                                                                                 monkeypatch, capsys):
    """Each of these ran the wrong grid, printed a usage page or a parse stack, or suggested a key of
    another model or task (model.init for model.width) until 2026-12-05."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_model", raising=False)  # imported by another test in this process
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p).name != "examples"])
    code, err = in_process(args, monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err and "model.init" not in err and "min_rating" not in err, err
    assert not (tmp_path / "outputs").exists()


def test_what_compare_and_ensemble_print_fits_100_columns(tmp_path, capsys):
    """The end-of-sweep status line was 194 columns, compare --plots' "wrote" line about 800, the ensemble
    table 115."""
    import pandas as pd

    from regbench.cli import run_subcommand
    from regbench.ensemble import Ensembles
    from test_compare import make_sweep

    values = {name: [0.5 + i / 100, 0.52 + i / 100, 0.55] for i, name in
              enumerate(["none", "bn", "dropout", "bn_dropout", "bn_dropout_gc", "label_smoothing", "mixup"])}
    sweep = make_sweep(tmp_path / "a-rather-long-sweep-directory-name" / "sweep", values)
    assert run_subcommand(["compare", str(sweep), "--plots", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "wrote " in printed and "summary.csv" in printed and "test_metric.png" in printed
    assert max(map(len, printed.splitlines())) <= 100, printed
    metrics = ["accuracy", "ece"]
    table = pd.DataFrame([{"regularizer": "bn_dropout_gc", "n_members": 3, **{f"{w}.{m}": 0.5 for m in metrics
                                                                             for w in ("ensemble", "member_mean",
                                                                                       "gain")}}])
    text = Ensembles(table=table, keys=["regularizer"], metrics=metrics).text()
    assert max(map(len, text.splitlines())) <= 100 and "accuracy ensemble" in text


def test_the_config_of_a_grid_says_which_job_it_shows(tmp_path, cli_env):
    result = regbench(["experiment=study", "--cfg", "job"], cli_env, tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("model:")
    assert "shown: job 1 of 45 (task=cifar10 regularizer=none seed=0)" in " ".join(result.stderr.split())
