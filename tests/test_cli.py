"""The `regbench` command end to end in a subprocess: a single run and a 2-job multirun."""
from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

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
    args = ["-m", "regularizer=none,bn_dropout", *tiny_overrides(tiny_data_dir, tmp_path / "cache"),
            "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}"]
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
    names = {"test_metric", "quality_vs_cost", "learning_curves", "gradient_flow_cifar10"}
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
