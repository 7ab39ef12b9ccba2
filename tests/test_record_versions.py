"""One versioned record: every metrics.json regbench has written (all of docs/results/, from every earlier
version) reads through record.upgrade() to the current version, compare reads each folder, and a metric's
direction comes from the task that wrote the record, never from its name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from regbench.compare import compare
from regbench.record import RECORD_VERSION, flatten, read_metrics
from test_compare import make_sweep

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
RECORDS = sorted(RESULTS.rglob("metrics.json"))
FOLDERS = sorted({p.relative_to(RESULTS).parts[0] for p in RECORDS})


def test_there_are_records_of_earlier_versions_to_read():
    assert len(RECORDS) >= 90 and len(FOLDERS) >= 8


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_record_in_docs_results_reads_as_the_current_version(folder):
    for path in (p for p in RECORDS if p.relative_to(RESULTS).parts[0] == folder):
        record = read_metrics(path.parent)
        assert record["record_version"] == RECORD_VERSION, path
        metrics = [k for k in flatten(record.get("test") or {}) if not k.startswith("per_type.")]
        assert set(record["metric_directions"]) == set(metrics), path
        if record.get("primary_metric") in record["metric_directions"] and "higher_is_better" in record:
            assert record["metric_directions"][record["primary_metric"]] == record["higher_is_better"], path
        for name in ("loss", "nll", "ece", "brier"):
            assert record["metric_directions"].get(name, False) is False, path
    comparison = compare([RESULTS / folder])  # and compare reads the folder as a whole
    assert len(comparison.summary) >= 1


def test_a_new_record_carries_its_version_and_the_tasks_directions(small_run):
    record, _ = small_run("movielens")
    on_disk = json.loads((Path(_) / "metrics.json").read_text())
    assert on_disk["record_version"] == RECORD_VERSION and "upgraded_from" not in on_disk
    assert on_disk["metric_directions"]["ndcg@10"] is True and on_disk["metric_directions"]["loss"] is False
    assert on_disk["metric_directions"]["mrr@20"] is True


def test_compare_ranks_by_the_recorded_direction_not_by_the_metric_name(tmp_path):
    """A metric of a user's task called "loss_gain" is better higher: the name alone once said lower."""
    sweep = make_sweep(tmp_path / "s", {"none": [0.80, 0.82, 0.84], "bn": [0.85, 0.88, 0.86]})
    for path in sweep.rglob("metrics.json"):
        record = json.loads(path.read_text())
        record["test"]["loss_gain"] = record["test"]["accuracy"]
        record["record_version"] = RECORD_VERSION
        record["metric_directions"] = {"accuracy": True, "loss_gain": True}
        path.write_text(json.dumps(record))
    summary = compare([sweep], metric="test.loss_gain").summary.set_index("regularizer")
    assert bool(summary.loc["bn", "higher_is_better"]) and summary.loc["bn", "rank"] == 1


def test_records_without_config_compared_with_newer_ones_keep_their_names(small_run):
    """The fixed protocol's MovieLens records (docs/results/study-cpu-movielens, written before `config`
    existed) beside a run of today: each keeps its regularizer. They were all labelled `-` and merged into
    one group of 15 "repeated seeds", since the newer record's config.regularizer.name column was read alone."""
    _, run_dir = small_run("movielens", "regularizer=dropout")
    summary = compare([RESULTS / "study-cpu-movielens", run_dir], baseline=None).summary
    old = summary[summary["n"] == 3]
    assert sorted(old["regularizer"]) == ["bn", "bn_dropout", "bn_dropout_gc", "dropout", "none"]
    assert (old["repeated_seeds"] == 0).all() and len(summary) == 6
    assert summary[summary["n"] == 1]["regularizer"].tolist() == ["dropout"]
