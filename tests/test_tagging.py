"""The tagging task: CoNLL reader edge cases, vocabulary, the BiLSTM's regularizer mapping, and real
training runs on tiny corpora written in the on-disk formats of CoNLL-2003 / CoNLL-2000."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA, tiny_corpus, write
from regbench import runner
from regbench.data.conll import Sentence, read_conll
from regbench.data.vocabulary import UNK, Vocabulary, case_class, load_word_vectors, normalise_word
from regbench.errors import ConfigError, DataError
from regbench.models import bilstm, build_model
from regbench.regimen import Regimen
from regbench.tasks.tagging import TaggingTask, replace_singletons
from regbench.validation import validate

# -- reader -------------------------------------------------------------------------------------


def test_reader_handles_docstart_tabs_blank_runs_and_trailing_blank_lines(tmp_path):
    text = "-DOCSTART- -X- O O\n\nEU\tNNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n\nPeter NNP B-NP B-PER\n\n\n"
    sents = read_conll(write(tmp_path / "a.txt", text))
    assert [s.tokens for s in sents] == [["EU", "rejects"], ["Peter"]]
    assert [s.tags for s in sents] == [["B-ORG", "O"], ["B-PER"]]
    assert read_conll(tmp_path / "a.txt", tag_column=2)[0].tags == ["B-NP", "B-VP"]


def test_reader_reads_gzip(tmp_path):
    sents = read_conll(write(tmp_path / "train.txt.gz", "He PRP B-NP\nran VBD B-VP\n"))
    assert sents == [Sentence(["He", "ran"], ["B-NP", "B-VP"])]


def test_auto_tag_column_skips_a_constant_trailing_column(tmp_path):
    three = write(tmp_path / "3.txt", "EU B-ORG 0\nrejects O 0\n\nPeter B-PER 0\n")
    assert read_conll(three, tag_column="auto")[0].tags == ["B-ORG", "O"]
    four = write(tmp_path / "4.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert read_conll(four, tag_column="auto")[0].tags == ["B-ORG", "O"]


def test_a_short_line_is_an_error_with_file_and_line(tmp_path):
    path = write(tmp_path / "bad.txt", "EU B-ORG 0\nrejects O 0\n\nPeter B-PER\n")
    with pytest.raises(DataError, match=r"bad.txt:4: expected 3 columns .* found 2"):
        read_conll(path)
    with pytest.raises(DataError, match=r"one.txt:1: 1 column"):
        read_conll(write(tmp_path / "one.txt", "lonely\n"))


def test_non_utf8_is_an_error_with_the_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("Paris B-LOC\n\nZ\u00fcrich B-LOC\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt:3: not UTF-8"):
        read_conll(path)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no sentences"):
        read_conll(write(tmp_path / "empty.txt", "\n\n-DOCSTART- O\n"))


# -- vocabulary and features ---------------------------------------------------------------------


def test_vocabulary_is_from_train_only_and_unknowns_map_to_unk():
    vocab = Vocabulary([Sentence(["Paris", "1999"], ["B-LOC", "O"])], lowercase=True)
    encoded = vocab.encode(Sentence(["paris", "2024", "Rome"], ["O", "O", "B-LOC"]), "valid.txt sentence 1")
    assert encoded.words.tolist() == [vocab.words["paris"], vocab.words["0000"], 1]
    assert encoded.chars[2, 0] == 1  # "R" never occurs in train
    with pytest.raises(DataError, match=r"valid.txt sentence 1: tag 'B-PER' never occurs"):
        vocab.encode(Sentence(["Ann"], ["B-PER"]), "valid.txt sentence 1")
    kept = vocab.encode(Sentence(["Ann"], ["B-PER"]), "test", unseen_tags="keep")
    assert kept.tags.tolist() == [vocab.tags["O"]]


def test_singleton_unk_replacement_touches_only_words_seen_once():
    # "the" occurs twice (lowercased), "paris" and "0000" once each.
    vocab = Vocabulary([Sentence(["The", "Paris", "the", "1999"], ["O", "B-LOC", "O", "O"])], lowercase=True)
    once = {w for w, i in vocab.words.items() if vocab.singleton_ids[i]}
    assert once == {"paris", "0000"} and not vocab.singleton_ids[:2].any()
    ids = torch.tensor([[vocab.words["the"], vocab.words["paris"], vocab.words["0000"], 0]])
    singletons = torch.from_numpy(vocab.singleton_ids)
    gen = torch.Generator().manual_seed(0)
    always = replace_singletons(ids, singletons, 1.0, gen)
    assert always.tolist() == [[vocab.words["the"], UNK, UNK, 0]]  # padding stays padding
    assert torch.equal(replace_singletons(ids, singletons, 0.0, gen), ids)
    many = replace_singletons(ids.repeat(4000, 1), singletons, 0.5, gen)
    assert 0.45 < (many[:, 1] == UNK).float().mean() < 0.55 and (many[:, 0] != UNK).all()


def test_word_normalisation_and_case_classes():
    assert normalise_word("Berlin-2024", True) == "berlin-0000" and normalise_word("Berlin", False) == "Berlin"
    assert [case_class(w) for w in ("word", "NATO", "Paris", "iPhone", "1999")] == [1, 2, 3, 4, 5]


# -- the model ------------------------------------------------------------------------------------


def build_tagger(compose_cfg, *overrides: str) -> bilstm.BiLSTMTagger:
    cfg = compose_cfg("task=conll", "data.dir=/unused", *overrides)
    validate(cfg, machine=False)
    return build_model(cfg, Regimen.from_config(cfg), exclude=TaggingTask.task_model_keys, num_words=50,
                       num_chars=20, num_tags=5)


@pytest.mark.parametrize("regularizer,norms,dropouts", [
    ("none", [], []), ("bn", ["1", "2"], []), ("dropout", [], ["1", "2"]), ("bn_dropout", ["1", "2"], ["1", "2"]),
    ("bn_dropout_gc", ["1", "2"], ["1", "2"])])
def test_regimens_map_onto_the_embeddings_and_bilstm_outputs(compose_cfg, regularizer, norms, dropouts):
    model = build_tagger(compose_cfg, f"regularizer={regularizer}", "model.hidden=200", "model.char_hidden=50")
    assert list(model.norms) == norms and list(model.dropouts) == dropouts
    assert all(isinstance(m, bilstm.MaskedBatchNorm) for m in model.norms.values())
    if norms:
        assert model.norms["1"].num_features == 100 + 8 + 50 and model.norms["2"].num_features == 400


def test_placement_selectors_on_a_two_layer_bilstm(compose_cfg):
    model = build_tagger(compose_cfg, "regularizer=bn_dropout", "model.num_layers=2",
                         "regularizer.norm.layers=first:1", "regularizer.dropout.layers=from:2")
    assert list(model.norms) == ["1"] and list(model.dropouts) == ["2", "3"] and len(model.lstms) == 2
    with pytest.raises(ConfigError, match="regularizer.norm.layers"):
        build_tagger(compose_cfg, "regularizer=bn", "regularizer.norm.layers=[5]")


def test_masked_batchnorm_ignores_padding():
    torch.manual_seed(0)
    bn = bilstm.MaskedBatchNorm(4)
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    padded = torch.cat([x, torch.full((2, 5, 4), 1e6)], dim=1)  # huge values in the padding
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    out = bn(x, mask)
    out_padded = bn(padded, padded_mask)
    assert torch.allclose(out[mask], out_padded[:, :3][mask], atol=1e-5)
    assert out_padded[~padded_mask].eq(0).all()
    expected = (x[mask] - x[mask].mean(0)) / torch.sqrt(x[mask].var(0, unbiased=False) + 1e-5)
    assert torch.allclose(out[mask], expected, atol=1e-4)


@pytest.mark.parametrize("char", ["cnn", "lstm", "none"])
@pytest.mark.parametrize("crf", [True, False])
def test_forward_loss_decode_shapes(compose_cfg, char, crf):
    model = build_tagger(compose_cfg, f"model.char={char}", f"model.crf={crf}", "regularizer=bn_dropout")
    words = torch.tensor([[3, 4, 5], [6, 7, 0]])
    mask = words != 0
    chars = torch.randint(1, 20, (2, 3, 4)) * mask[..., None]
    case = torch.ones(2, 3, dtype=torch.long) * mask
    emissions = model(words, chars, case, mask)
    assert emissions.shape == (2, 3, 5)
    loss = model.loss(emissions, torch.zeros(2, 3, dtype=torch.long), mask)
    loss.backward()
    assert loss.item() > 0 and model.output.weight.grad is not None
    decoded = model.decode(emissions, mask)
    assert decoded.shape == (2, 3) and decoded[1, 2] == 0


@pytest.mark.parametrize("char", ["cnn", "lstm"])
def test_a_bf16_autocast_step_on_the_cpu_runs_the_lstms_in_bf16(compose_cfg, char):
    """Sentences (and words) of one length: PyTorch hands such a batch to oneDNN's LSTM, which under
    CPU bf16 autocast rejects an fp32 input on CPUs without native bf16 (a CI machine's AVX2). The
    tagger gives its LSTMs the autocast dtype, which every CPU runs."""
    model = build_tagger(compose_cfg, f"model.char={char}", "regularizer=bn_dropout")
    words = torch.tensor([[3, 4, 5], [6, 7, 8]])
    mask = words != 0
    chars = torch.randint(1, 20, (2, 3, 4))
    seen = []
    for lstm in [*model.lstms, *([model.char_encoder.lstm] if char == "lstm" else [])]:
        lstm.register_forward_hook(lambda module, args, out: seen.append(args[0].data.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emissions = model(words, chars, torch.ones(2, 3, dtype=torch.long), mask)
    loss = model.loss(emissions, torch.zeros(2, 3, dtype=torch.long), mask)
    loss.backward()
    assert seen == [torch.bfloat16] * (2 if char == "lstm" else 1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and model.lstms[0].weight_ih_l0.grad is not None


# -- real runs on tiny corpora -------------------------------------------------------------------

def test_generic_conll_run_learns_and_writes_predictions(small_run, compose_cfg, tmp_path, tiny_corpus_dir):
    record, run_dir = small_run("conll", "regularizer=bn_dropout_gc", "trainer.max_epochs=6", "optimizer.lr=0.01")
    assert record["status"] == "completed" and record["primary_metric"] == "f1"
    for key in ("f1", "precision", "recall", "accuracy", "loss"):
        assert key in record["test"]
    assert set(record["test"]["per_type"]) == {"PER", "LOC"}
    assert record["test"]["f1"] > 0.5  # all-O scores 0
    assert record["flops_per_example"] > 0 and record["data"]["n_train_sentences"] == 120
    history = pd.read_csv(run_dir / "history.csv")
    assert {"val_f1", "val_per_type.PER.f1", "clip_rate", "grad_norm_max"} <= set(history.columns)
    lines = (run_dir / "test_predictions.txt").read_text().split("\n")
    test_sents = read_conll(tiny_corpus_dir / "test.txt")
    assert lines.count("") == len(test_sents) + 1  # a blank after each sentence, and the final newline
    first = lines[0].split(" ")
    assert len(first) == 3 and first[0] == test_sents[0].tokens[0] and first[1] == test_sents[0].tags[0]


def test_conll2003_layout_and_original_four_column_files(small_run, compose_cfg, tmp_path):
    data = tmp_path / "data"
    for split, name in (("train", "eng.train"), ("valid", "eng.testa"), ("test", "eng.testb")):
        body = tiny_corpus(20 if split == "train" else 5, hash(split) % 100)
        four = "\n".join(f"{line.split()[0]} NN B-NP {line.split()[1]}" if line else "" for line in body.split("\n"))
        write(data / "conll2003" / name, "-DOCSTART- -X- -X- O\n\n" + four)
    record, run_dir = small_run("conll2003", f"paths.data_dir={data}",
                                  "trainer.max_epochs=1")
    assert record["status"] == "completed" and record["data"]["n_train_sentences"] == 20
    assert set(record["data"]["tags"]) == {"O", "B-PER", "I-PER", "B-LOC"}


def test_conll2000_carves_validation_from_train_and_keeps_unseen_test_tags(small_run, compose_cfg, tmp_path):
    data = tmp_path / "data" / "conll2000"
    write(data / "train.txt.gz", tiny_corpus(40, 0))
    write(data / "test.txt.gz", tiny_corpus(10, 1) + "Lonely B-LST\n\n")
    record, _ = small_run("conll2000", f"paths.data_dir={data.parent}",
                            "data.val_size=10", "trainer.max_epochs=1")
    assert record["data"]["n_train_sentences"] == 30 and record["data"]["n_val_sentences"] == 10
    assert record["data"]["n_test_sentences"] == 11 and "LST" in record["test"]["per_type"]


def test_missing_conll2000_offline_names_the_files(small_run, compose_cfg, tmp_path):
    with pytest.raises(DataError, match=r"train.txt.gz and test.txt.gz.*data.download=true"):
        small_run("conll2000", f"paths.data_dir={tmp_path / 'none'}",
                    "data.download=false")


def test_generic_conll_needs_a_dir_and_rejects_unseen_tags(small_run, compose_cfg, tmp_path, tiny_corpus_dir):
    with pytest.raises(ConfigError, match="data.dir"):
        validate(compose_cfg("task=conll"), machine=False)
    corpus = tmp_path / "corpus"
    write(corpus / "train.txt", tiny_corpus(10, 0))
    write(corpus / "dev.txt", "Ann B-ORG\n\n")
    write(corpus / "test.txt", tiny_corpus(3, 1))
    with pytest.raises(DataError, match=r"dev.txt sentence 1: tag 'B-ORG' never occurs"):
        small_run("conll", f"data.dir={corpus}")


def test_a_non_span_tagset_is_scored_by_token_accuracy(small_run, compose_cfg, tmp_path):
    corpus = tmp_path / "pos"
    for split in ("train", "valid", "test"):
        write(corpus / f"{split}.txt", "the DT\ncat NN\nsat VBD\n\na DT\ndog NN\n\n")
    record, _ = small_run("conll", f"data.dir={corpus}", "trainer.max_epochs=1")
    assert record["primary_metric"] == "accuracy" and "f1" not in record["test"]


def test_cnn13_does_not_fit_a_tagging_task(compose_cfg):
    with pytest.raises(ConfigError, match="model=cnn13 does not fit task=conll2003: use model=bilstm"):
        validate(compose_cfg("task=conll2003", "model=cnn13"), machine=False)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "conll2003" / "train.txt").is_file(), reason="../shared/data is absent")
def test_short_real_conll2003_run_beats_the_all_o_baseline(small_run, compose_cfg, tmp_path):
    record, _ = small_run("conll2003", f"paths.data_dir={SHARED_DATA}",
                            "data.limit_train=500", "data.limit_eval=300", "trainer.max_epochs=3",
                            "model.hidden=100", "model.word_dim=50", "model.char_hidden=30", "regularizer=bn",
                            "optimizer.lr=0.005", "trainer.batch_size=32")  # F1 0.57, accuracy 0.885 (2026-12-06)
    test = record["test"]
    gold = [s.tags for s in read_conll(SHARED_DATA / "conll2003" / "test.txt", tag_column="auto")[:300]]
    all_o_accuracy = sum(t == "O" for tags in gold for t in tags) / sum(len(tags) for tags in gold)
    assert test["f1"] > 0.3  # the all-O baseline has F1 0
    assert test["accuracy"] > all_o_accuracy
    assert record["data"]["tags"] == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]


def test_word_vectors_file_initialises_known_words(tmp_path, tiny_corpus_dir):
    vocab = Vocabulary(read_conll(tiny_corpus_dir / "train.txt"), lowercase=True)
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("2 3\nParis 1 2 3\nnotaword 9 9 9\nsmith 4 5 6\n", encoding="utf-8")
    embedding = torch.nn.Embedding(len(vocab.words) + 2, 3)
    assert load_word_vectors(vectors, vocab.words, embedding, lowercase=True) == 2
    assert embedding.weight[vocab.words["paris"]].tolist() == [1.0, 2.0, 3.0]
    assert embedding.weight[vocab.words["smith"]].tolist() == [4.0, 5.0, 6.0]
    with pytest.raises(ConfigError, match="no such file"):
        load_word_vectors(tmp_path / "missing.txt", vocab.words, embedding, lowercase=True)


OWN_TAGGER = '''
import torch
from torch import nn

INPUTS = "token_sequences"


class WordTagger(nn.Module):
    """Embedding, the regimen's dropout, a linear layer to tags: a tagger without characters or a CRF."""

    def __init__(self, placement, num_words, num_tags, dim):
        super().__init__()
        self.word_embedding = nn.Embedding(num_words, dim)
        self.dropout = placement.dropout(1)
        self.out = nn.Linear(dim, num_tags)

    def forward(self, words, chars, case, mask, lengths, char_lengths):
        return self.out(self.dropout(self.word_embedding(words)))

    def loss(self, emissions, tags, mask, label_smoothing=0.0):
        return nn.functional.cross_entropy(emissions[mask], tags[mask], label_smoothing=label_smoothing)

    def decode(self, emissions, mask):
        return emissions.argmax(-1) * mask

    def token_probs(self, emissions, mask):
        return emissions.float().softmax(-1)


def build(*, regimen, num_words, num_chars, num_tags, dim=16):
    return WordTagger(regimen.place(1, default_dropout=(1,)), num_words, num_tags, dim)


def without_decode(**inputs):
    model = build(**inputs)
    model.decode = None
    return model
'''


def test_a_tagger_of_ones_own_trains_on_a_conll_task(compose_cfg, tiny_corpus_dir, tmp_path, monkeypatch):
    """tasks.tagging.Tagger is the whole contract: a model with a forward call, loss, decode and token_probs
    fits every tagging task (before, model=custom was refused for them all)."""
    (tmp_path / "own_tagger.py").write_text(OWN_TAGGER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg("task=conll", f"data.dir={tiny_corpus_dir}", "model=custom", "model._target_=own_tagger.build",
                      "+model.dim=24", "regularizer=dropout", "trainer.max_epochs=8", "optimizer.lr=0.05",
                      "trainer.batch_size=8", "trainer.progress=false", "trainer.device=cpu",
                      f"paths.output_dir={tmp_path / 'outputs'}")
    validate(cfg)
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["model"] == "own_tagger.build"
    tags = len(record["data"]["tags"])
    assert record["params"] == (record["data"]["n_words"] + 2) * 24 + 24 * tags + tags
    assert record["losses"]["train"] == "own_tagger.build's loss per token"
    assert record["test"]["f1"] > 0.3  # it learned the names (all-O scores 0)
    assert (tmp_path / "run" / "test_predictions.txt").is_file()

    cfg.model._target_ = "own_tagger.without_decode"  # model.name follows its ${._target_}
    with pytest.raises(ConfigError, match=r"^model._target_=own_tagger.without_decode returned a WordTagger without "
                                          r"decode: a tagger needs loss, decode and token_probs"):
        runner.run(cfg, tmp_path / "broken")
    assert not (tmp_path / "broken").exists()  # refused before the run started: no record
