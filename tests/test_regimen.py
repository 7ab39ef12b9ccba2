"""The Regimen: selectors parsed once, placements handed to models, and a model that skips a selected
layer refused with one line."""
from __future__ import annotations

import pytest
from torch import nn

from regbench.errors import ConfigError
from regbench.regimen import LayerSelector, Regimen, format_layers
from regbench.validation import validate


def regimen(compose_cfg, *overrides: str) -> Regimen:
    return Regimen.from_config(compose_cfg(*overrides))


def test_a_placement_builds_the_modules_of_the_selected_layers_only(compose_cfg):
    placement = regimen(compose_cfg, "regularizer=bn_dropout", "regularizer.norm.layers=first:2",
                        "regularizer.dropout.layers=[3]").place(3)
    assert isinstance(placement.norm(1, 8), nn.BatchNorm2d) and isinstance(placement.norm(2, 8, dims=1), nn.BatchNorm1d)
    assert isinstance(placement.norm(3, 8), nn.Identity)
    assert isinstance(placement.dropout(1), nn.Identity) and placement.dropout(3).p == 0.5
    assert placement.norm_layers == (1, 2) and placement.dropout_layers == (3,)


def test_default_layers_are_the_models_own(compose_cfg):
    placement = regimen(compose_cfg, "regularizer=dropout").place(9, default_dropout=(3, 6))
    assert placement.dropout_layers == (3, 6) and placement.norm_layers == ()


def test_a_model_that_skips_a_selected_layer_is_refused(compose_cfg):
    bn = regimen(compose_cfg, "regularizer=bn")
    placement = bn.place(3)
    placement.norm(1, 4)
    placement.norm(2, 4)
    with pytest.raises(ConfigError, match=r"^regularizer=bn selects layers 1-3 for BatchNorm, but the model "
                                          r"placed BatchNorm only on layers 1-2$"):
        bn.check_placed()
    ignored = regimen(compose_cfg, "regularizer=dropout", "regularizer.dropout.layers=all")
    ignored.place(3)
    with pytest.raises(ConfigError, match="placed dropout on none of them"):
        ignored.check_placed()
    with pytest.raises(ConfigError, match=r"never asked the regimen where to put them \(regimen.place"):
        regimen(compose_cfg, "regularizer=bn").check_placed()
    regimen(compose_cfg, "regularizer=none").check_placed()  # nothing selected: any model will do


@pytest.mark.parametrize("selector", ["[12]", "first:20", "last:10", "from:10"])
def test_a_selector_past_the_models_layers_is_refused_whatever_its_form(compose_cfg, selector):
    with pytest.raises(ConfigError, match=r"regularizer.dropout.layers=.* reaches past the model's layers: it has "
                                          r"layers 1..9 \(cnn13"):
        validate(compose_cfg("regularizer=dropout", f"regularizer.dropout.layers={selector}"), machine=False)


def test_selectors_parse_every_form_and_name_the_key_when_malformed():
    assert LayerSelector.parse("k", "first:3").select(5) == (1, 2, 3)
    assert LayerSelector.parse("k", "last:2").select(5) == (4, 5)
    assert LayerSelector.parse("k", "from:4").select(5) == (4, 5)
    assert LayerSelector.parse("k", [5, 1, 1]).select(5) == (1, 5)
    assert LayerSelector.parse("k", "none").select(5) == () and LayerSelector.parse("k", "all").select(2) == (1, 2)
    with pytest.raises(ConfigError, match=r"^regularizer.norm.layers='firsts:2' is invalid: unknown layer selector"):
        LayerSelector.parse("regularizer.norm.layers", "firsts:2")
    assert format_layers((1, 2, 3, 5, 7, 8)) == "1-3, 5, 7-8"


def test_popularity_refuses_a_regimen_it_cannot_apply(compose_cfg):
    with pytest.raises(ConfigError, match="model=popularity trains nothing, so regularizer=bn would change nothing"):
        validate(compose_cfg("task=movielens", "model=popularity", "regularizer=bn"), machine=False)
    validate(compose_cfg("task=movielens", "model=popularity", "regularizer=none"), machine=False)
