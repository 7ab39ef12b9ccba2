"""Pruning and int8 weight quantization of the best model: the fraction really zeroed, pruning at 0
changing nothing, the int8 model's size and rounding, and the results in the record, results.csv and
compare."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from regbench import compare, runner
from regbench.compression import compressible, int8_weights, pruned, zeroed_fraction
from regbench.errors import ConfigError
from regbench.validation import validate
from regbench.runs import load_runs


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def test_global_pruning_zeroes_the_smallest_fraction_of_all_weights_together():
    m = model()
    weights = torch.cat([getattr(mod, name).detach().flatten().abs() for mod, name in compressible(m)])
    p = pruned(m, 0.5)
    assert zeroed_fraction(p) == pytest.approx(0.5, abs=1 / len(weights))
    threshold = weights.kthvalue(len(weights) // 2).values
    for (mod, name), (orig, _) in zip(compressible(p), compressible(m)):
        kept = getattr(mod, name) != 0
        assert (getattr(orig, name).abs()[kept] >= threshold).all()  # only the smallest were cut
    assert all(b is not None for b in [p[2].bias, p[3].weight]) and torch.equal(p[2].bias, m[2].bias)
    assert zeroed_fraction(m) == 0  # the model itself is untouched
    same = pruned(m, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), m.state_dict().values()))


def test_int8_rounds_each_output_channel_to_127_levels_and_counts_one_byte_per_weight():
    m = model()
    q, size = int8_weights(m)
    for (mod, name), (orig, _) in zip(compressible(q), compressible(m)):
        w, w0 = getattr(mod, name).detach(), getattr(orig, name).detach()
        for row, row0 in zip(w, w0):
            scale = row0.abs().max() / 127
            assert torch.allclose(row / scale, (row / scale).round(), atol=1e-4)  # on the int8 grid
            assert (row - row0).abs().max() <= scale / 2 + 1e-7
    n_weights = sum(getattr(mod, name).numel() for mod, name in compressible(m))
    n_channels = sum(getattr(mod, name).shape[0] for mod, name in compressible(m))
    others = sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers())) - 4 * n_weights
    assert size == n_weights + 4 * n_channels + others


def test_a_run_records_compressed_metrics_that_compare_aggregates(small_cfg, tmp_path):
    record = runner.run(small_cfg("cifar10", "regularizer=bn", "trainer.compression.prune=[0,0.9]",
                                  "trainer.compression.int8=true"), tmp_path / "run")
    compression = record["compression"]
    assert set(compression) == {"prune@0", "prune@0.9", "int8"}
    assert compression["prune@0"]["accuracy"] == record["test"]["accuracy"]  # pruning at 0 changes nothing
    assert compression["prune@0.9"]["zeroed"] == pytest.approx(0.9, abs=1e-3)
    assert 0 < compression["int8"]["size_bytes"] < record["model_size_bytes"]
    runs = load_runs([tmp_path / "run"])
    assert runs.loc[0, "compression.prune@0.9.accuracy"] == compression["prune@0.9"]["accuracy"]
    result = compare.compare([tmp_path / "run"], metric="compression.int8.accuracy")
    assert result.summary.loc[0, "mean"] == compression["int8"]["accuracy"]


@pytest.mark.parametrize("value", ["[1.0]", "[-0.1]", "0.5", "[abc]"])
def test_a_fraction_outside_0_1_is_one_line(compose_cfg, value):
    with pytest.raises(ConfigError, match=r"trainer.compression.prune=.* is invalid: give a list of fractions in "
                                          r"\[0, 1\)"):
        validate(compose_cfg(f"trainer.compression.prune={value}"), machine=False)
