"""scripts/headline_table.py on the study's committed records: its cells are compare's statistics laid out
as a matrix, and README's headline table says what the records say."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SCRIPT = ROOT / "scripts" / "headline_table.py"
CELL = re.compile(r"(-?\.\d{3}) ± (\.\d{3})")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def rows(text: str) -> dict[tuple[str, str], list[str]]:
    """(task, protocol) -> the five regimens' "mean ± half-width" cells of a headline table."""
    out = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) >= 8 and parts[1] in ("fixed", "tuned"):
            out[(parts[0], parts[1])] = [" ± ".join(CELL.search(p).groups()) if CELL.search(p) else p for p in parts[3:8]]
    return out


def test_the_matrix_is_compares_statistics_with_holm_marks_and_the_best_in_bold():
    result = run("--fixed", str(RESULTS / "study-cpu-movielens"), str(RESULTS / "issue29-cifar8-fixed"),
                 "--tuned", str(RESULTS / "issue29-movielens-tuned" / "final"))
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    # hand-checked against `regbench compare docs/results/study-cpu-movielens` (0.3022 ± 0.0095 is .302 ± .009:
    # its half-width is 0.009457) and docs/tuning.md's tables
    assert table[("movielens", "fixed")] == [".289 ± .008", ".240 ± .019", ".302 ± .009", ".307 ± .033", ".318 ± .004"]
    assert table[("movielens", "tuned")] == [".299 ± .003", ".299 ± .012", ".304 ± .008", ".312 ± .006", ".308 ± .009"]
    assert table[("cifar10", "fixed")] == [".100 ± .000", ".652 ± .013", ".100 ± .000", ".554 ± .058", ".526 ± .107"]
    lines = {tuple(p.strip() for p in line.strip("|").split("|")[:2]): line for line in result.stdout.splitlines()}
    assert "**.318 ± .004 (3) ↑**" in lines[("movielens", "fixed")]  # the best, and better than none after Holm
    assert ".240 ± .019 (3) ↓" in lines[("movielens", "fixed")]
    assert "↑" not in lines[("movielens", "tuned")] and "↓" not in lines[("movielens", "tuned")]
    assert "- movielens, tuned: no regimen differs from none after Holm's adjustment" in result.stdout
    assert "- movielens, fixed: bn worse than none by -0.049 (Holm p = 0.0088)" in result.stdout


# The study's committed records, each protocol's (a row of README's table is added here with its records).
STUDY = {"fixed": ["study-cpu-movielens", "study-cpu/conll2000-fixed", "study-cpu/cifar10-fixed",
                   "issue19-cifar30/bn_dropout"],
         "tuned": ["issue29-movielens-tuned/final", "study-cpu/conll2000-tuned/final",
                   "study-cpu/cifar10-tuned/final"]}


def test_readme_headline_table_says_what_the_records_say():
    result = run("--fixed", *(str(RESULTS / p) for p in STUDY["fixed"]),
                 "--tuned", *(str(RESULTS / p) for p in STUDY["tuned"]))
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert set(table) == {("movielens", "fixed"), ("movielens", "tuned"), ("conll2000", "fixed"), ("conll2000", "tuned"),
                          ("cifar10", "fixed"), ("cifar10", "tuned")}
    for page in ("README.md", "docs/index.md"):  # the guide's front page shows the same table
        text = (ROOT / page).read_text(encoding="utf-8")
        section = text[text.index("## The headline result"):text.index("## The user guide")]
        shown = rows(section)
        for task, protocol in table:
            assert shown[(task, protocol)] == table[(task, protocol)], (page, task, protocol)
            line = next(l for l in section.splitlines() if l.startswith(f"| {task} | {protocol} |"))
            assert line in result.stdout  # the row as the script prints it, marks and bold included


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    result = run("--fixed", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.strip() == f"headline_table: {tmp_path / 'nowhere'} does not exist"
    assert run().returncode == 2
