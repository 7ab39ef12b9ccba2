"""Cost figures: FLOPs against analytic counts (the LSTM included), latency, sizes."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from regbench import complexity


class SmallBiLSTM(nn.Module):
    def __init__(self, vocab=50, emb=12, hidden=7, layers=2, tags=5, packed=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * hidden, tags)
        self.packed = packed

    def forward(self, words):
        x = self.embed(words)
        if self.packed:
            x = pack_padded_sequence(x, torch.tensor([words.shape[1]]), batch_first=True)
            x, _ = self.lstm(x)
            x = torch.nn.utils.rnn.pad_packed_sequence(x, batch_first=True)[0]
        else:
            x, _ = self.lstm(x)
        return self.out(x)


@pytest.mark.parametrize("packed", [False, True])
def test_bilstm_flops_equal_the_analytic_count(packed):
    T, emb, hidden, tags = 9, 12, 7, 5
    model = SmallBiLSTM(emb=emb, hidden=hidden, tags=tags, packed=packed)
    # per token and direction, 4 gates each multiply [x; h] by a (4h x (in + h)) matrix: 2 FLOPs per multiply-add
    layer1 = 2 * 4 * hidden * (emb + hidden) * T * 2
    layer2 = 2 * 4 * hidden * (2 * hidden + hidden) * T * 2
    linear = 2 * (2 * hidden) * tags * T
    assert complexity.forward_flops(model, torch.randint(0, 50, (1, T))) == layer1 + layer2 + linear


def test_an_lstm_is_counted_once_even_where_the_flop_counter_sees_its_matmuls():
    # On the meta device PyTorch decomposes the LSTM into matmuls that FlopCounterMode counts itself.
    model = SmallBiLSTM().to("meta")
    words = torch.zeros(1, 9, dtype=torch.long, device="meta")
    cpu = complexity.forward_flops(SmallBiLSTM(), torch.zeros(1, 9, dtype=torch.long))
    assert complexity.forward_flops(model, words) == cpu


def test_latency_is_a_median_of_at_least_three_timed_passes():
    model = nn.Linear(8, 8)
    batch = complexity.repeat_batch(torch.randn(1, 8), 16)
    assert batch.shape == (16, 8)
    seconds, repeats = complexity.inference_latency(model, batch, torch.device("cpu"),
                                                    torch.autocast("cpu", enabled=False), repeats=5, max_seconds=0.0)
    assert seconds > 0 and repeats == 3  # the time budget is spent at once, but three passes are always timed
    assert complexity.inference_latency(model, batch, torch.device("cpu"), torch.autocast("cpu", enabled=False),
                                        repeats=0) == (None, 0)


def test_sizes_and_trainable_parameters():
    model = nn.Linear(10, 3)
    model.bias.requires_grad_(False)
    assert complexity.count_parameters(model) == 33 and complexity.count_parameters(model, trainable_only=True) == 30
    assert complexity.state_size_bytes(model) > 33 * 4


def test_the_latency_batch_keeps_the_layout_the_run_uses():
    """On a GPU the CIFAR-10 task feeds channels_last batches: latency must be timed on that layout,
    not on a contiguous NCHW copy of it."""
    example = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    batch = complexity.repeat_batch(example, 8)
    assert batch.shape == (8, 3, 32, 32) and batch.is_contiguous(memory_format=torch.channels_last)
    assert not batch.is_contiguous() and torch.equal(batch[5], example[0])
    plain = complexity.repeat_batch(example.contiguous(), 8)
    assert plain.is_contiguous() and torch.equal(plain, batch)
    words, lengths = complexity.repeat_batch((torch.arange(4)[None], torch.tensor([4])), 3)
    assert words.shape == (3, 4) and words.is_contiguous() and lengths.tolist() == [4, 4, 4]
