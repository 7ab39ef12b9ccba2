"""`regbench report`: one self-contained HTML file (images embedded as base64 PNG, no external
references) with the configuration summary, the comparison tables and every plot, to attach to an
e-mail or a paper review."""
from __future__ import annotations

import base64
import html
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from regbench import __version__
from regbench.fileio import write_text_atomic
from regbench.plots import write_plots
from regbench.record import read_metrics

# Laid out for a laptop screen: the page never scrolls sideways; a table wider than the page (every column
# of the comparison, every run) scrolls inside its own box.
STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 1.5em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.45em; text-align: right; }
td { white-space: nowrap; } th { background: #f3f3f3; white-space: normal; }
td:first-child, th:first-child { text-align: left; }
.facts td { white-space: normal; text-align: left; overflow-wrap: anywhere; }
.scroll { max-width: 100%; overflow-x: auto; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.5em 0 1.2em; }
pre { background: #f7f7f7; padding: 0.75em; overflow-x: auto; font-size: 0.8em; max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
"""

CAPTIONS = {
    "test_metric": "Test metric per group: mean over completed seeds with its 95% confidence interval (Student t).",
    "quality_vs_cost": "Quality against cost: parameters, forward FLOPs per example, and training time.",
    "learning_curves": "Learning curves: train (solid) and validation (dashed), mean over seeds, band = min to max.",
    "gradient_flow": "Gradient flow: log10 of each layer's mean gradient norm (before clipping) per epoch.",
}


def _facts(runs: pd.DataFrame) -> list[tuple[str, str]]:
    def values(column: str) -> str:
        if column not in runs:
            return "–"
        return ", ".join(str(v) for v in dict.fromkeys(runs[column].dropna().astype(str))) or "–"

    seeds = pd.to_numeric(runs["seed"], errors="coerce").dropna() if "seed" in runs else pd.Series(dtype=float)
    started = runs["started_at"].dropna().astype(str) if "started_at" in runs else pd.Series(dtype=str)
    return [("inputs", values("source")), ("runs", str(len(runs))),
            ("status", ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())),
            ("tasks", values("task")), ("models", values("model")), ("regularizers", values("regularizer")),
            ("optimizers", values("optimizer")),
            ("seeds", " ".join(str(int(s)) for s in sorted(seeds.unique())) or "–"), ("devices", values("device")),
            ("precision", values("precision")), ("runs started", f"{started.min()} to {started.max()}"
                                                  if len(started) else "–"),
            ("regbench", values("versions.regbench")), ("torch", values("versions.torch")),
            ("git commits", values("git_commit")), ("hosts", values("host"))]


def _config_snippets(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The resolved configuration of the first run of each task: the record's `config` (what identifies
    the run, every interpolation resolved); for records written before it existed, Hydra's own
    .hydra/config.yaml as written."""
    out = []
    if "run_path" not in runs:
        return out
    for task, part in runs.groupby("task", sort=False) if "task" in runs else [("runs", runs)]:
        for path in part["run_path"].dropna():
            try:
                config = read_metrics(Path(path)).get("config")
            except (OSError, ValueError):
                config = None
            if config:
                out.append((f"{task}: {Path(path).name}", OmegaConf.to_yaml(OmegaConf.create(config))))
                break
            written = Path(path) / ".hydra" / "config.yaml"
            if written.is_file():
                out.append((f"{task}: {Path(path).name} (as written, unresolved)", written.read_text(encoding="utf-8")))
                break
    return out


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get("gradient_flow" if path.stem.startswith("gradient_flow_") else path.stem, "")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="note">{html.escape(caption)}</figcaption></figure>')


def render(comparison, plot_files: list[Path], notes: list[str] = ()) -> str:
    runs = comparison.runs
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
             f"content=\"width=device-width, initial-scale=1\"><title>regbench report</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>regbench report</h1>",
             f"<p class=\"note\">Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by regbench "
             f"{html.escape(__version__)} from the run records only.</p>",
             "<h2>Configuration</h2><table class=\"facts\">"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _facts(runs)]
    parts.append("</table>")
    for title, text in _config_snippets(runs):
        parts.append(f"<details><summary>Resolved config of {html.escape(title)}</summary>"
                     f"<pre>{html.escape(text)}</pre></details>")
    parts += ["<h2>Comparison</h2>", f"<p class=\"note\">{html.escape(comparison.status_line())}.</p>",
              f'<div class="scroll">{comparison.table.to_html(index=False, border=0, escape=True)}</div>',
              "<details><summary>Every column (std, min–max, rank, costs)</summary><div class=\"scroll\">",
              comparison.wide_table.to_html(index=False, border=0, escape=True), "</div></details>"]
    if any(comparison.findings.values()):  # no empty heading when there is nothing to claim
        parts += ["<h2>Findings</h2>"]
    for task, sentences in (comparison.findings.items() if any(comparison.findings.values()) else ()):
        if task and len(comparison.findings) > 1:
            parts.append(f"<h3>{html.escape(task)}</h3>")
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
    parts += ["<h2>Plots</h2>"] + [_image(p) for p in plot_files if p.suffix == ".png"]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    columns = [c for c in ("run_dir", "status", *comparison.keys, "seed", "best_epoch", "epochs_run", "train_time_s",
                           "error", "source") if c in runs and c != "task"]
    columns = (["task"] if "task" in runs else []) + list(dict.fromkeys(columns))
    if "error" in columns and not runs["error"].map(lambda e: isinstance(e, str) and bool(e)).any():
        columns.remove("error")  # a column of "None" says nothing
    metric_columns = sorted(c for c in runs.columns if c.startswith("test.") and "per_type" not in c)[:6]
    table = runs[columns + metric_columns].astype(object).where(runs[columns + metric_columns].notna(), "–")
    parts += ["<h2>Every run</h2><details><summary>One row per run record</summary><div class=\"scroll\">",
              table.to_html(index=False, border=0, na_rep="–"), "</div></details>",
              "</body></html>\n"]
    return "\n".join(parts)


def write_report(comparison, out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="regbench-report-") as tmp:
        plots = write_plots(comparison, Path(tmp))
        write_text_atomic(Path(out), render(comparison, plots.files, plots.notes))
    return Path(out)
