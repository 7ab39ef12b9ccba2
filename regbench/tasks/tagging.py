"""Sequence tagging on CoNLL-format corpora (NER, chunking, any tag set) with the BiLSTM tagger.

Sentences are pre-encoded once; training batches group sentences of similar length (shuffle, then
sort within chunks of 50 batches, then shuffle the batches) and the model packs them, so padding
costs little. Scoring is conlleval's (regbench.metrics)."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import metrics, validation
from regbench.data import conll
from regbench.errors import ConfigError, DataError
from regbench.models import MODELS
from regbench.tasks.base import Task

PAD, UNK = 0, 1
SORT_CHUNK_BATCHES = 50
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

    def __init__(self, train: list[conll.Sentence], lowercase: bool) -> None:
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

    def encode(self, sentence: conll.Sentence, where: str, unseen_tags: str = "error") -> Encoded:
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


def collate(items: list[Encoded], device: torch.device) -> dict[str, Tensor]:
    b, t = len(items), max(len(e.words) for e in items)
    length = max(e.chars.shape[1] for e in items)
    words = np.zeros((b, t), np.int64)
    case = np.zeros((b, t), np.int64)
    tags = np.zeros((b, t), np.int64)
    chars = np.zeros((b, t, length), np.int64)
    for i, e in enumerate(items):
        n = len(e.words)
        words[i, :n], case[i, :n], tags[i, :n] = e.words, e.case, e.tags
        chars[i, :n, : e.chars.shape[1]] = e.chars
    out = {k: torch.from_numpy(v).to(device, non_blocking=True)
           for k, v in (("words", words), ("case", case), ("tags", tags), ("chars", chars))}
    out["mask"] = out["words"] != PAD
    return out


def replace_singletons(words: Tensor, singleton_ids: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Lample et al. (2016): swap each training word seen only once for UNK with probability p, so the
    UNK embedding is trained and unseen test words do not all land on an untrained random vector."""
    draw = torch.rand(words.shape, generator=generator).to(words.device)
    return words.masked_fill(singleton_ids[words] & (draw < p), UNK)


class TaggingTask(Task):
    """Shared by conll2003, conll2000 and conll: they differ only in where their files are."""

    models: ClassVar[tuple[str, ...]] = ("bilstm",)
    primary_metric = "f1"

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        validation.choice(cfg, "data.metric", ("auto", "span", "accuracy"))
        validation.choice(cfg, "data.unseen_tags", ("error", "keep"))
        validation.number(cfg, "data.token_column", integer=True)
        if cfg.data.tag_column != "auto":
            validation.number(cfg, "data.tag_column", integer=True)
        validation.number(cfg, "data.split_seed", low=0, integer=True)
        validation.number(cfg, "data.train_eval_size", low=1, integer=True)

    def load_splits(self) -> dict[str, list[conll.Sentence]]:
        raise NotImplementedError

    def _read(self, path: Path) -> list[conll.Sentence]:
        return conll.read_conll(path, self.cfg.data.token_column, self.cfg.data.tag_column)

    def _dirs(self, subdir: str) -> list[Path]:
        if self.cfg.data.get("dir"):
            return [Path(self.cfg.data.dir).expanduser()]
        data_dir = Path(self.cfg.paths.data_dir)
        return [data_dir / subdir, data_dir]

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.paths: dict[str, Path] = {}
        splits = self.load_splits()
        dcfg = cfg.data
        if dcfg.limit_train:
            splits["train"] = splits["train"][: dcfg.limit_train]
        if dcfg.limit_eval:
            splits["val"], splits["test"] = splits["val"][: dcfg.limit_eval], splits["test"][: dcfg.limit_eval]
        self.sentences = splits
        self.vocab = Vocabulary(splits["train"], cfg.model.get("lowercase", True))
        tagset = set(self.vocab.tags)
        span = metrics.is_span_tagset(tagset) if dcfg.metric == "auto" else dcfg.metric == "span"
        self.primary_metric = "f1" if span else "accuracy"
        self.span = span
        self.encoded = {split: [self.vocab.encode(s, f"{self.paths.get(split, split)} sentence {i + 1}",
                                                  dcfg.unseen_tags)
                                for i, s in enumerate(sents)] for split, sents in splits.items()}
        self.train_eval_size = min(dcfg.train_eval_size, len(splits["train"]))
        self.singleton_unk = float(cfg.model.get("singleton_unk", 0.0))
        self.singleton_ids = torch.from_numpy(self.vocab.singleton_ids).to(device)
        self.predictions: dict[str, list[list[str]]] = {}

    def build_model(self) -> nn.Module:
        model = MODELS[self.cfg.model.name].build(self.cfg, num_words=len(self.vocab.words) + 2,
                                                  num_chars=len(self.vocab.chars) + 2, num_tags=len(self.vocab.tags))
        if self.cfg.model.get("word_vectors"):
            from regbench.models.bilstm import load_word_vectors

            load_word_vectors(Path(self.cfg.model.word_vectors), self.vocab.words, model.word_embedding,
                              self.vocab.lowercase)
        return model

    def num_train_batches(self) -> int:
        return math.ceil(len(self.encoded["train"]) / self.cfg.trainer.batch_size)

    def train_batches(self, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
        items = self.encoded["train"]
        bs = self.cfg.trainer.batch_size
        order = torch.randperm(len(items), generator=generator).tolist()
        batches = []
        chunk = bs * SORT_CHUNK_BATCHES
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: len(items[i].words))
            batches += [part[i:i + bs] for i in range(0, len(part), bs)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            batch = collate([items[i] for i in batches[b]], self.device)
            if self.singleton_unk > 0:
                batch["words"] = replace_singletons(batch["words"], self.singleton_ids, self.singleton_unk, generator)
            yield batch

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        emissions = model(batch["words"], batch["chars"], batch["case"], batch["mask"])
        loss = model.loss(emissions, batch["tags"], batch["mask"])
        mask = batch["mask"]
        n_tokens = mask.sum()
        correct = ((emissions.argmax(-1) == batch["tags"]) & mask).sum()  # emission argmax: no Viterbi in training
        return loss, {"loss_sum": loss.detach() * n_tokens, "correct": correct, "count": n_tokens}

    def loss_weight(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["mask"].sum()  # the loss is a mean over real tokens

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / sums["count"], "accuracy": sums["correct"] / sums["count"]}

    def evaluate(self, model: nn.Module, split: str) -> dict[str, Any]:
        items = self.encoded[split]
        if split == "train":
            items = items[: self.train_eval_size]
        gold_sents = self.sentences[split][: len(items)]
        order = sorted(range(len(items)), key=lambda i: len(items[i].words))
        predicted: list[list[str]] = [[] for _ in items]
        loss_sum = torch.zeros((), device=self.device)
        n_tokens = 0
        bs = self.cfg.trainer.eval_batch_size
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            batch = collate([items[i] for i in idx], self.device)
            emissions = model(batch["words"], batch["chars"], batch["case"], batch["mask"])
            n = int(batch["mask"].sum())
            loss_sum += model.loss(emissions, batch["tags"], batch["mask"]) * n
            n_tokens += n
            best = model.decode(emissions, batch["mask"]).cpu().numpy()
            for row, i in enumerate(idx):
                predicted[i] = [self.vocab.tag_names[t] for t in best[row, : len(items[i].words)]]
        gold = [s.tags for s in gold_sents]
        self.predictions[split] = predicted
        result: dict[str, Any] = {"loss": loss_sum.item() / max(1, n_tokens)}
        if self.span:
            scores = metrics.span_scores(gold, predicted)
            result.update({k: scores[k] for k in ("f1", "precision", "recall", "accuracy")})
            result["per_type"] = {t: {"f1": v["f1"], "precision": v["precision"], "recall": v["recall"],
                                      "support": v["support"]} for t, v in scores["per_type"].items()}
        else:
            result["accuracy"] = metrics.token_accuracy(gold, predicted)
        return result

    def example_input(self) -> tuple[Tensor, ...]:
        items = self.encoded["train"]
        median = sorted(items, key=lambda e: len(e.words))[len(items) // 2]
        batch = collate([median], self.device)
        return batch["words"], batch["chars"], batch["case"], batch["mask"]

    def write_outputs(self, run_dir: Path) -> None:
        """test_predictions.txt in conlleval's input format: `token gold predicted`, blank line between sentences."""
        from regbench.results import write_text_atomic

        predicted = self.predictions.get("test")
        if predicted is None:
            return
        lines = []
        for sentence, tags in zip(self.sentences["test"], predicted):
            lines += [f"{tok} {gold} {pred}" for tok, gold, pred in zip(sentence.tokens, sentence.tags, tags)]
            lines.append("")
        write_text_atomic(run_dir / "test_predictions.txt", "\n".join(lines) + "\n")

    def data_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"n_{k}_sentences": len(v) for k, v in self.sentences.items()}
        out.update(n_train_tokens=sum(len(s.tokens) for s in self.sentences["train"]), n_words=len(self.vocab.words),
                   n_chars=len(self.vocab.chars), tags=self.vocab.tag_names, metric=self.primary_metric,
                   files={k: str(v) for k, v in self.paths.items()}, n_train_eval_sentences=self.train_eval_size)
        return out


class Conll2003Task(TaggingTask):
    name = "conll2003"
    SPLITS = {"train": ("train.txt", "eng.train"), "val": ("valid.txt", "eng.testa", "dev.txt"),
              "test": ("test.txt", "eng.testb")}

    def load_splits(self) -> dict[str, list[conll.Sentence]]:
        self.paths = conll.locate_splits(self._dirs("conll2003"), "CoNLL-2003", self.SPLITS)
        return {split: self._read(path) for split, path in self.paths.items()}


class ConllTask(TaggingTask):
    name = "conll"
    SPLITS = {"train": ("train.txt", "train.conll", "train"), "val": ("valid.txt", "dev.txt", "valid.conll",
                                                                     "dev.conll", "valid", "dev"),
              "test": ("test.txt", "test.conll", "test")}

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        super().validate_config(cfg)
        if not cfg.data.get("dir"):
            raise ConfigError("task=conll needs data.dir=PATH: a folder with train, valid (or dev) and test files")

    def load_splits(self) -> dict[str, list[conll.Sentence]]:
        self.paths = conll.locate_splits(self._dirs(""), "a CoNLL-format corpus", self.SPLITS)
        return {split: self._read(path) for split, path in self.paths.items()}


class Conll2000Task(TaggingTask):
    name = "conll2000"

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        super().validate_config(cfg)
        validation.number(cfg, "data.val_size", low=1, integer=True)
        validation.boolean(cfg, "data.download")

    def load_splits(self) -> dict[str, list[conll.Sentence]]:
        files = conll.conll2000_files(self._dirs("conll2000"), self.cfg.data.download)
        train = self._read(files["train"])
        if self.cfg.data.val_size >= len(train):
            raise ConfigError(f"data.val_size={self.cfg.data.val_size} leaves no training sentences "
                              f"(train has {len(train)}): lower it")
        # Validation sentences are carved from train by a fixed seed: the same split for every run.
        perm = np.random.default_rng(self.cfg.data.split_seed).permutation(len(train))
        val_idx = set(perm[: self.cfg.data.val_size].tolist())
        self.paths = {"train": files["train"], "val": files["train"], "test": files["test"]}
        return {"train": [s for i, s in enumerate(train) if i not in val_idx],
                "val": [s for i, s in enumerate(train) if i in val_idx], "test": self._read(files["test"])}
