"""Statistics over many comparisons: the Holm adjustment against hand-computed values, percentile
bootstrap intervals, and the findings' rules on constructed records (never an effect at adjusted p > 0.05
or n < 2)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from regbench.compare import compare
from regbench.statistics import bootstrap_interval, holm
from test_compare import make_sweep


def test_the_statistics_are_pure_functions_that_need_no_pandas():
    code = "import sys, regbench.statistics; print(sorted(m for m in ('pandas', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_holm_matches_a_hand_computation():
    # sorted: 0.01 x 4 = 0.04; 0.02 x 3 = 0.06; 0.03 x 2 = 0.06; 0.5 x 1 = 0.5 (monotone: max with the previous)
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.4, 0.3]) == pytest.approx([0.6, 0.6])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])           # capped at 1
    adjusted = holm([0.01, math.nan, 0.02])                          # an untested comparison is not counted
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


@pytest.mark.parametrize("p_values,statsmodels_holm", [
    # statsmodels 0.15.0, statsmodels.stats.multitest.multipletests(p, alpha=0.05, method="holm")[1], 2026-12-06
    ([0.01, 0.04, 0.03, 0.005, 0.2], [0.04, 0.09, 0.09, 0.025, 0.2]),
    ([0.0001, 0.5, 0.049, 0.05, 0.0125, 0.9], [0.0006000000000000001, 1.0, 0.196, 0.196, 0.0625, 1.0]),
    ([0.03, 0.03, 0.03], [0.09, 0.09, 0.09]),
])
def test_holm_matches_statsmodels(p_values, statsmodels_holm):
    assert holm(p_values) == pytest.approx(statsmodels_holm, rel=1e-12)


def test_compare_adjusts_over_each_tasks_comparisons_against_the_baseline(tmp_path):
    values = {"none": [0.80, 0.82, 0.84], "bn": [0.85, 0.88, 0.86], "dropout": [0.81, 0.84, 0.84],
              "bn_dropout": [0.90, 0.93, 0.95]}
    summary = compare([make_sweep(tmp_path / "s", values)]).summary.set_index("regularizer")
    raw = {name: stats.ttest_rel(values[name], values["none"]).pvalue for name in ("bn", "dropout", "bn_dropout")}
    expected = dict(zip(raw, holm(list(raw.values()))))
    for name, p in expected.items():
        assert summary.loc[name, "p_value"] == pytest.approx(raw[name])
        assert summary.loc[name, "p_holm"] == pytest.approx(p)
    assert math.isnan(summary.loc["none", "p_holm"])


def test_a_group_at_chance_on_every_seed_is_tested_without_a_warning_and_as_welch_with_variance_zero():
    """Fixed `none` at 0.1 on seeds 0-2 against tuned `none` on seeds 0-1 (seed 2 diverged): scipy warned of
    "catastrophic cancellation" on the user's terminal at the end of `regbench tune`. Welch's test with
    one variance 0 is the one-sample t-test of the other group against that value."""
    import warnings

    from regbench.statistics import difference

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = difference({0: 0.416, 1: 0.3985}, {0: 0.1, 1: 0.1, 2: 0.1})
    expected = stats.ttest_1samp([0.416, 0.3985], 0.1)
    assert result.test == "Welch t" and result.delta == pytest.approx(0.30725)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-6)
    interval = expected.confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((interval.low - 0.1, interval.high - 0.1), rel=1e-6)


def test_bootstrap_intervals_are_percentiles_of_resampled_means():
    x = [0.80, 0.82, 0.84, 0.90, 0.70, 0.85, 0.81, 0.79, 0.88, 0.83]
    low, high = bootstrap_interval([x], 20000)
    rng = np.random.default_rng(1)
    means = rng.choice(x, size=(20000, len(x))).mean(1)
    assert low == pytest.approx(np.percentile(means, 2.5), abs=0.003)
    assert high == pytest.approx(np.percentile(means, 97.5), abs=0.003)
    paired = bootstrap_interval([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]], 5000, paired=True)
    assert paired[0] >= 1.0 - 1e-12 and paired[1] <= 2.0 + 1e-12           # within the per-seed differences' range
    assert all(math.isnan(v) for v in bootstrap_interval([[0.5]], 1000))   # one value: no interval


def test_findings_state_effects_only_at_adjusted_p_below_005_with_two_runs(tmp_path):
    values = {"none": [0.80, 0.82, 0.84], "bn_dropout": [0.90, 0.93, 0.95],  # a clear effect
              "bn": [0.79, 0.84, 0.83],                                        # noise
              "dropout": [0.70, 0.71, 0.735]}                                  # clearly worse
    comparison = compare([make_sweep(tmp_path / "s", values)])
    sentences = comparison.findings["cifar10"]
    summary = comparison.summary.set_index("regularizer")
    assert summary.loc["bn_dropout", "p_holm"] <= 0.05 and summary.loc["bn", "p_holm"] > 0.05
    by_name = {s.split(":")[0]: s for s in sentences}
    delta = (np.mean(values["bn_dropout"]) - np.mean(values["none"])) * 100
    assert by_name["bn_dropout"].startswith(f"bn_dropout: +{delta:.1f} accuracy points over none, better (95% CI")
    assert f"Holm-adjusted p = {summary.loc['bn_dropout', 'p_holm']:.3f}, n = 3 paired seeds" in by_name["bn_dropout"]
    assert by_name["bn"].startswith("bn: no evidence of a difference from none (")
    assert "under none, worse" in by_name["dropout"]
    assert sentences[0].startswith("highest mean accuracy: bn_dropout")
    text = comparison.text()
    assert "Findings:" in text and "p (Holm)" in text


def test_findings_never_claim_an_effect_from_one_run_and_say_when_nothing_varies(tmp_path):
    values = {"none": [0.80], "bn": [0.95]}  # a big difference, but one run each
    sentences = compare([make_sweep(tmp_path / "one", values)]).findings["cifar10"]
    assert any(s.startswith("bn: too few runs to test against none (n = 1 and 1") for s in sentences)
    assert not any("better" in s or "worse" in s for s in sentences)
    same = compare([make_sweep(tmp_path / "same", {"none": [0.8, 0.9], "bn": [0.8, 0.9]})]).findings["cifar10"]
    assert any(s.startswith("bn: the same result as none on every seed") for s in same)
    shifted = compare([make_sweep(tmp_path / "shifted", {"none": [0.8, 0.9], "bn": [0.803, 0.903]})]).findings["cifar10"]
    assert any(s.startswith("bn: +0.3 accuracy points over none on every seed, the same difference each time "
                            "(n = 2 paired seeds): no spread, so no test") for s in shifted)


def test_lower_is_better_metrics_say_better_when_lower(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"none": [0.80, 0.82, 0.84], "bn": [0.90, 0.93, 0.95]})
    comparison = compare([sweep], metric="test.loss")  # every loss is 1.0 in these records: no spread
    assert any("no spread, so no test" in s for s in comparison.findings["cifar10"])


@pytest.mark.integration
def test_compare_command_writes_findings_p_holm_and_bootstrap(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"none": [0.80, 0.82, 0.84, 0.81], "bn": [0.85, 0.88, 0.86, 0.90]})
    (sweep / "results.csv").write_text("status\n")
    result = subprocess.run([sys.executable, "-m", "regbench", "compare", str(sweep), "--bootstrap", "2000"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "95% bootstrap CI (2000)" in result.stdout and "Findings:" in result.stdout
    summary = pd.read_csv(sweep / "summary.csv")
    assert {"p_holm", "boot_ci_low", "boot_ci_high", "delta_boot_low", "delta_boot_high"} <= set(summary.columns)
    markdown = (sweep / "summary.md").read_text()
    assert "## Findings" in markdown and "p (Holm)" in markdown
    bad = subprocess.run([sys.executable, "-m", "regbench", "compare", str(sweep), "--bootstrap", "-5"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_difference_significant_only_before_the_adjustment_is_not_an_effect(tmp_path):
    # three comparisons; "ema" alone has p < 0.05 but not after multiplying by 3
    values = {"dropout": [0.2950, 0.2870, 0.2970], "ema": [0.301, 0.2935, 0.300],
              "bn": [0.31, 0.28, 0.309], "ln": [0.2999, 0.2950, 0.3018]}
    comparison = compare([make_sweep(tmp_path / "s", values)], baseline="regularizer=dropout")
    row = comparison.summary.set_index("regularizer").loc["ema"]
    assert row["p_value"] <= 0.05 < row["p_holm"]
    sentence = next(s for s in comparison.findings["cifar10"] if s.startswith("ema:"))
    assert sentence.startswith("ema: no evidence of a difference from dropout at the 5% level: +")
    assert f"p = {row['p_value']:.3f}), but Holm-adjusted over 3 comparisons p = {row['p_holm']:.3f}" in sentence
    assert "better" not in sentence and "worse" not in sentence


def test_calibration_errors_are_lower_is_better_whatever_the_primary_metric(tmp_path):
    import json

    sweep = make_sweep(tmp_path / "s", {"none": [0.80, 0.82, 0.84], "bn": [0.85, 0.88, 0.86]})
    for i, ece in enumerate([0.10, 0.11, 0.12, 0.02, 0.03, 0.025]):  # bn: far better calibrated
        record = json.loads((sweep / str(i) / "metrics.json").read_text())
        record["test"]["ece"] = ece
        (sweep / str(i) / "metrics.json").write_text(json.dumps(record))
    comparison = compare([sweep], metric="test.ece")
    summary = comparison.summary.set_index("regularizer")
    assert not summary.loc["bn", "higher_is_better"] and summary.loc["bn", "rank"] == 1
    sentences = comparison.findings["cifar10"]
    assert sentences[0].startswith("lowest mean ECE: bn (0.0250")
    assert any(s.startswith("bn: -0.0850 ECE under none, better") for s in sentences), sentences
    assert compare([sweep]).summary.set_index("regularizer").loc["bn", "higher_is_better"]  # accuracy: higher


def _with_classes(sweep, classes: int = 10):
    import json

    for record in sweep.rglob("metrics.json"):
        data = json.loads(record.read_text())
        data["data"] = {"classes": classes}
        record.write_text(json.dumps(data))
    return sweep


def test_a_group_this_protocol_did_not_train_is_named_not_ranked_below(tmp_path):
    """`none` and `dropout` at chance (1/10, no spread) on CNN-13 at lr 0.05 in 6 epochs: until 2026-12-05
    the findings credited bn with +52.8 points over none as if the regimen, not the protocol, had lost."""
    values = {"none": [0.1, 0.1, 0.1], "dropout": [0.1, 0.1, 0.1], "bn": [0.60, 0.63, 0.65]}
    comparison = compare([_with_classes(make_sweep(tmp_path / "s", values))])
    sentences = comparison.findings["cifar10"]
    about_bn = next(s for s in sentences if s.startswith("bn vs none"))
    assert "not a verdict on the regimen" in about_bn and "none (accuracy at chance (1/10) on every seed)" in about_bn
    assert not any("over none" in s or "better" in s for s in sentences)
    assert comparison.summary.set_index("regularizer").loc["dropout", "untrained"].startswith("accuracy at chance")
    assert comparison.summary.set_index("regularizer").loc["bn", "untrained"] == ""


def test_a_group_with_diverged_runs_says_its_mean_leaves_them_out(tmp_path):
    """A tuned configuration that diverged on one of three seeds: its mean over the other two must not read
    as a three-seed result."""
    from test_compare import write_run

    sweep = make_sweep(tmp_path / "s", {"none": [0.40, 0.42], "bn": [0.64, 0.66, 0.65]})
    write_run(sweep / "9", "none", 2, None, status="diverged")
    sentences = compare([sweep]).findings["cifar10"]
    assert ("none: 1 of its 3 runs diverged (a non-finite training loss); its mean and tests are over the other "
            "runs only, so they overstate how reliably it trains") in sentences
    assert not any(s.startswith("bn: ") and "diverged" in s for s in sentences)


def test_ties_wide_intervals_and_p_values_are_written_as_they_are(tmp_path):
    tied = compare([make_sweep(tmp_path / "t", {"none": [0.1] * 3, "bn": [0.1] * 3, "dropout": [0.1] * 3})])
    assert tied.findings["cifar10"][0] == "every group has the same mean accuracy (10.0 points): no ranking"
    two = compare([make_sweep(tmp_path / "two", {"none": [0.5, 0.6, 0.7], "dropout": [0.5, 0.6, 0.7],
                                                 "bn": [0.2, 0.3, 0.35]})])
    assert two.findings["cifar10"][0].startswith("highest mean accuracy, tied: none, dropout (60.0 points")
    wide = compare([make_sweep(tmp_path / "w", {"none": [0.1, 0.9, 0.2], "bn": [0.9, 0.2, 0.95]})])
    about_bn = next(s for s in wide.findings["cifar10"] if s.startswith("bn:"))
    assert "95% CI too wide to read" in about_bn and "-1" not in about_bn.split("CI")[1][:20]
    table = wide.table.set_index("regularizer")
    p = table.loc["bn", "p"]
    assert p == f"{wide.summary.set_index('regularizer').loc['bn', 'p_value']:.3f}"  # three decimals, as findings
    from regbench.findings import format_p

    assert (format_p(0.5), format_p(1.0), format_p(0.379), format_p(5.8e-05)) == ("0.500", "1.000", "0.379",
                                                                                   "5.8e-05")


def test_nothing_to_claim_has_no_findings_heading(tmp_path):
    one = compare([make_sweep(tmp_path / "s", {"bn": [0.8, 0.82]})])
    assert "Findings" not in one.text()
    one.write(tmp_path / "out")
    assert "## Findings" not in (tmp_path / "out" / "summary.md").read_text()


def test_a_table_of_tasks_with_different_metrics_names_each_rows_metric(tmp_path):
    import json

    from test_compare import write_run

    for job, (task, seed) in enumerate([("cifar10", 0), ("cifar10", 1), ("conll2003", 0), ("conll2003", 1)]):
        write_run(tmp_path / "s" / str(job), "none", seed, 0.5 + seed / 10, task=task)
        if task == "conll2003":
            path = tmp_path / "s" / str(job) / "metrics.json"
            record = json.loads(path.read_text())
            record.update(primary_metric="f1", test={"f1": 0.7 + seed / 10})
            path.write_text(json.dumps(record))
    table = compare([tmp_path / "s"]).table.set_index("task")
    assert table.loc["cifar10", "metric"] == "test.accuracy" and table.loc["conll2003", "metric"] == "test.f1"


def test_the_reports_run_table_shows_no_none(tmp_path):
    from regbench.report import render

    import json

    sweep = make_sweep(tmp_path / "s", {"none": [0.8, 0.82], "bn": [0.85, 0.86]})
    for path in sweep.rglob("metrics.json"):  # as the runner writes it: "error": null for a run that did not fail
        path.write_text(json.dumps({**json.loads(path.read_text()), "error": None}))
    page = render(compare([sweep]), [])
    assert ">None<" not in page and "<th>error</th>" not in page  # no run failed: no error column


def test_two_untrained_groups_are_named_together(tmp_path):
    values = {"none": [0.1, 0.1, 0.1], "dropout": [0.1, 0.1, 0.1]}
    sentences = compare([_with_classes(make_sweep(tmp_path / "s", values))]).findings["cifar10"]
    assert ("dropout vs none: not a verdict on the regimen: this protocol trained neither dropout nor none "
            "(accuracy at chance (1/10) on every seed, both)") in " ".join(sentences)
