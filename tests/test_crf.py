"""CRF against brute force: Viterbi is the argmax and log Z is the log-sum-exp over every tag sequence."""
from __future__ import annotations

import itertools

import pytest
import torch

from regbench.models.crf import CRF


def brute_force(crf: CRF, emissions: torch.Tensor, length: int) -> tuple[float, list[int], torch.Tensor]:
    """(log Z, best sequence, scores of all sequences) for one sequence of `length` tokens."""
    k = crf.num_tags
    scores, sequences = [], []
    for seq in itertools.product(range(k), repeat=length):
        s = crf.start[seq[0]] + emissions[0, seq[0]]
        for t in range(1, length):
            s = s + crf.transitions[seq[t - 1], seq[t]] + emissions[t, seq[t]]
        s = s + crf.end[seq[-1]]
        scores.append(s)
        sequences.append(list(seq))
    scores_t = torch.stack(scores)
    return torch.logsumexp(scores_t, 0).item(), sequences[int(scores_t.argmax())], scores_t


@pytest.mark.parametrize("seed", range(5))
def test_viterbi_and_partition_match_brute_force(seed):
    torch.manual_seed(seed)
    k, t_max = 3, 5
    crf = CRF(k)
    with torch.no_grad():  # larger than the init range so the cases are not near-uniform
        for p in crf.parameters():
            p.normal_(0, 1)
    lengths = torch.tensor([5, 3, 1, 4])
    mask = torch.arange(t_max)[None, :] < lengths[:, None]
    emissions = torch.randn(len(lengths), t_max, k) * 2
    log_z = crf.log_partition(emissions, mask)
    best = crf.viterbi(emissions, mask)
    for b, n in enumerate(lengths.tolist()):
        expected_z, expected_best, all_scores = brute_force(crf, emissions[b], n)
        assert log_z[b].item() == pytest.approx(expected_z, abs=1e-4)
        assert best[b, :n].tolist() == expected_best
        assert best[b, n:].eq(0).all()
        # The score of any one sequence matches its brute-force score, padding ignored.
        tags = torch.zeros(1, t_max, dtype=torch.long)
        tags[0, :n] = torch.tensor(expected_best)
        score = crf.score(emissions[b:b + 1], tags, mask[b:b + 1])
        assert score.item() == pytest.approx(all_scores.max().item(), abs=1e-4)


def test_nll_is_a_proper_negative_log_probability():
    torch.manual_seed(0)
    crf = CRF(2)
    emissions = torch.randn(1, 3, 2)
    mask = torch.ones(1, 3, dtype=torch.bool)
    total = sum(torch.exp(-crf.nll(emissions, torch.tensor([seq]), mask)).item()
                for seq in itertools.product(range(2), repeat=3))
    assert total == pytest.approx(1.0, abs=1e-5)
