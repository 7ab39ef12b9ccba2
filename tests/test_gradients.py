"""Gradient diagnostics: per-layer and global norms against norms computed by hand, and the flags."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import tiny_overrides
from regbench import runner
from regbench.gradients import LAYER_MAX_PREFIX, LAYER_MEAN_PREFIX, GradientMonitor, Thresholds, layer_names


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _set_grads(model: nn.Module, scale: float) -> None:
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, scale * (i + 1))


def test_layer_names_follow_the_owning_modules_in_order():
    assert layer_names(_model()) == ["0", "2"]


def test_per_layer_and_global_norms_match_a_hand_computation():
    model = _model()
    monitor = GradientMonitor(model, torch.device("cpu"), Thresholds(1e-5, 100.0))
    monitor.start_epoch(2)
    steps = []
    for scale in (1.0, 3.0):
        _set_grads(model, scale)
        # layer 0: weight 12 elements of scale*1, bias 4 of scale*2; layer 2: weight 8 of scale*3, bias 2 of scale*4
        layer0 = math.sqrt(12 * scale**2 + 4 * (2 * scale) ** 2)
        layer2 = math.sqrt(8 * (3 * scale) ** 2 + 2 * (4 * scale) ** 2)
        total = monitor.observe()
        assert total.item() == pytest.approx(math.hypot(layer0, layer2), rel=1e-6)
        steps.append((layer0, layer2, math.hypot(layer0, layer2)))
    summary = monitor.epoch_summary()
    assert summary[f"{LAYER_MEAN_PREFIX}0"] == pytest.approx((steps[0][0] + steps[1][0]) / 2, rel=1e-6)
    assert summary[f"{LAYER_MAX_PREFIX}2"] == pytest.approx(steps[1][1], rel=1e-6)
    assert summary["grad_norm_mean"] == pytest.approx((steps[0][2] + steps[1][2]) / 2, rel=1e-6)
    assert summary["grad_norm_min"] == pytest.approx(steps[0][2], rel=1e-6)
    assert summary["grad_vanishing"] == 0 and summary["grad_exploding"] == 0 and summary["grad_exploding_rate"] == 0


def test_vanishing_and_exploding_flags():
    model = _model()
    monitor = GradientMonitor(model, torch.device("cpu"), Thresholds(vanishing_below=1e-3, exploding_above=10.0))
    monitor.start_epoch(4)
    for scale in (1e-6, 1e-6, 100.0, float("nan")):
        _set_grads(model, scale)
        monitor.observe()
    summary = monitor.epoch_summary()
    # two of four steps are above 10 or not finite; no layer's epoch mean is tiny (the big steps dominate)
    assert summary["grad_exploding_rate"] == 0.5 and summary["grad_exploding"] == 1

    monitor.start_epoch(2)
    for _ in range(2):
        _set_grads(model, 1e-6)
        monitor.observe()
    summary = monitor.epoch_summary()
    assert summary["grad_vanishing_layers"] == 2 and summary["grad_vanishing"] == 1


def test_a_parameter_without_a_gradient_counts_as_zero():
    model = _model()
    monitor = GradientMonitor(model, torch.device("cpu"), Thresholds(1e-5, 100.0))
    monitor.start_epoch(1)
    _set_grads(model, 1.0)
    model[2].bias.grad = None
    assert monitor.observe().item() == pytest.approx(math.sqrt(12 + 16 + 72), rel=1e-6)


def test_history_has_the_per_layer_columns(compose_cfg, tiny_data_dir, tmp_path):
    cfg = compose_cfg(*tiny_overrides(tiny_data_dir, tmp_path / "cache", "regularizer=bn", "trainer.max_epochs=2"))
    record, run_dir = runner.run(cfg, tmp_path / "run"), tmp_path / "run"
    history = pd.read_csv(run_dir / "history.csv")
    layer_columns = [c for c in history.columns if c.startswith(LAYER_MEAN_PREFIX)]
    assert len(layer_columns) >= 9  # the 9 conv layers at least, plus the classifier
    assert (history[layer_columns] > 0).all().all()
    for column in ("grad_vanishing", "grad_exploding", "grad_exploding_rate", "grad_vanishing_layers"):
        assert column in history.columns
    assert set(record["gradients"]) == {"norm_max", "clip_rate", "vanishing_epochs", "exploding_epochs"}
