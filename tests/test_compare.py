"""`regbench compare`: aggregation, baseline tests, grouping and inputs, on run records written to disk
the way runs write them. Reference numbers are computed by hand (numpy and closed forms), not by the
code under test."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regbench.compare import CompareError, compare
from regbench.statistics import difference, mean_interval
from regbench.fileio import write_json_atomic
from regbench.results import update_sweep_results

T_975_DF2 = 4.302652729911275  # Student t quantiles from a printed table
T_975_DF4 = 2.7764451051977987


def write_run(run_dir: Path, regularizer: str, seed: int, accuracy: float | None, status: str = "completed",
              task: str = "cifar10", **overrides: str) -> None:
    overrides = {"regularizer": regularizer, "seed": str(seed), **overrides}
    write_json_atomic(run_dir / "metrics.json", {
        "status": status, "task": task, "model": "cnn13", "regularizer": regularizer, "optimizer": "momentum",
        "seed": seed, "primary_metric": "accuracy", "higher_is_better": True,
        "test": {} if accuracy is None else {"accuracy": accuracy, "loss": 1.0},
        "train": {} if accuracy is None else {"accuracy": accuracy + 0.1},
        "gap": None if accuracy is None else 0.1, "params": 1000, "flops_per_example": 5000,
        "train_time_s": 10.0 + seed, "peak_memory_bytes": 2 ** 20 * (100 + seed), "overrides": overrides})


def make_sweep(root: Path, values: dict[str, list[float]], first_seed: int = 0, **extra: str) -> Path:
    job = 0
    for regularizer, accuracies in values.items():
        for i, accuracy in enumerate(accuracies):
            write_run(root / str(job), regularizer, first_seed + i, accuracy, **extra)
            job += 1
    return root


NONE = [0.80, 0.82, 0.84]
BN = [0.85, 0.88, 0.86]


def test_mean_std_and_interval_match_a_hand_computation(tmp_path):
    summary = compare([make_sweep(tmp_path / "s", {"none": NONE, "bn": BN})]).summary.set_index("regularizer")
    for name, values in (("none", NONE), ("bn", BN)):
        x = np.array(values)
        half = T_975_DF2 * x.std(ddof=1) / math.sqrt(3)
        row = summary.loc[name]
        assert row["n"] == 3 and row["runs"] == 3 and row["seeds"] == "0 1 2"
        assert row["mean"] == pytest.approx(x.mean()) and row["std"] == pytest.approx(x.std(ddof=1))
        assert row["ci_low"] == pytest.approx(x.mean() - half) and row["ci_high"] == pytest.approx(x.mean() + half)
        assert (row["min"], row["max"]) == (pytest.approx(x.min()), pytest.approx(x.max()))
    assert summary.loc["bn", "rank"] == 1 and summary.loc["none", "rank"] == 2
    assert summary.loc["bn", "train_time_s"] == pytest.approx(11.0)      # mean of 10, 11, 12
    assert summary.loc["bn", "peak_memory_mib"] == pytest.approx(101.0)
    assert summary.loc["bn", "gap"] == pytest.approx(0.1)


def test_paired_difference_matches_the_closed_form(tmp_path):
    summary = compare([make_sweep(tmp_path / "s", {"none": NONE, "bn": BN})]).summary.set_index("regularizer")
    d = np.array(BN) - np.array(NONE)  # same seeds: paired by seed
    se = d.std(ddof=1) / math.sqrt(3)
    t = d.mean() / se
    p = 1 - abs(t) / math.sqrt(t * t + 2)  # two-sided p of Student t with 2 degrees of freedom
    row = summary.loc["bn"]
    assert row["test"] == "paired t" and row["baseline"] == "regularizer=none"
    assert row["delta"] == pytest.approx(d.mean())
    assert row["p_value"] == pytest.approx(p, rel=1e-6)
    assert row["delta_ci_low"] == pytest.approx(d.mean() - T_975_DF2 * se)
    assert row["delta_ci_high"] == pytest.approx(d.mean() + T_975_DF2 * se)
    assert math.isnan(summary.loc["none", "delta"])  # the baseline is not compared with itself


def _t_two_sided_p(t: float, df: int) -> float:
    """Integrate Student t's density numerically (independent of scipy)."""
    grid = np.linspace(abs(t), 400.0, 2_000_001)
    density = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * \
        (1 + grid ** 2 / df) ** (-(df + 1) / 2)
    return 2 * float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(grid)))


def test_welch_when_the_seeds_differ():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {5: 2.0, 6: 3.0, 7: 4.0}  # equal variances and sizes: Welch's df is exactly 2 (n - 1) = 4
    result = difference(a, b)
    se = math.sqrt(np.var(list(a.values()), ddof=1) / 3 + np.var(list(b.values()), ddof=1) / 3)
    t = (2.0 - 3.0) / se
    assert result.test == "Welch t" and result.delta == pytest.approx(-1.0)
    assert result.p_value == pytest.approx(_t_two_sided_p(t, 4), rel=1e-4)
    assert result.low == pytest.approx(-1.0 - T_975_DF4 * se) and result.high == pytest.approx(-1.0 + T_975_DF4 * se)


def test_too_few_runs_give_a_mean_but_no_interval_or_test():
    assert math.isnan(mean_interval([0.5]).low) and mean_interval([0.5]).mean == 0.5
    result = difference({0: 0.9}, {0: 0.8})
    assert result.delta == pytest.approx(0.1) and result.test == "" and math.isnan(result.p_value)


def test_diverged_and_failed_runs_are_counted_not_averaged(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"none": NONE, "bn": BN})
    write_run(sweep / "6", "bn", 3, 0.10, status="diverged")  # a metric exists, but it must not be averaged
    write_run(sweep / "7", "bn", 4, None, status="failed")
    write_run(sweep / "8", "none", 2, NONE[2])  # seed 2 of none run again: averaged once
    comparison = compare([sweep])
    row = comparison.summary.set_index("regularizer").loc["bn"]
    assert (row["runs"], row["n"], row["completed"], row["diverged"], row["failed"]) == (5, 3, 3, 1, 1)
    assert row["mean"] == pytest.approx(np.mean(BN))
    shown = comparison.table.set_index("regularizer")
    assert shown.loc["bn", "n"] == "3/5" and shown.loc["bn", "not averaged"] == "1 diverged, 1 failed"
    assert shown.loc["none", "n"] == "3/4" and shown.loc["none", "not averaged"] == "1 repeated seed"
    assert "1 diverged" in comparison.status_line() and "1 failed" in comparison.status_line()


def test_mixed_inputs_two_sweeps_and_a_csv_each_run_once(tmp_path):
    a = make_sweep(tmp_path / "a", {"none": NONE[:2]})
    b = make_sweep(tmp_path / "b", {"bn": BN[:2]})
    c = make_sweep(tmp_path / "c", {"none": NONE[2:], "bn": BN[2:]}, first_seed=2)
    update_sweep_results(c)
    comparison = compare([a, b, c / "results.csv", c])  # c twice: its CSV and its folder
    assert len(comparison.runs) == 6
    summary = comparison.summary.set_index("regularizer")
    assert summary.loc["none", "mean"] == pytest.approx(np.mean(NONE))
    assert summary.loc["bn", "test"] == "paired t"  # seeds 0, 1, 2 on both sides, gathered from three inputs
    one_run = compare([a / "0"])
    assert one_run.summary["n"].tolist() == [1]


def test_a_varying_override_makes_its_own_groups_and_by_overrides_it(tmp_path):
    make_sweep(tmp_path / "s", {"none": NONE}, **{"optimizer.lr": "0.1"})
    make_sweep(tmp_path / "s" / "more", {"none": BN}, **{"optimizer.lr": "0.01"})
    comparison = compare([tmp_path / "s"])
    assert comparison.keys == ["task", "optimizer.lr"]  # (records without `config`: names and overrides that vary)
    assert sorted(comparison.summary["optimizer.lr"]) == ["0.01", "0.1"]
    pooled = compare([tmp_path / "s"], by=["regularizer"])  # one regularizer: every run in one group
    assert pooled.summary["runs"].tolist() == [6]
    by_lr = compare([tmp_path / "s"], by=["optimizer.lr"], baseline="optimizer.lr=0.1")
    row = by_lr.summary.set_index("optimizer.lr").loc["0.01"]
    assert row["delta"] == pytest.approx(np.mean(BN) - np.mean(NONE)) and row["test"] == "paired t"


@pytest.mark.parametrize("kwargs, message", [
    ({"by": ["nonsense"]}, "--by nonsense: no such key in the run records; choose from task, model"),
    ({"metric": "bleu"}, "no column 'test.bleu'"),
    ({"baseline": "optimizer.lr=1"}, "not one of the grouping keys"),
    ({"baseline": "none"}, "write it as KEY=VALUE"),
])
def test_bad_options_name_the_problem(tmp_path, kwargs, message):
    with pytest.raises(CompareError, match=message):
        compare([make_sweep(tmp_path / "s", {"none": NONE})], **kwargs)


def test_an_input_without_records_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no run records found"):
        compare([tmp_path / "empty"])
    with pytest.raises(CompareError, match="no such sweep directory"):
        compare([tmp_path / "missing"])


def test_another_metric_and_the_written_files(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"none": NONE, "bn": BN})
    comparison = compare([sweep], metric="train.accuracy")
    assert comparison.summary.set_index("regularizer").loc["bn", "mean"] == pytest.approx(np.mean(BN) + 0.1)
    files = comparison.write(tmp_path / "out")
    assert [f.name for f in files] == ["summary.csv", "summary.md", "summary.tex"]
    tidy = pd.read_csv(files[0])
    assert len(tidy) == 2 and {"mean", "ci_low", "ci_high", "delta", "p_value", "params"} <= set(tidy.columns)
    assert "| bn " in files[1].read_text() and r"\begin{tabular}" in files[2].read_text()


@pytest.mark.integration
def test_cli_compare_exits_2_with_one_line_on_bad_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "regbench", "compare", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("regbench compare: error:") and "Traceback" not in result.stderr


# -- grouping by what ran (records that carry their resolved `config`) ------------------------------
def test_settings_that_differ_in_value_are_different_groups_even_under_one_name(small_run, tmp_path):
    """optimizer=adam and optimizer=adam_tagging are both Adam: they differ in lr, and that is the label."""
    small_run("movielens", "optimizer=adam", name="sweep/0")
    small_run("movielens", "optimizer=adam_tagging", name="sweep/1")
    comparison = compare([tmp_path / "sweep"])
    assert comparison.keys == ["task", "optimizer.lr"]
    assert sorted(comparison.summary["optimizer.lr"]) == ["0.001", "0.005"]
    assert comparison.summary["n"].tolist() == [1, 1] and comparison.summary["repeated_seeds"].sum() == 0


def test_the_same_setting_written_two_ways_is_one_group(small_run, tmp_path):
    small_run("movielens", "optimizer=adam", "optimizer.lr=0.001", "seed=0", name="sweep/0")
    small_run("movielens", "optimizer=adam", "seed=1", name="sweep/1")  # lr 0.001 is adam's default
    comparison = compare([tmp_path / "sweep"])
    assert comparison.keys == ["task"] and comparison.summary["n"].tolist() == [2]


def test_a_config_group_shows_as_its_name_and_other_keys_as_themselves(small_run, tmp_path):
    for i, extra in enumerate((["regularizer=none"], ["regularizer=dropout"],
                               ["regularizer=dropout", "regularizer.dropout.p=0.2"])):
        small_run("movielens", *extra, name=f"sweep/{i}")
    comparison = compare([tmp_path / "sweep"], baseline="regularizer=none")
    assert comparison.keys == ["task", "regularizer", "regularizer.dropout.p"]
    assert set(zip(comparison.summary["regularizer"], comparison.summary["regularizer.dropout.p"])) == {
        ("none", "0"), ("dropout", "0.5"), ("dropout", "0.2")}


def test_each_run_counts_once_whatever_reached_it_twice(small_run, tmp_path):
    """A re-run reuses a finished run (a copy with the same run id in the new sweep), and an interrupted
    attempt is completed by a later one: each is one run, its latest attempt."""
    first, _ = small_run("movielens", name="a/0")
    again, _ = small_run("movielens", name="b/0")
    assert again["reused_from"] is not None and again["run_id"] == first["run_id"]
    attempt = dict(first, status="interrupted", started_at="2000-01-01T00:00:00+00:00", test={})
    write_json_atomic(tmp_path / "c" / "0" / "metrics.json", attempt)
    comparison = compare([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    row = comparison.summary.iloc[0]
    assert (row["runs"], row["n"], row["completed"], row["interrupted"], row["repeated_seeds"]) == (1, 1, 1, 0, 0)
    assert comparison.runs.attrs["duplicates"] == 2 and "counted once" in comparison.status_line()


def test_cost_columns_average_exactly_the_runs_the_metric_averages(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"none": NONE})
    write_run(sweep / "9", "none", 0, NONE[0])  # seed 0 again: its metric counts once (the later record) ...
    write_json_atomic(sweep / "9" / "metrics.json", {**__import__("json").loads((sweep / "9" / "metrics.json")
                                                                                  .read_text()), "train_time_s": 1000.0})
    write_run(sweep / "10", "none", 7, float("nan"))  # ... and a completed run without a finite metric not at all
    row = compare([sweep]).summary.iloc[0]
    assert row["n"] == 3 and row["train_time_s"] == pytest.approx((1000.0 + 11.0 + 12.0) / 3)


def test_a_baseline_no_group_has_is_refused_with_the_groups_there_are(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"none": NONE, "bn": BN})
    with pytest.raises(CompareError, match=r"^--baseline regularizer=dropout: no group has regularizer=dropout; "
                                           r"the groups have regularizer = none, bn$"):
        compare([sweep], baseline="regularizer=dropout")


def test_numbers_stay_readable(tmp_path):
    from regbench.tables import fmt

    assert fmt(288563671923635528178597888.0) == "2.886e+26" and fmt(float("nan")) == "–" and fmt(0.1234567) == "0.1235"
    sweep = make_sweep(tmp_path / "s", {"none": [0.5, 0.6, 0.7], "bn": [0.6, 0.7, 0.8]})  # every seed +0.1
    comparison = compare([sweep])
    bn = comparison.table.set_index("regularizer").loc["bn"]
    assert bn["p"] == "– (no spread)" and "nan" not in comparison.text(wide=True)
    write_run(tmp_path / "one" / "0", "none", 0, 0.5)
    assert compare([tmp_path / "one"]).status_line().startswith("1 run in 1 group (1 completed)")
    diverged = make_sweep(tmp_path / "d", {"none": [0.5]})
    write_run(diverged / "1", "bn", 0, None, status="diverged")
    wide = compare([diverged]).wide_table.set_index("regularizer")
    assert wide.loc["bn", "min–max"] == "–" and wide.loc["bn", "mean ± 95% CI"] == "–"


def test_the_terminal_table_fits_100_columns_and_wide_has_every_column(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"none": NONE, "bn": BN, "bn_dropout_gc": NONE, "dropout": BN})
    comparison = compare([sweep])
    assert max(len(line) for line in comparison.text().splitlines()[:-1]) <= 100
    assert {"std", "min–max", "params", "train s", "rank"} <= set(comparison.wide_table.columns)
    assert {"std", "params"}.isdisjoint(comparison.table.columns)


def test_the_end_of_a_sweep_names_runs_that_failed_or_never_started(tmp_path):
    from regbench.callbacks import failed_runs

    write_run(tmp_path / "0", "none", 0, 0.8)
    write_run(tmp_path / "1", "bn", 0, None, status="failed")
    write_run(tmp_path / "2", "bn", 1, None, status="diverged")  # a result, not a failure
    (tmp_path / "10").mkdir()  # refused before it started: only its log
    (tmp_path / "10" / "regbench.log").write_text("[x][regbench.data][INFO] - decoding\n"
                                                  "[x][regbench][ERROR] - regbench: error: model._target_=m.b failed\n")
    (tmp_path / "11").mkdir()
    assert failed_runs(tmp_path) == [(tmp_path / "1", "see its record"), (tmp_path / "10", "model._target_=m.b failed"),
                                     (tmp_path / "11", "it wrote no record; see its regbench.log")]
