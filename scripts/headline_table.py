"""README's headline table from the study's records: one row per task and protocol, one column per regimen,
each cell the primary test metric's mean ± 95% CI over seeds (n), the best of a row in bold, and a mark
where the difference from `none` holds after Holm's adjustment (p < 0.05, paired over seeds). Then the
findings in words. The numbers are `regbench compare`'s (the same statistics), laid out as a matrix.

    python scripts/headline_table.py --fixed PATH [PATH ...] --tuned PATH [PATH ...]

PATH: sweep or run folders, results.csv files (a tune's runs: <tune.dir>/final). Tasks are read from the
records; a protocol may hold several tasks."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from regbench.compare import compare

REGIMENS = ("none", "bn", "dropout", "bn_dropout", "bn_dropout_gc")
ALPHA = 0.05


def short(value: float) -> str:
    """.289 for a metric in [0, 1] (as README writes them); 3 decimals otherwise."""
    text = f"{value:.3f}"
    return text[1:] if text.startswith("0.") else text.replace("-0.", "-.")


def cell(row: pd.Series) -> str:
    half = (row["ci_high"] - row["ci_low"]) / 2 if pd.notna(row["ci_high"]) else float("nan")
    text = short(row["mean"]) + (f" ± {short(half)}" if pd.notna(half) else "")
    return text + f" ({int(row['n'])})"


def protocol_rows(summary: pd.DataFrame, protocol: str) -> tuple[list[list[str]], list[str]]:
    rows, findings = [], []
    for task, part in summary.groupby("task", sort=True):
        part = part.set_index("regularizer")
        higher = bool(part["higher_is_better"].iloc[0]) if part["higher_is_better"].notna().any() else True
        completed = part[part["n"] > 0]
        best = completed["mean"].idxmax() if higher else completed["mean"].idxmin()
        cells = []
        for regimen in REGIMENS:
            if regimen not in part.index or not part.loc[regimen, "n"]:
                cells.append("–")
                continue
            row = part.loc[regimen]
            text = cell(row)
            p = row.get("p_holm")
            if regimen != "none" and pd.notna(p) and p < ALPHA:
                better = (row["delta"] > 0) == higher
                text += " ↑" if better else " ↓"
                findings.append(f"{task}, {protocol}: {regimen} {'better' if better else 'worse'} than none by "
                                f"{row['delta']:+.3f} (Holm p = {p:.2g})")
            cells.append(f"**{text}**" if regimen == best else text)
        metric = str(part["metric"].dropna().iloc[0]) if part["metric"].notna().any() else ""
        rows.append([task, protocol, metric, *cells])
        if not any(f.startswith(f"{task}, {protocol}:") for f in findings):
            findings.append(f"{task}, {protocol}: no regimen differs from none after Holm's adjustment")
    return rows, findings


def headline(protocols: dict[str, list[str]]) -> str:
    rows, findings = [], []
    for protocol, paths in protocols.items():
        comparison = compare(paths, by=["task", "regularizer"])
        more_rows, more_findings = protocol_rows(comparison.summary, protocol)
        rows += more_rows
        findings += more_findings
    rows.sort(key=lambda r: (r[0], list(protocols).index(r[1])))
    lines = ["| task | protocol | metric | " + " | ".join(REGIMENS) + " |", "|---|---|---|" + "---:|" * len(REGIMENS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Mean ± 95% CI (n seeds); bold: the row's best; ↑/↓: differs from none after Holm's adjustment "
              f"(p < {ALPHA}, paired over seeds).", ""]
    lines += [f"- {f}" for f in findings]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed", nargs="+", default=[], metavar="PATH", help="the fixed protocol's runs")
    parser.add_argument("--tuned", nargs="+", default=[], metavar="PATH", help="the tuned protocol's final runs")
    args = parser.parse_args(argv)
    protocols = {name: paths for name, paths in (("fixed", args.fixed), ("tuned", args.tuned)) if paths}
    missing = [p for paths in protocols.values() for p in paths if not Path(p).exists()]
    if not protocols or missing:
        print(f"headline_table: {'no runs given: use --fixed and/or --tuned' if not protocols else missing[0] + ' does not exist'}",
              file=sys.stderr)
        return 2
    print(headline(protocols), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
