"""Sequence tagging on CoNLL-format corpora (NER, chunking, any tag set) with the BiLSTM tagger, or a tagger
of the user's own that has the methods of `Tagger`.

Sentences are encoded once (regbench.data.vocabulary) and kept on the run's device (DeviceSplit), so a
batch is built there with no host-to-device copy. Training batches group sentences of similar length (shuffle, then sort within
chunks of 50 batches, then shuffle the batches) and the model packs them, so padding costs little.
Scoring is conlleval's (regbench.metrics)."""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks, metrics
from regbench.calibration import CalibrationSums
from regbench.data import conll
from regbench.data.vocabulary import UNK, Vocabulary, load_word_vectors
from regbench.errors import ConfigError
from regbench.fileio import write_text_atomic
from regbench.models import is_custom
from regbench.regimen import Regimen
from regbench.tasks.base import Task
from regbench.tasks.device_split import DeviceSplit

SORT_CHUNK_BATCHES = 50


MODEL_INPUTS = ("words", "chars", "case", "mask", "lengths", "char_lengths")


class Tagger(Protocol):
    """What the tagging tasks call on their model (regbench.models.bilstm.BiLSTMTagger is one). A tagger of
    your own (model=custom) is built with num_words, num_chars and num_tags and needs these methods;
    `word_embedding` (an nn.Embedding over the vocabulary's ids) only with model.word_vectors."""

    def __call__(self, words: Tensor, chars: Tensor, case: Tensor, mask: Tensor, lengths: Tensor,
                 char_lengths: Tensor) -> Tensor:
        """(B, T) word ids, (B, T, L) char ids, (B, T) case classes, (B, T) mask, host lengths -> (B, T, tags)
        emissions (batches come longest sentence first)."""

    def loss(self, emissions: Tensor, tags: Tensor, mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """The mean loss per real token."""

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """(B, T) predicted tag ids."""

    def token_probs(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """(B, T, tags) each token's tag probabilities (calibration, test_outputs.npz)."""


TAGGER_METHODS = ("loss", "decode", "token_probs")  # Tagger's methods beside the forward call


def replace_singletons(words: Tensor, singleton_ids: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Lample et al. (2016): swap each training word seen only once for UNK with probability p, so the
    UNK embedding is trained and unseen test words do not all land on an untrained random vector."""
    draw = torch.rand(words.shape, generator=generator, device=generator.device)
    return words.masked_fill(singleton_ids[words] & (draw < p), UNK)


class TaggingTask(Task):
    """Shared by conll2003, conll2000 and conll: they differ only in where their files are."""

    inputs = "token_sequences"  # bilstm
    accepts_custom_models = True   # a Tagger of the user's own
    host_keys: ClassVar[tuple[str, ...]] = ("lengths", "char_lengths")
    task_model_keys: ClassVar[tuple[str, ...]] = ("lowercase", "singleton_unk", "word_vectors")
    regularizers = frozenset({"label_smoothing"})  # with model.crf=false (the model says why not with a CRF)
    primary_metric = "f1"
    metric_directions = {"f1": True, "precision": True, "recall": True, "accuracy": True}
    equivalent_keys = {"model.width": "model.hidden"}  # the BiLSTM's size is its hidden units

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        checks.choice(cfg, "data.metric", ("auto", "span", "accuracy"))
        checks.choice(cfg, "data.unseen_tags", ("error", "keep"))
        checks.number(cfg, "data.token_column", integer=True)
        if cfg.data.tag_column != "auto":
            checks.number(cfg, "data.tag_column", integer=True)
        checks.number(cfg, "data.split_seed", low=0, integer=True)
        checks.number(cfg, "data.train_eval_size", low=1, integer=True)

    def load_splits(self) -> conll.Corpus:
        """The train, val and test sentences, and the file each came from."""
        raise NotImplementedError

    def _read(self, path: Path) -> list[conll.Sentence]:
        return conll.read_conll(path, self.cfg.data.token_column, self.cfg.data.tag_column)

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        corpus = self.read_once("splits", self.load_splits)
        self.paths = corpus.files
        splits = dict(corpus.sentences)  # limited below: the kept dict stays whole
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
        encoded = {split: [self.vocab.encode(s, f"{self.paths.get(split, split)} sentence {i + 1}",
                                             dcfg.unseen_tags)
                           for i, s in enumerate(sents)] for split, sents in splits.items()}
        self.train_eval_size = min(dcfg.train_eval_size, len(splits["train"]))
        self.on_device = {split: DeviceSplit(items, device) for split, items in encoded.items()}
        self.singleton_unk = float(cfg.model.get("singleton_unk", 0.0))
        self.singleton_ids = torch.from_numpy(self.vocab.singleton_ids).to(device)
        self.predictions: dict[str, list[list[str]]] = {}
        self._test_outputs: dict[str, Any] | None = None  # set by evaluate(model, "test")

    def model_inputs(self) -> dict[str, Any]:
        return {"num_words": len(self.vocab.words) + 2, "num_chars": len(self.vocab.chars) + 2,
                "num_tags": len(self.vocab.tags)}

    def build_model(self, regimen: Regimen) -> nn.Module:
        model = super().build_model(regimen)
        missing = [m for m in TAGGER_METHODS if not callable(getattr(model, m, None))]
        if missing:
            raise ConfigError(f"model._target_={self.cfg.model._target_} returned a {type(model).__name__} without "
                              f"{', '.join(missing)}: a tagger needs loss, decode and token_probs beside its forward "
                              "call (regbench.tasks.tagging.Tagger, docs/own-model.md)")
        if self.cfg.model.get("word_vectors"):
            if not isinstance(getattr(model, "word_embedding", None), nn.Embedding):
                raise ConfigError(f"model.word_vectors needs the tagger's word_embedding (an nn.Embedding over the "
                                  f"vocabulary's ids); model._target_={self.cfg.model._target_} has none")
            load_word_vectors(Path(self.cfg.model.word_vectors), self.vocab.words, model.word_embedding,
                              self.vocab.lowercase)
        return model

    def num_train_batches(self) -> int:
        return math.ceil(len(self.on_device["train"]) / self.cfg.trainer.batch_size)

    def train_batches(self, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
        split = self.on_device["train"]
        bs = self.cfg.trainer.batch_size
        # The epoch's order is drawn on the run's device and read once; batches hold sentences of
        # similar length (sorted within chunks of SORT_CHUNK_BATCHES batches), in a random order.
        order = torch.randperm(len(split), generator=generator, device=generator.device).cpu().numpy()
        batches = []
        chunk = bs * SORT_CHUNK_BATCHES
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(split.lengths[part], kind="stable")]
            batches += [part[i:i + bs] for i in range(0, len(part), bs)]
        shuffled = torch.randperm(len(batches), generator=generator, device=generator.device).cpu().numpy()
        for _, batch in split.batches([batches[b] for b in shuffled]):
            if self.singleton_unk > 0:
                batch["words"] = replace_singletons(batch["words"], self.singleton_ids, self.singleton_unk, generator)
            yield batch

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        emissions = model(*(batch[k] for k in MODEL_INPUTS))
        loss = model.loss(emissions, batch["tags"], batch["mask"], self.regimen.label_smoothing)
        mask = batch["mask"]
        n_tokens = mask.sum()
        correct = ((emissions.argmax(-1) == batch["tags"]) & mask).sum()  # emission argmax: no Viterbi in training
        return loss, {"loss_sum": loss.detach() * n_tokens, "correct": correct, "count": n_tokens}

    def loss_weight(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["mask"].sum()  # the loss is a mean over real tokens

    def loss_names(self) -> dict[str, str]:
        if is_custom(self.cfg):
            name = f"{self.cfg.model.name}'s loss per token"
        else:
            name = "CRF negative log-likelihood per token" if self.cfg.model.get("crf", True) else \
                "cross-entropy per token"
        return {"train": name, "val": name}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / sums["count"], "accuracy": sums["correct"] / sums["count"]}

    def evaluate(self, model: nn.Module, split: str) -> dict[str, Any]:
        data = self.on_device[split]
        n = self.train_eval_size if split == "train" else len(data)
        gold = [s.tags for s in self.sentences[split][:n]]
        order = data.longest_first(np.arange(n))
        bs = self.cfg.trainer.eval_batch_size
        loss_sum = torch.zeros((), device=self.device)
        calibration = CalibrationSums(self.device)
        keep = split == "test" and bool(self.cfg.trainer.test_outputs)  # gathered only to be written
        decoded, kept = [], []
        for rows, batch in data.batches([order[i:i + bs] for i in range(0, n, bs)]):
            # everything stays on the device until the whole split is decoded
            emissions = model(*(batch[k] for k in MODEL_INPUTS))
            loss_sum += model.loss(emissions, batch["tags"], batch["mask"]) * batch["mask"].sum()
            decoded.append((rows, model.decode(emissions, batch["mask"])))
            probs = model.token_probs(emissions, batch["mask"])  # token-level: CRF marginals or the softmax
            calibration.add(probs.flatten(0, 1), batch["tags"].flatten(), batch["mask"].flatten())
            if keep:
                kept.append((rows, probs, batch["tags"]))
        if keep:
            self._test_outputs = self._token_outputs(kept, data.lengths[:n])
        predicted: list[list[str]] = [[] for _ in range(n)]
        for rows, best in decoded:
            best = best.cpu().numpy()
            for row, i in enumerate(rows):
                predicted[i] = [self.vocab.tag_names[t] for t in best[row, : data.lengths[i]]]
        self.predictions[split] = predicted
        result: dict[str, Any] = {"loss": loss_sum.item() / max(1, int(data.lengths[:n].sum())),
                                  **calibration.result()}
        if self.span:
            scores = metrics.span_scores(gold, predicted)
            result.update({k: scores[k] for k in ("f1", "precision", "recall", "accuracy")})
            result["per_type"] = {t: {"f1": v["f1"], "precision": v["precision"], "recall": v["recall"],
                                      "support": v["support"]} for t, v in scores["per_type"].items()}
        else:
            result["accuracy"] = metrics.token_accuracy(gold, predicted)
        return result

    def _token_outputs(self, kept: list[tuple[np.ndarray, Tensor, Tensor]], lengths: np.ndarray) -> dict[str, Any]:
        """test_outputs.npz for tagging: each token's tag probabilities and gold tag, sentences in test order."""
        probs: list[np.ndarray] = [np.zeros((0, len(self.vocab.tag_names)), np.float32)] * len(lengths)
        labels: list[np.ndarray] = [np.zeros(0, np.int64)] * len(lengths)
        for rows, batch_probs, batch_tags in kept:
            batch_probs, batch_tags = batch_probs.float().cpu().numpy(), batch_tags.cpu().numpy()
            for row, i in enumerate(rows):
                probs[i], labels[i] = batch_probs[row, : lengths[i]], batch_tags[row, : lengths[i]]
        return {"kind": "tagging", "probs": np.concatenate(probs).astype(np.float32),
                "labels": np.concatenate(labels).astype(np.int64), "lengths": np.asarray(lengths, np.int64),
                "tag_names": np.asarray(self.vocab.tag_names, dtype=str), "span": np.bool_(self.span)}

    def test_outputs(self) -> dict[str, Any] | None:
        return self._test_outputs

    def example_input(self) -> tuple[Tensor, ...]:
        data = self.on_device["train"]
        median = np.argsort(data.lengths, kind="stable")[len(data) // 2: len(data) // 2 + 1]
        _, batch = next(data.batches([median]))
        return tuple(batch[k] for k in MODEL_INPUTS)

    def write_outputs(self, run_dir: Path) -> None:
        """test_predictions.txt in conlleval's input format: `token gold predicted`, blank line between sentences."""
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

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        conll.locate_splits(cls.data_dirs(cfg), "CoNLL-2003", cls.SPLITS)

    def load_splits(self) -> conll.Corpus:
        files = conll.locate_splits(self.data_dirs(self.cfg), "CoNLL-2003", self.SPLITS)
        return conll.Corpus({split: self._read(path) for split, path in files.items()}, files)


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

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        conll.locate_splits(cls.data_dirs(cfg), "a CoNLL-format corpus", cls.SPLITS)

    def load_splits(self) -> conll.Corpus:
        files = conll.locate_splits(self.data_dirs(self.cfg), "a CoNLL-format corpus", self.SPLITS)
        return conll.Corpus({split: self._read(path) for split, path in files.items()}, files)


class Conll2000Task(TaggingTask):
    name = "conll2000"

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        super().validate_config(cfg)
        checks.number(cfg, "data.val_size", low=1, integer=True)
        checks.boolean(cfg, "data.download")

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        conll.check_conll2000(cls.data_dirs(cfg), cfg.data.download)

    def load_splits(self) -> conll.Corpus:
        files = conll.conll2000_files(self.data_dirs(self.cfg), self.cfg.data.download)
        train = self._read(files["train"])
        if self.cfg.data.val_size >= len(train):
            raise ConfigError(f"data.val_size={self.cfg.data.val_size} leaves no training sentences "
                              f"(train has {len(train)}): lower it")
        # Validation sentences are carved from train by a fixed seed: the same split for every run.
        perm = np.random.default_rng(self.cfg.data.split_seed).permutation(len(train))
        val_idx = set(perm[: self.cfg.data.val_size].tolist())
        return conll.Corpus({"train": [s for i, s in enumerate(train) if i not in val_idx],
                             "val": [s for i, s in enumerate(train) if i in val_idx], "test": self._read(files["test"])},
                            {"train": files["train"], "val": files["train"], "test": files["test"]})
