"""Span scoring against hand-worked cases (conlleval's rules) and token accuracy."""
from __future__ import annotations

import pytest

from regbench.metrics import is_span_tagset, span_scores, spans


def test_bio_spans():
    assert spans(["B-PER", "I-PER", "O", "B-LOC"]) == {(0, 1, "PER"), (3, 3, "LOC")}


def test_an_i_tag_starts_a_span_like_conlleval():
    # conlleval treats I- after O (or after another type) as the start of a chunk.
    assert spans(["O", "I-PER", "I-PER"]) == {(1, 2, "PER")}
    assert spans(["B-PER", "I-LOC"]) == {(0, 0, "PER"), (1, 1, "LOC")}


def test_adjacent_spans_of_different_types_and_same_type():
    assert spans(["B-PER", "B-LOC", "I-LOC"]) == {(0, 0, "PER"), (1, 2, "LOC")}
    assert spans(["B-PER", "B-PER"]) == {(0, 0, "PER"), (1, 1, "PER")}


def test_iob1_and_iobes():
    assert spans(["I-ORG", "I-ORG", "B-ORG", "O"]) == {(0, 1, "ORG"), (2, 2, "ORG")}  # IOB1
    assert spans(["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "S-ORG"]) == {(0, 0, "PER"), (1, 3, "LOC"), (5, 5, "ORG")}


def test_all_o():
    assert spans(["O", "O"]) == set()
    scores = span_scores([["O", "O"]], [["O", "O"]])
    assert scores["f1"] == 0.0 and scores["precision"] == 0.0 and scores["recall"] == 0.0
    assert scores["accuracy"] == 1.0


def test_micro_precision_recall_f1_and_per_type_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    # gold chunks: PER(0-1), LOC(3), ORG(0), PER(2) = 4; predicted: PER(0-1), ORG(3), ORG(0) = 3; correct: 2.
    s = span_scores(gold, pred)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert s["per_type"]["LOC"]["support"] == 1 and s["per_type"]["LOC"]["f1"] == 0.0
    assert s["per_type"]["ORG"]["precision"] == 0.5 and s["per_type"]["ORG"]["recall"] == 1.0


def test_a_span_with_the_wrong_boundary_is_wrong():
    s = span_scores([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "O"]])
    assert s["f1"] == 0.0 and s["accuracy"] == pytest.approx(2 / 3)


def test_tagset_detection():
    assert is_span_tagset({"O", "B-PER", "I-PER"}) and is_span_tagset({"O", "S-X", "E-X"})
    assert not is_span_tagset({"NN", "VB", "DT"}) and not is_span_tagset({"O"})
