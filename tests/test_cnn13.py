"""CNN-13: the reference parameter count, output shape, FLOPs, and where each regularizer puts BN/Dropout."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from regbench import complexity
from regbench.models import build_model, cnn13
from regbench.regimen import Regimen


def build(compose_cfg, *overrides: str) -> cnn13.CNN13:
    """CNN-13 as a run builds it: the model._target_ factory, the regimen resolved from the same config."""
    cfg = compose_cfg(*overrides)
    return build_model(cfg, Regimen.from_config(cfg), num_classes=10, in_channels=3)


def layer_names(model: nn.Module) -> list[str]:
    return list(model.features._modules)


def test_parameter_count_matches_the_reference(compose_cfg):
    assert complexity.count_parameters(build(compose_cfg, "regularizer=bn")) == 3_123_850
    # Without BN: minus 2 x (128*3 + 256*3 + 512 + 256 + 128) = 4,096 scale/shift parameters.
    assert complexity.count_parameters(build(compose_cfg, "regularizer=none")) == 3_123_850 - 4_096


def test_output_shape_and_flops(compose_cfg):
    model = build(compose_cfg, "regularizer=bn_dropout").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    flops = complexity.forward_flops(model, torch.randn(1, 3, 32, 32))
    # 2 x multiply-adds of the 9 convs + linear: 1.4628 GFLOPs (the "about 1.46 GFLOPs" of the literature).
    assert flops == pytest.approx(1.4628e9, rel=1e-3)


def test_width_scales_channels(compose_cfg):
    model = build(compose_cfg, "model.width=0.25")
    assert model.features.conv1.out_channels == 32 and model.features.conv7.out_channels == 128
    assert model.classifier.in_features == 32


@pytest.mark.parametrize("regularizer,n_bn,n_dropout", [
    ("none", 0, 0), ("bn", 9, 0), ("dropout", 0, 2), ("bn_dropout", 9, 2), ("bn_dropout_gc", 9, 2)])
def test_each_regimen_puts_bn_and_dropout_where_its_spec_says(compose_cfg, regularizer, n_bn, n_dropout):
    model = build(compose_cfg, f"regularizer={regularizer}")
    names = layer_names(model)
    bns = [n for n in names if n.startswith("bn")]
    drops = [n for n in names if n.startswith("drop")]
    assert len(bns) == n_bn and len(drops) == n_dropout
    for bn in bns:  # BN sits right after its conv, before the activation
        i = bn[2:]
        assert names.index(bn) == names.index(f"conv{i}") + 1 and names.index(f"act{i}") == names.index(bn) + 1
    if n_dropout:  # default dropout: right after each of the two pooling stages
        assert drops == ["drop3", "drop6"]
        assert names[names.index("pool3") + 1] == "drop3" and names[names.index("pool6") + 1] == "drop6"
        assert all(m.p == 0.5 for m in model.modules() if isinstance(m, nn.Dropout))


def test_bn_on_first_five_dropout_on_the_rest(compose_cfg):
    model = build(compose_cfg, "regularizer=bn_dropout", "regularizer.norm.layers=first:5",
                  "regularizer.dropout.layers=from:6", "regularizer.dropout.p=0.3")
    names = layer_names(model)
    assert [n for n in names if n.startswith("bn")] == [f"bn{i}" for i in range(1, 6)]
    assert [n for n in names if n.startswith("drop")] == [f"drop{i}" for i in range(6, 10)]
    # Dropout follows the activation (and the pool after conv6).
    assert names[names.index("act7") + 1] == "drop7" and names[names.index("pool6") + 1] == "drop6"
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}


def test_explicit_layer_lists(compose_cfg):
    model = build(compose_cfg, "regularizer=bn", "regularizer.norm.layers=[2,9]")
    assert [n for n in layer_names(model) if n.startswith("bn")] == ["bn2", "bn9"]
    model = build(compose_cfg, "regularizer=bn", "regularizer.norm.layers=last:2")
    assert [n for n in layer_names(model) if n.startswith("bn")] == ["bn8", "bn9"]


@pytest.mark.parametrize("activation,kind", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("tanh", nn.Tanh),
                                             ("gelu", nn.GELU)])
def test_activations(compose_cfg, activation, kind):
    model = build(compose_cfg, f"model.activation={activation}", "model.width=0.125")
    acts = [m for n, m in model.features.named_children() if n.startswith("act")]
    assert len(acts) == 9 and all(isinstance(a, kind) for a in acts)
    if activation == "leaky_relu":
        assert acts[0].negative_slope == 0.1


@pytest.mark.parametrize("init", ["default", "kaiming", "xavier", "orthogonal"])
def test_inits_are_seeded_and_distinct(compose_cfg, init):
    torch.manual_seed(0)
    a = build(compose_cfg, f"model.init={init}", "model.width=0.125")
    torch.manual_seed(0)
    b = build(compose_cfg, f"model.init={init}", "model.width=0.125")
    assert torch.equal(a.features.conv2.weight, b.features.conv2.weight)
    if init != "default":
        torch.manual_seed(0)
        default = build(compose_cfg, "model.init=default", "model.width=0.125")
        assert not torch.allclose(a.features.conv2.weight, default.features.conv2.weight)
        assert torch.count_nonzero(a.features.conv2.bias) == 0
