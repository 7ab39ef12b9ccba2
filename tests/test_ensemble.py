"""`regbench ensemble`: the average of the members' test probabilities, scored by hand; an ensemble of
identical members equals the member; what cannot be ensembled is one line and exit 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from regbench.errors import CompareError
from regbench.ensemble import ensemble
from test_compare import write_run


def fake_run(run_dir, regularizer, seed, probs, labels, task="cifar10"):
    write_run(run_dir, regularizer, seed, float((probs.argmax(1) == labels).mean()), task=task)
    record = json.loads((run_dir / "metrics.json").read_text())
    record.update(run_id=f"{task}-{regularizer}-{seed}", config={"task": {"name": task}, "regularizer": {"name": regularizer}})
    (run_dir / "metrics.json").write_text(json.dumps(record))
    np.savez(run_dir / "test_outputs.npz", probs=probs.astype(np.float32), labels=labels)


LABELS = np.array([0, 1, 1, 0])
A = np.array([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.9, 0.1]])   # 3 of 4 right
B = np.array([[0.3, 0.7], [0.2, 0.8], [0.4, 0.6], [0.8, 0.2]])   # 3 of 4 right, another mistake


def test_the_ensemble_averages_probabilities_and_reports_the_gain(tmp_path):
    fake_run(tmp_path / "0", "bn", 0, A, LABELS)
    fake_run(tmp_path / "1", "bn", 1, B, LABELS)
    table = ensemble([tmp_path]).table
    row = table.iloc[0]
    mean = (A + B) / 2  # [[.45,.55],[.45,.55],[.3,.7],[.85,.15]]: 3 of 4 right
    assert row["n_members"] == 2
    assert row["ensemble.accuracy"] == pytest.approx((mean.argmax(1) == LABELS).mean()) == pytest.approx(0.75)
    assert row["member_mean.accuracy"] == pytest.approx(0.75) and row["gain.accuracy"] == pytest.approx(0.0)
    nll = -np.mean(np.log(mean[np.arange(4), LABELS]))
    assert row["ensemble.nll"] == pytest.approx(nll, rel=1e-6)
    members = np.mean([-np.mean(np.log(p[np.arange(4), LABELS])) for p in (A, B)])
    assert row["gain.nll"] == pytest.approx(members - nll, rel=1e-6)  # positive = the ensemble is better


def test_identical_members_make_the_member(tmp_path):
    for seed in range(3):
        fake_run(tmp_path / str(seed), "bn", seed, A, LABELS)
    row = ensemble([tmp_path]).table.iloc[0]
    for metric in ("accuracy", "nll", "ece", "brier"):
        assert row[f"ensemble.{metric}"] == pytest.approx(row[f"member_mean.{metric}"], abs=1e-7)


def test_groups_follow_compare_and_the_command_writes_csv_and_md(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (reg, seed, p) in enumerate([("none", 0, A), ("none", 1, B), ("bn", 0, B), ("bn", 1, B)]):
        fake_run(sweep / str(i), reg, seed, p, LABELS)
    (sweep / "results.csv").write_text("status\n")  # makes it a sweep: the files go there
    result = subprocess.run([sys.executable, "-m", "regbench", "ensemble", str(sweep)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(sweep / "ensemble.csv")
    assert sorted(table["regularizer"]) == ["bn", "none"] and set(table["n_members"]) == {2}
    assert (sweep / "ensemble.md").read_text().startswith("|")


def test_what_cannot_be_ensembled_is_one_line(tmp_path):
    fake_run(tmp_path / "a" / "0", "bn", 0, A, LABELS)
    fake_run(tmp_path / "b" / "0", "bn", 0, A, LABELS, task="svhn")
    with pytest.raises(CompareError, match="different tasks"):
        ensemble([tmp_path / "a", tmp_path / "b"])
    shutil.rmtree(tmp_path / "b")
    (tmp_path / "a" / "0" / "test_outputs.npz").unlink()
    result = subprocess.run([sys.executable, "-m", "regbench", "ensemble", str(tmp_path / "a")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "has no test_outputs.npz: ensembles need each run's stored test outputs" in result.stderr


def test_real_runs_of_two_seeds_ensemble(small_run, tmp_path):
    records = [small_run("cifar10", "regularizer=bn", f"seed={seed}", name=f"s{seed}")[0] for seed in (0, 1)]
    row = ensemble([tmp_path / "s0", tmp_path / "s1"]).table.iloc[0]
    assert row["n_members"] == 2
    assert row["member_mean.accuracy"] == pytest.approx(np.mean([r["test"]["accuracy"] for r in records]))
    assert row["member_mean.ece"] == pytest.approx(np.mean([r["test"]["ece"] for r in records]), rel=1e-5)


def test_a_softmax_taggers_stored_outputs_reproduce_its_f1_and_two_seeds_ensemble(small_run, tmp_path):
    # without a CRF the per-token argmax is the tagger's own decoding, so scoring the stored
    # probabilities gives back the record's test F1 exactly
    records = [small_run("conll", "model.crf=false", f"seed={seed}", name=f"s{seed}")[0] for seed in (0, 1)]
    outputs = np.load(tmp_path / "s0" / "test_outputs.npz")
    assert str(outputs["kind"]) == "tagging"
    assert outputs["probs"].shape == (outputs["lengths"].sum(), len(outputs["tag_names"]))
    np.testing.assert_allclose(outputs["probs"].sum(1), 1.0, rtol=1e-5)
    table = ensemble([tmp_path / "s0", tmp_path / "s1"])
    row = table.table.iloc[0]
    assert table.metrics[0] == "f1" and row["n_members"] == 2
    assert row["member_mean.f1"] == pytest.approx(np.mean([r["test"]["f1"] for r in records]), abs=1e-12)
    assert row["member_mean.nll"] == pytest.approx(np.mean([r["test"]["nll"] for r in records]), rel=1e-5)
    assert 0 <= row["ensemble.f1"] <= 1


def test_crf_marginals_of_identical_taggers_ensemble_to_the_member(small_run, tmp_path):
    small_run("conll", "seed=0", name="a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same run twice: a second "seed" with equal outputs
    record = json.loads((tmp_path / "b" / "metrics.json").read_text())
    record["config"]["seed"] = 1
    (tmp_path / "b" / "metrics.json").write_text(json.dumps(record))
    row = ensemble([tmp_path / "a", tmp_path / "b"], by=["regularizer"]).table.iloc[0]
    for metric in ("f1", "accuracy", "nll", "ece"):
        assert row[f"ensemble.{metric}"] == pytest.approx(row[f"member_mean.{metric}"], abs=1e-9)


def test_movielens_score_matrices_reproduce_the_run_and_ensemble(small_run, tmp_path):
    records = [small_run("movielens", f"seed={seed}", name=f"s{seed}")[0] for seed in (0, 1)]
    outputs = np.load(tmp_path / "s0" / "test_outputs.npz")
    assert str(outputs["kind"]) == "ranking" and outputs["scores"].shape[0] == records[0]["test"]["users"]
    result = ensemble([tmp_path / "s0", tmp_path / "s1"])
    row = result.table.iloc[0]
    assert result.metrics[0] == "ndcg@10"
    for metric in ("ndcg@10", "recall@20", "mrr@10"):
        assert row[f"member_mean.{metric}"] == pytest.approx(np.mean([r["test"][metric] for r in records]), rel=1e-6)
    # averaging two matrices, by hand: the mean scores' top 10 against the stored relevant items
    other = np.load(tmp_path / "s1" / "test_outputs.npz")
    mean = (outputs["scores"].astype(np.float64) + other["scores"]) / 2
    relevant = np.zeros(mean.shape, bool)
    relevant[outputs["relevant"][:, 0], outputs["relevant"][:, 1]] = True
    top = np.argsort(-mean, axis=1, kind="stable")[:, :10]
    hits = np.take_along_axis(relevant, top, 1)
    ideal = [sum(1 / np.log2(np.arange(2, min(r, 10) + 2))) for r in relevant.sum(1)]
    ndcg = (hits / np.log2(np.arange(2, 12))).sum(1) / ideal
    assert row["ensemble.ndcg@10"] == pytest.approx(ndcg.mean(), rel=1e-6)


def test_outputs_can_be_turned_off_or_capped_and_then_ensemble_says_so(small_run, tmp_path):
    small_run("movielens", "trainer.test_outputs_max_mb=0.001", name="capped")
    small_run("cifar10", "trainer.test_outputs=false", name="off")
    assert not (tmp_path / "capped" / "test_outputs.npz").exists()
    assert not (tmp_path / "off" / "test_outputs.npz").exists()
    with pytest.raises(CompareError, match="trainer.test_outputs=true"):
        ensemble([tmp_path / "capped"])
