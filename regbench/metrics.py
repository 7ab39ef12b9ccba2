"""Metrics as pure functions, each tested against hand-worked cases or a reference implementation.

Span scoring reproduces the conlleval script (CoNLL shared tasks): its chunk start/end rules are
ported line for line, so BIO (IOB2), IOB1 and IOBES input score exactly as conlleval scores them."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''). conlleval splits at the first hyphen."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # conlleval: endOfChunk
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # conlleval: startOfChunk
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """(start, end inclusive, type) of every chunk in one sentence, by conlleval's rules."""
    found = set()
    prev_tag, prev_type, start = "O", "", None
    for i, raw in enumerate(list(tags) + ["O"]):  # the sentence boundary ends any open chunk
        tag, type_ = split_tag(raw)
        if start is not None and _end_of_chunk(prev_tag, tag, prev_type, type_):
            found.add((start, i - 1, prev_type))
            start = None
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            start = i
        prev_tag, prev_type = tag, type_
    return found


def is_span_tagset(tags: set[str] | Sequence[str]) -> bool:
    """True when every tag looks like O or a B/I/E/S-prefixed chunk tag (BIO, IOB1, IOBES)."""
    tags = set(tags)
    return bool(tags) and all(t == "O" or (len(t) > 2 and t[1] == "-" and t[0] in "BIES") for t in tags) \
        and any(t != "O" for t in tags)


def _prf(correct: int, guessed: int, gold: int) -> dict[str, float]:
    precision = correct / guessed if guessed else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def span_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Micro precision/recall/F1 over chunks, per-type scores, and token accuracy, over sentences."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    correct, guessed, expected = Counter(), Counter(), Counter()
    tokens = right = 0
    for g_tags, p_tags in zip(gold, predicted):
        if len(g_tags) != len(p_tags):
            raise ValueError("a predicted sentence differs in length from its gold sentence")
        g_spans, p_spans = spans(g_tags), spans(p_tags)
        for s in g_spans:
            expected[s[2]] += 1
        for s in p_spans:
            guessed[s[2]] += 1
        for s in g_spans & p_spans:
            correct[s[2]] += 1
        tokens += len(g_tags)
        right += sum(g == p for g, p in zip(g_tags, p_tags))
    result = _prf(sum(correct.values()), sum(guessed.values()), sum(expected.values()))
    result["accuracy"] = right / tokens if tokens else 0.0
    result["per_type"] = {t: {**_prf(correct[t], guessed[t], expected[t]), "support": expected[t]}
                          for t in sorted(set(expected) | set(guessed))}
    return result


def token_accuracy(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    return sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0
