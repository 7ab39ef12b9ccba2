"""Span scoring against hand-worked cases (conlleval's rules), the Perl conlleval script's own output on the
real CoNLL-2000 test file, and token accuracy."""
from __future__ import annotations

import pytest

from conftest import SHARED_DATA
from regbench.data.conll import read_conll
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


# -- pinned to the Perl conlleval script on a real file ----------------------------------------------------
def corrupted(tag: str, k: int) -> str:
    """A deterministic 'prediction' from the gold tag of token k: O, a split chunk, or the wrong type."""
    if k % 7 == 3:
        return "O"
    if k % 11 == 5 and tag.startswith("I-"):
        return "B-" + tag[2:]
    if k % 13 == 0 and tag != "O":
        return tag[:2] + ("VP" if tag[2:] == "NP" else "NP")
    return tag


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "conll2000" / "test.txt.gz").is_file(), reason="../shared/data is absent")
def test_span_f1_matches_the_perl_conlleval_script_on_the_conll2000_test_file():
    """The CoNLL-2000 test file (47,377 tokens, 23,852 chunks), its gold tags against a corrupted copy, scored by
    regbench and by conlleval (the shared task's Perl script, version 2004-01-26, run on 2026-12-06 as
    `perl conlleval < file` on lines `token POS gold corrupted`). Its output, copied:

    processed 47377 tokens with 23852 phrases; found: 25707 phrases; correct: 15172.
    accuracy:  79.24%; precision:  59.02%; recall:  63.61%; FB1:  61.23
    (per type below)"""
    sentences = read_conll(SHARED_DATA / "conll2000" / "test.txt.gz")
    gold, predicted, k = [], [], 0
    for sentence in sentences:
        gold.append(list(sentence.tags))
        predicted.append([corrupted(tag, k + i) for i, tag in enumerate(sentence.tags)])
        k += len(sentence.tags)
    scores = span_scores(gold, predicted)
    assert k == 47377
    expected = sum(t["support"] for t in scores["per_type"].values())
    correct = round(scores["recall"] * expected)
    assert (expected, correct, round(correct / scores["precision"])) == (23852, 15172, 25707)
    assert [round(100 * scores[m], 2) for m in ("accuracy", "precision", "recall", "f1")] == [79.24, 59.02, 63.61, 61.23]
    perl = {"ADJP": (80.05, 69.63, 74.48), "ADVP": (94.27, 77.94, 85.34), "CONJP": (40.00, 44.44, 42.11),
            "INTJ": (100.00, 100.00, 100.00), "LST": (60.00, 60.00, 60.00), "NP": (47.59, 54.92, 50.99),
            "PP": (99.39, 78.47, 87.70), "PRT": (100.00, 79.25, 88.42), "SBAR": (99.28, 77.01, 86.74),
            "VP": (51.84, 66.34, 58.20)}
    ours = {t: tuple(round(100 * s[m], 2) for m in ("precision", "recall", "f1")) for t, s in scores["per_type"].items()}
    assert ours == perl
