"""Words as a tagger's model reads them: the vocabulary of a training split (words, characters, tags),
each sentence encoded as id arrays, the lookup form of a word and its capitalisation class, and
pretrained word vectors copied into an embedding for the vocabulary's words. Beside the CoNLL reader
(conll.py) because any corpus of token-tag sentences is encoded the same way."""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from regbench.data.conll import Sentence
from regbench.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PAD, UNK = 0, 1
DIGITS = re.compile(r"\d")


def normalise_word(word: str, lowercase: bool) -> str:
    """The lookup form of a word: lowercased with every digit mapped to 0 (when `lowercase`)."""
    return DIGITS.sub("0", word.lower()) if lowercase else word


def case_class(word: str) -> int:
    """1 lower, 2 UPPER, 3 Title, 4 mIxed, 5 no letters (0 is padding)."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return 5
    if all(c.islower() for c in letters):
        return 1
    if all(c.isupper() for c in letters):
        return 2
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 3
    return 4


@dataclass
class Encoded:
    words: np.ndarray   # (T,)
    chars: np.ndarray   # (T, L)
    case: np.ndarray    # (T,)
    tags: np.ndarray    # (T,)


class Vocabulary:
    """Words, characters and tags of the training split; anything unseen maps to UNK (tags: an error)."""

    def __init__(self, train: list[Sentence], lowercase: bool) -> None:
        self.lowercase = lowercase
        words = Counter(normalise_word(w, lowercase) for s in train for w in s.tokens)
        chars = Counter(c for s in train for w in s.tokens for c in w)
        self.words = {w: i for i, w in enumerate(sorted(words), start=2)}
        # Words seen once in training: the ones singleton UNK replacement may swap for UNK.
        self.singleton_ids = np.zeros(len(self.words) + 2, dtype=bool)
        self.singleton_ids[[self.words[w] for w, n in words.items() if n == 1]] = True
        self.chars = {c: i for i, c in enumerate(sorted(chars), start=2)}
        self.tags = {t: i for i, t in enumerate(sorted({t for s in train for t in s.tags}))}
        self.tag_names = sorted(self.tags, key=self.tags.get)

    def encode(self, sentence: Sentence, where: str, unseen_tags: str = "error") -> Encoded:
        """unseen_tags="keep" lets a gold tag the training split lacks through (it is scored as gold and
        can never be predicted; for the loss alone it counts as "O")."""
        unknown = [t for t in sentence.tags if t not in self.tags]
        if unknown and unseen_tags == "error":
            raise DataError(f"{where}: tag {unknown[0]!r} never occurs in the training split "
                            f"(known tags: {', '.join(self.tag_names)}); set data.unseen_tags=keep to score it anyway")
        fallback = self.tags.get("O", 0)
        longest = max(len(w) for w in sentence.tokens)
        chars = np.zeros((len(sentence.tokens), longest), dtype=np.int64)
        for i, word in enumerate(sentence.tokens):
            chars[i, : len(word)] = [self.chars.get(c, UNK) for c in word]
        return Encoded(
            words=np.array([self.words.get(normalise_word(w, self.lowercase), UNK) for w in sentence.tokens]),
            chars=chars, case=np.array([case_class(w) for w in sentence.tokens]),
            tags=np.array([self.tags.get(t, fallback) for t in sentence.tags]))


def load_word_vectors(path: Path, vocab: dict[str, int], embedding: nn.Embedding, lowercase: bool) -> int:
    """Copy vectors for vocabulary words from a word2vec/GloVe text file into `embedding`; return how many."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.word_vectors={str(path)!r}: no such file (a text file: word v1 v2 ... per line)")
    found = 0
    with torch.no_grad(), open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.rstrip().split(" ")
            if lineno == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                continue  # word2vec header "count dim"
            word = fields[0].lower() if lowercase else fields[0]
            if word in vocab and len(fields) - 1 == embedding.embedding_dim:
                embedding.weight[vocab[word]] = torch.tensor([float(v) for v in fields[1:]])
                found += 1
    log.info("loaded %d of %d word vectors from %s", found, len(vocab), path)
    return found
