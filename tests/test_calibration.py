"""Calibration metrics against hand-computed values, and test_outputs.npz from a real run, read back
with numpy, agreeing with the record."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regbench import runner
from regbench.calibration import CalibrationSums, calibration, reliability

PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
LABELS = np.array([0, 1, 1, 1])


def test_nll_ece_and_brier_match_a_hand_computation():
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.8 (right); 15 bins of width 1/15:
    # 0.9 -> bin 13 (0.8667, 0.9333], 0.6 -> bin 8 (0.5333, 0.6], 0.7 -> bin 10 (0.6667, 0.7333], 0.8 -> bin 11
    ece = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    nll = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4
    brier = ((0.1 ** 2 + 0.1 ** 2) + (0.6 ** 2 + 0.6 ** 2) + (0.3 ** 2 + 0.3 ** 2) + (0.2 ** 2 + 0.2 ** 2)) / 4
    got = calibration(PROBS, LABELS)
    assert got == pytest.approx({"nll": nll, "ece": ece, "brier": brier}, abs=1e-12)


def test_examples_in_one_bin_pool_their_accuracy_and_confidence():
    probs = np.array([[0.62, 0.38], [0.64, 0.36], [0.35, 0.65]])  # all in bin (0.6, 0.6667]
    labels = np.array([0, 1, 1])
    assert calibration(probs, labels)["ece"] == pytest.approx(abs(2 / 3 - (0.62 + 0.64 + 0.65) / 3))
    diagram = reliability(probs, labels)
    assert diagram["count"].sum() == 3 and diagram["count"][9] == 3
    assert diagram["accuracy"][9] == pytest.approx(2 / 3) and np.isnan(diagram["accuracy"][0])


def test_batches_add_up_to_the_whole():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50, 4), 1)
    labels = torch.randint(0, 4, (50,))
    sums = CalibrationSums(torch.device("cpu"))
    for start in range(0, 50, 7):
        sums.add(probs[start:start + 7], labels[start:start + 7])
    assert sums.result() == pytest.approx(calibration(probs.numpy(), labels.numpy()), rel=1e-12)


def test_a_run_writes_test_outputs_that_reproduce_its_record(small_cfg, tmp_path):
    record = runner.run(small_cfg("cifar10", "regularizer=bn"), tmp_path / "run")
    outputs = np.load(tmp_path / "run" / "test_outputs.npz")
    probs, labels = outputs["probs"], outputs["labels"]
    assert probs.dtype == np.float32 and labels.dtype == np.int64
    assert probs.shape == (record["data"]["n_test"], 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == labels).mean() == pytest.approx(record["test"]["accuracy"])
    assert calibration(probs, labels) == pytest.approx({k: record["test"][k] for k in ("nll", "ece", "brier")},
                                                       rel=1e-5)
    assert record["test"]["nll"] == pytest.approx(record["test"]["loss"], rel=1e-5)  # for these tasks the same
    assert {"nll", "ece", "brier"} <= set(record["val"])


def test_crf_token_marginals_are_the_brute_force_ones():
    """p(y_t = k | x) by enumerating every tag sequence of a short sentence, against forward-backward."""
    import itertools

    from regbench.models.crf import CRF

    torch.manual_seed(0)
    crf = CRF(3)
    with torch.no_grad():
        crf.start.normal_(), crf.end.normal_(), crf.transitions.normal_()
    emissions = torch.randn(1, 4, 3)
    mask = torch.tensor([[True, True, True, False]])  # 3 real tokens
    scores = {}
    for tags in itertools.product(range(3), repeat=3):
        full = torch.tensor([list(tags) + [0]])
        scores[tags] = crf.score(emissions, full, mask).item()
    z = np.logaddexp.reduce(list(scores.values()))
    brute = np.zeros((3, 3))
    for tags, score in scores.items():
        for t, k in enumerate(tags):
            brute[t, k] += math.exp(score - z)

    from regbench.models.bilstm import BiLSTMTagger

    marginals = BiLSTMTagger.token_probs(type("WithCrf", (), {"crf": crf})(), emissions, mask)
    assert np.allclose(marginals[0, :3].numpy(), brute, atol=1e-5)
    assert np.allclose(marginals[0, :3].sum(1).numpy(), 1, atol=1e-5)


@pytest.mark.parametrize("crf", ["true", "false"])
def test_tagging_records_token_level_calibration(small_cfg, tmp_path, crf):
    record = runner.run(small_cfg("conll", f"model.crf={crf}"), tmp_path / "run")
    for split in ("val", "test"):
        assert {"nll", "ece", "brier"} <= set(record[split])
        assert 0 <= record[split]["ece"] <= 1 and record[split]["nll"] > 0


def test_compare_plots_and_the_report_draw_a_reliability_diagram_per_task(small_run, tmp_path):
    from regbench import compare
    from regbench.plots import write_plots
    from regbench.report import write_report

    for name, regularizer in (("a", "none"), ("b", "bn")):
        small_run("cifar10", f"regularizer={regularizer}", name=name)
    comparison = compare.compare([tmp_path / "a", tmp_path / "b"])
    plots = write_plots(comparison, tmp_path / "plots")
    assert tmp_path / "plots" / "reliability_cifar10.png" in plots.files
    report = write_report(comparison, tmp_path / "report.html").read_text()
    assert report.count("<img") == len([p for p in plots.files if p.suffix == ".png"])
