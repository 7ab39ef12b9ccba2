"""BiLSTM sequence tagger: word + capitalisation + character features, 1-2 BiLSTM layers, a linear
layer to tags, and an optional CRF.

Layers for the regularizer spec: 1 = the input features (word, case and char embeddings,
concatenated), 2..L+1 = the output of each BiLSTM layer. BN normalises the feature dimension over
real tokens only (padding never enters the statistics); dropout acts on the same places. The
defaults put both on every layer (dropout on embeddings and LSTM outputs, as Lample et al. 2016).
"""
from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from regbench import checks
from regbench.errors import ConfigError
from regbench.models.common import INITS, init_weights
from regbench.models.crf import CRF
from regbench.regimen import NO_PLACEMENT, Placement, Regimen

log = logging.getLogger(__name__)

N_CASE_CLASSES = 6  # pad, lower, UPPER, Title, mIxed, no letters


def token_positions(mask: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Flat (B * T) positions of the real tokens, row by row; each row's real tokens come first.

    Selecting them with `mask` would make the host wait for the GPU (the count depends on the data);
    with the sentence lengths on the host the count is known there and the positions are computed on
    the device. Without `lengths` they are read from the device."""
    if lengths is None:
        return mask.reshape(-1).nonzero().squeeze(1)
    t = mask.shape[1]
    counts = mask.sum(1)
    total = int(lengths.sum())
    row = torch.repeat_interleave(torch.arange(len(counts), device=mask.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    return row * t + torch.arange(total, device=mask.device) - first[row]


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the feature dimension of (B, T, F) input, computed on real tokens only; padded
    positions come out as 0. `tokens`: token_positions(mask, ...), computed once per forward."""

    def forward(self, x: Tensor, mask: Tensor, tokens: Tensor | None = None) -> Tensor:  # type: ignore[override]
        b, t, f = x.shape
        tokens = token_positions(mask) if tokens is None else tokens
        rows = super().forward(x.reshape(b * t, f).index_select(0, tokens))
        return x.new_zeros(b * t, f).index_copy(0, tokens, rows.to(x.dtype)).view(b, t, f)


class TokenNorm(nn.Module):
    """A normalisation of each token's features on its own (GroupNorm, LayerNorm) on (B, T, F) input: no
    statistics cross tokens, so padding needs no mask (its rows are ignored downstream)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor, mask: Tensor, tokens: Tensor | None = None) -> Tensor:
        b, t, f = x.shape
        return self.norm(x.reshape(b * t, f)).view(b, t, f)


def autocast_input(x: Tensor) -> Tensor:
    """`x` in the autocast dtype when autocast is on for its device, else unchanged.

    An LSTM under CPU bf16 autocast with an fp32 input fails on CPUs without native bf16 (AVX2 only):
    oneDNN "could not create a primitive descriptor for the LSTM forward propagation primitive". Given a
    bf16 input it runs there too, and it is what autocast would compute on CPUs that have bf16 and on CUDA."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


class CharCNN(nn.Module):
    def __init__(self, num_chars: int, char_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, chars: Tensor, lengths: Tensor | None = None) -> Tensor:  # (N, L) -> (N, out)
        h = self.conv(self.embedding(chars).transpose(1, 2))  # (N, out, L)
        h = h.masked_fill((chars == 0)[:, None, :], float("-inf"))
        return h.amax(dim=2)


class CharLSTM(nn.Module):
    def __init__(self, num_chars: int, char_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=0)
        self.lstm = nn.LSTM(char_dim, out_dim // 2, batch_first=True, bidirectional=True)

    def forward(self, chars: Tensor, lengths: Tensor | None = None) -> Tensor:
        """`lengths`: the rows' character counts on the host (the tagging task's batches carry them).
        Packing needs them there; without them they are read from the device, which waits for it."""
        on_device = (chars != 0).sum(1)
        if lengths is None:
            lengths = on_device.cpu()
        # The same stable sort of the same counts on both sides orders the rows longest first without
        # copying an order from host to device (as pack_padded_sequence's own sorting would).
        order = torch.sort(on_device, descending=True, stable=True).indices
        ordered_lengths = torch.sort(lengths, descending=True, stable=True).values.clamp(min=1)
        packed = pack_padded_sequence(autocast_input(self.embedding(chars.index_select(0, order))), ordered_lengths,
                                      batch_first=True)
        _, (h, _) = self.lstm(packed)
        states = torch.cat([h[0], h[1]], dim=1)
        return torch.empty_like(states).index_copy(0, order, states)


class BiLSTMTagger(nn.Module):
    def __init__(self, num_words: int, num_chars: int, num_tags: int, *, word_dim: int = 100, case_dim: int = 8,
                 char: str = "cnn", char_dim: int = 30, char_hidden: int = 50, hidden: int = 200,
                 num_layers: int = 1, crf: bool = True, placement: Placement | None = None) -> None:
        super().__init__()
        placement = placement or NO_PLACEMENT
        self.word_embedding = nn.Embedding(num_words, word_dim, padding_idx=0)
        self.case_embedding = nn.Embedding(N_CASE_CLASSES, case_dim, padding_idx=0) if case_dim else None
        self.char_encoder = {"cnn": CharCNN, "lstm": CharLSTM}[char](num_chars, char_dim, char_hidden) \
            if char != "none" else None
        features = word_dim + case_dim + (char_hidden if char != "none" else 0)
        self.norms = nn.ModuleDict()
        self.dropouts = nn.ModuleDict()
        self.lstms = nn.ModuleList()
        sizes = [features] + [2 * hidden] * num_layers
        for layer, size in enumerate(sizes, start=1):
            if placement.has_norm(layer):  # padding must not enter the statistics: the masked BatchNorm
                norm = placement.norm(layer, size, dims=1, batch_norm=MaskedBatchNorm)
                self.norms[str(layer)] = norm if isinstance(norm, MaskedBatchNorm) else TokenNorm(norm)
            if placement.has_dropout(layer):
                self.dropouts[str(layer)] = placement.dropout(layer)
            if layer <= num_layers:
                self.lstms.append(nn.LSTM(size, hidden, batch_first=True, bidirectional=True))
        self.output = nn.Linear(2 * hidden, num_tags)
        self.crf = CRF(num_tags) if crf else None

    def _regularize(self, layer: int, h: Tensor, mask: Tensor, tokens: Tensor) -> Tensor:
        key = str(layer)
        if key in self.norms:
            h = self.norms[key](h, mask, tokens)
        if key in self.dropouts:
            h = self.dropouts[key](h)
        return h

    def forward(self, words: Tensor, chars: Tensor, case: Tensor, mask: Tensor, lengths: Tensor | None = None,
                char_lengths: Tensor | None = None) -> Tensor:
        """Emission scores (B, T, num_tags) for padded word ids (B, T), char ids (B, T, L), case ids (B, T).

        `lengths` (B,) and `char_lengths` (B, T) are the sentence and word lengths on the host, with the
        sentences longest first, as the tagging task's batches carry them: then nothing in a step waits
        for the device. Without them they are read from the device (any order)."""
        parts = [self.word_embedding(words)]
        if self.case_embedding is not None:
            parts.append(self.case_embedding(case))
        tokens = token_positions(mask, lengths)
        if self.char_encoder is not None:
            b, t, width = chars.shape
            real_lengths = None
            if char_lengths is not None and lengths is not None:  # the real tokens' word lengths, on the host
                real_lengths = char_lengths[torch.arange(t) < lengths[:, None]]
            features = self.char_encoder(chars.reshape(b * t, width).index_select(0, tokens), real_lengths)
            parts.append(parts[0].new_zeros(b * t, features.shape[1]).index_copy(
                0, tokens, features.to(parts[0].dtype)).view(b, t, -1))
        h = self._regularize(1, torch.cat(parts, dim=-1), mask, tokens)
        longest_first = lengths is not None
        if lengths is None:
            lengths = mask.sum(1).cpu()
        for i, lstm in enumerate(self.lstms, start=2):
            packed = pack_padded_sequence(autocast_input(h), lengths, batch_first=True, enforce_sorted=longest_first)
            h, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=words.shape[1])
            h = self._regularize(i, h, mask, tokens)
        return self.output(h)

    def loss(self, emissions: Tensor, tags: Tensor, mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean loss per real token: CRF negative log-likelihood, or cross-entropy without a CRF (with
        `label_smoothing`, training only: a CRF scores whole tag sequences and has no per-token targets)."""
        n_tokens = mask.sum().clamp(min=1)
        if self.crf is not None:
            return self.crf.nll(emissions, tags, mask).sum() / n_tokens
        if label_smoothing:
            return nn.functional.cross_entropy(emissions.float()[mask], tags[mask], reduction="sum",
                                               label_smoothing=label_smoothing) / n_tokens
        return nn.functional.cross_entropy(emissions.float()[mask], tags[mask], reduction="sum") / n_tokens

    def token_probs(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Each token's probability of each tag (B, T, K): with a CRF the marginals p(y_t = k | sentence), by
        forward-backward done as the gradient of log Z with respect to the emissions (exact, and the forward
        algorithm already here is all it needs); without one the softmax. Padding rows are not meaningful."""
        if self.crf is None:
            return emissions.float().softmax(-1)
        with torch.enable_grad():
            scores = emissions.detach().float().requires_grad_()
            (marginals,) = torch.autograd.grad(self.crf.log_partition(scores, mask).sum(), scores)
        return marginals

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        if self.crf is not None:
            return self.crf.viterbi(emissions, mask)
        return emissions.argmax(-1) * mask


def layer_count(num_layers: int) -> int:
    """The tagger's numbered layers: the input features, then one per BiLSTM layer."""
    return num_layers + 1


def build(*, regimen: Regimen, num_words: int, num_chars: int, num_tags: int, word_dim: int = 100,
          case_dim: int = 8, char: str = "cnn", char_dim: int = 50, char_hidden: int = 100, hidden: int = 300,
          num_layers: int = 1, crf: bool = True, init: str = "default") -> BiLSTMTagger:
    everything = tuple(range(1, layer_count(num_layers) + 1))
    placement = regimen.place(layer_count(num_layers), default_norm=everything, default_dropout=everything)
    model = BiLSTMTagger(num_words, num_chars, num_tags, word_dim=word_dim, case_dim=case_dim, char=char,
                         char_dim=char_dim, char_hidden=char_hidden, hidden=hidden, num_layers=num_layers, crf=crf,
                         placement=placement)
    init_weights(model, init, "tanh")
    return model


# What this model supports (regbench.models.Capabilities): the tasks whose Task.inputs are "token_sequences",
# and regularizer.stochastic_depth not (no residual blocks).
INPUTS = "token_sequences"
RESIDUAL_BLOCKS = False


def validate_config(cfg: DictConfig, regimen: Regimen) -> None:
    checks.choice(cfg, "model.init", INITS)
    checks.choice(cfg, "model.char", ("cnn", "lstm", "none"))
    checks.boolean(cfg, "model.crf")
    checks.boolean(cfg, "model.lowercase")
    checks.number(cfg, "model.num_layers", low=1, high=2, integer=True)
    for key in ("word_dim", "hidden", "char_dim", "char_hidden"):
        checks.number(cfg, f"model.{key}", low=1, integer=True)
    checks.number(cfg, "model.case_dim", low=0, integer=True)
    checks.number(cfg, "model.singleton_unk", low=0, high=1)
    n_layers = layer_count(cfg.model.num_layers)
    regimen.check_layers(n_layers, f"bilstm: 1 = input features, 2..{n_layers} = BiLSTM layers")
    if regimen.label_smoothing and cfg.model.crf:
        raise ConfigError(f"regularizer.label_smoothing={regimen.label_smoothing:g} needs the tagger's softmax output: "
                          "the CRF scores whole tag sequences and has no per-token targets to smooth; add "
                          "model.crf=false, or set regularizer.label_smoothing=0")
