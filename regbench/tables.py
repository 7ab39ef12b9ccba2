"""Presentation of a comparison: numbers formatted for a table, the compact and the wide table, LaTeX,
and the one-line list of files written. Everything here fits a terminal TERMINAL_WIDTH wide."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from regbench.findings import format_p
from regbench.record import STATUSES
from regbench.runs import canonical, is_missing

TERMINAL_WIDTH = 100  # what regbench prints fits a terminal this wide (wider tables wrap into blocks)


def fmt(value, digits: int = 4) -> str:
    """A number for a table: fixed point, or scientific when fixed point would be unreadable (a diverged
    loss of 2.9e26, a tiny p); "–" for a missing or non-finite value."""
    if is_missing(value):
        return "–"
    value = float(value)
    if value != 0 and (abs(value) >= 1e6 or (digits >= 3 and abs(value) < 10 ** -digits)):
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    if is_missing(value):
        return "–"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _p(p: float, test: str) -> str:
    if test == "no spread":
        return "– (no spread)"
    if not test or is_missing(p):
        return "–"
    return format_p(p)


def _delta(row: dict, base_key: str, base_value: str) -> str:
    if row[base_key] == base_value:
        return "(baseline)"
    if is_missing(row["delta"]):
        return "–"
    if is_missing(row["delta_ci_low"]):
        return f"{row['delta']:+.4f}"
    return f"{row['delta']:+.4f} [{row['delta_ci_low']:+.4f}, {row['delta_ci_high']:+.4f}]"


def _problems(summary: pd.DataFrame) -> list[str]:
    return [", ".join([f"{int(row[s])} {s}" for s in STATUSES[1:] if row[s]] +
                      ([f"{int(row['repeated_seeds'])} repeated seed"] if row["repeated_seeds"] else []))
            for _, row in summary.iterrows()]


def display_table(summary: pd.DataFrame, keys: Sequence[str], baseline: str | None = None,
                  wide: bool = False, bootstrap: int = 0) -> pd.DataFrame:
    """The human-readable table. The compact one (what the terminal and the report show, about 100
    characters): the keys, n, mean ± CI, the difference to the baseline with its CI, p; `wide` adds the
    metric, rank, std, min–max and the cost columns."""
    table = pd.DataFrame()
    for key in keys:
        table[key] = summary[key]
    if wide or summary["metric"].dropna().nunique() > 1:  # tasks of different metrics: each row names its own
        table["metric"] = summary["metric"].map(lambda m: m if isinstance(m, str) else "–")
    if wide:
        table["rank"] = summary["rank"]
    table["n"] = [f"{n}/{r}" for n, r in zip(summary["n"], summary["runs"])]
    table["mean ± 95% CI"] = [f"{fmt(m)} ± {fmt((h - lo) / 2)}" if not is_missing(lo) else fmt(m)
                              for m, lo, h in zip(summary["mean"], summary["ci_low"], summary["ci_high"])]
    if bootstrap:
        table[f"95% bootstrap CI ({bootstrap})"] = [f"[{fmt(lo)}, {fmt(h)}]" if not is_missing(lo) else "–"
                                                   for lo, h in zip(summary["boot_ci_low"], summary["boot_ci_high"])]
    if wide:
        table["std"] = summary["std"].map(fmt)
        table["min–max"] = [f"{fmt(a)}–{fmt(b)}" if not is_missing(a) else "–" for a, b in zip(summary["min"], summary["max"])]
    if summary["baseline"].astype(bool).any():
        base_key, _, base_value = baseline.partition("=")
        base_value = canonical(base_value)
        table[f"Δ vs {baseline} [95% CI]"] = [_delta(row, base_key, base_value) for row in summary.to_dict("records")]
        table["p"] = [_p(p, t) if not wide or not t or t == "no spread" else f"{_p(p, t)} ({t})"
                      for p, t in zip(summary["p_value"], summary["test"])]
        table["p (Holm)"] = [_p(p, t) if t != "no spread" else "–" for p, t in zip(summary["p_holm"], summary["test"])]
        if bootstrap:
            table["Δ bootstrap CI"] = [f"[{lo:+.4f}, {h:+.4f}]" if not is_missing(lo) else "–"
                                       for lo, h in zip(summary["delta_boot_low"], summary["delta_boot_high"])]
    if wide:
        table["params"] = summary["params"].map(_count)
        table["FLOPs/ex"] = summary["flops_per_example"].map(_count)
        table["train s"] = summary["train_time_s"].map(lambda v: fmt(v, 1))
        table["peak MiB"] = summary["peak_memory_mib"].map(lambda v: fmt(v, 0))
        table["gap"] = summary["gap"].map(fmt)
        if summary["contended"].any():
            table["contended"] = [f"{c}/{n}" if c else "" for c, n in zip(summary["contended"], summary["n"])]
    problems = _problems(summary)
    if any(problems):
        table["not averaged"] = [p or "" for p in problems]
    return table


def to_latex(table: pd.DataFrame) -> str:
    return table.to_latex(index=False, escape=True).replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def files_line(files: Sequence[Path], verb: str = "wrote") -> str:
    """"wrote 13 files in DIR: a.csv, b.md, ..." folded at TERMINAL_WIDTH (it was one 800-column line)."""
    import os
    import textwrap

    files = [Path(f) for f in files]
    if not files:
        return f"{verb} nothing"
    folder = Path(os.path.commonpath([str(f.parent) for f in files])) if len(files) > 1 else files[0].parent
    names = ", ".join(f.relative_to(folder).as_posix() for f in files)
    line = f"{verb} {plural(len(files), 'file')} in {folder}: {names}"
    return textwrap.fill(line, TERMINAL_WIDTH, subsequent_indent="  ", break_on_hyphens=False,
                         break_long_words=False)
