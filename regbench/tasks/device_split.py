"""One split of variable-length token sequences stored flat on the run's device, so that a batch is a few
gathers there (DeviceSplit). The tagging tasks use it; a task of tokens of its own can too: it takes
any list of `Encoded` sentences (regbench.data.vocabulary) and yields padded batches with the masks
and lengths a packed LSTM needs."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from regbench.data.vocabulary import PAD, Encoded


class DeviceSplit:
    """One split's encoded sentences as flat tensors on the run's device, so that a batch is a few
    gathers there: no per-batch collation on the host and no host-to-device copy per step (a blocking
    copy that makes the host wait for the GPU). Sentence and word lengths stay on the host as well:
    sizing a batch and packing the LSTM's input need them there."""

    def __init__(self, encoded: list[Encoded], device: torch.device) -> None:
        self.device = device
        self.lengths = np.array([len(e.words) for e in encoded], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        word_lengths = [(e.chars != PAD).sum(1) for e in encoded]
        self.word_lengths = np.concatenate(word_lengths).astype(np.int64)  # characters of every token
        self.longest_word = np.array([int(n.max()) for n in word_lengths], dtype=np.int64)
        char_starts = np.concatenate([[0], np.cumsum(self.word_lengths)[:-1]]).astype(np.int64)

        def on_device(values: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(values)).to(device)

        self.words = on_device(np.concatenate([e.words for e in encoded]).astype(np.int64))
        self.case = on_device(np.concatenate([e.case for e in encoded]).astype(np.int64))
        self.tags = on_device(np.concatenate([e.tags for e in encoded]).astype(np.int64))
        # Characters back to back (no padding to the longest word in the corpus, which one long URL
        # would blow up), found through each token's start and length.
        self.chars = on_device(np.concatenate([e.chars[e.chars != PAD] for e in encoded]).astype(np.int64))
        self.char_starts, self.char_counts = on_device(char_starts), on_device(self.word_lengths)
        self.sentence_starts, self.sentence_lengths = on_device(self.starts), on_device(self.lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def longest_first(self, rows: np.ndarray) -> np.ndarray:
        """The model packs a batch fastest (no reordering on the device) with its sentences longest first."""
        return rows[np.argsort(-self.lengths[rows], kind="stable")]

    def batches(self, groups: list[np.ndarray]) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
        """(rows, batch) for each group of sentence indices, its rows longest first. The indices of all
        groups go to the device in one copy (one per epoch), not one per batch."""
        ordered = [self.longest_first(rows) for rows in groups]
        flat = np.concatenate(ordered) if ordered else np.zeros(0, np.int64)
        device_rows = torch.from_numpy(flat.astype(np.int64)).to(self.device)
        offset = 0
        for rows in ordered:
            yield rows, self._batch(rows, device_rows[offset:offset + len(rows)])
            offset += len(rows)

    def _batch(self, rows: np.ndarray, device_rows: Tensor) -> dict[str, Tensor]:
        """Sentences `rows` (longest first; `device_rows` is the same on the device) padded into one batch."""
        t = int(self.lengths[rows].max())
        width = max(1, int(self.longest_word[rows].max()))
        steps = torch.arange(t, device=self.device)
        mask = steps < self.sentence_lengths[device_rows][:, None]
        token = torch.where(mask, self.sentence_starts[device_rows][:, None] + steps, 0)  # into the flat arrays
        letters = torch.arange(width, device=self.device)
        in_word = (letters < self.char_counts[token][..., None]) & mask[..., None]
        char_at = torch.where(in_word, self.char_starts[token][..., None] + letters, 0)
        # The same lengths on the host, for packing: a gather over a few hundred integers.
        host_steps = np.arange(t)
        host_mask = host_steps < self.lengths[rows][:, None]
        host_token = np.where(host_mask, self.starts[rows][:, None] + host_steps, 0)
        return {"words": self.words[token].masked_fill(~mask, PAD),
                "chars": self.chars[char_at].masked_fill(~in_word, PAD),
                "case": self.case[token].masked_fill(~mask, PAD), "tags": self.tags[token].masked_fill(~mask, PAD),
                "mask": mask, "lengths": torch.from_numpy(self.lengths[rows]),
                "char_lengths": torch.from_numpy(np.where(host_mask, self.word_lengths[host_token], 0))}
