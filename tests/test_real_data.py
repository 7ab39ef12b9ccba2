"""Slow: a width-scaled CNN-13 on a few thousand real CIFAR-10 images from ../shared/data."""
from __future__ import annotations

import pytest

from conftest import SHARED_DATA
from regbench import runner
from regbench.validation import validate

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED_DATA / "cifar10" / "cifar10-jpeg.tar").is_file(),
                                 reason="../shared/data/cifar10 is absent")]


def test_scaled_cnn13_beats_chance_on_real_cifar10(compose_cfg, tmp_path):
    cfg = compose_cfg(f"paths.data_dir={SHARED_DATA}", f"paths.cache_dir={tmp_path / 'cache'}", "regularizer=bn",
                      "model.width=0.25", "data.limit_train=2000", "data.val_size=1000", "data.limit_eval=1000",
                      "data.train_eval_size=500", "trainer.max_epochs=2", "trainer.batch_size=64",
                      "trainer.progress=false", "trainer.device=cpu")
    validate(cfg)
    record = runner.run(cfg, tmp_path / "run")
    assert record["status"] == "completed"
    assert record["data"]["n_train"] == 2000 and record["data"]["source"].startswith("imagefolder")
    # Chance is 0.10; 2 epochs on 2,000 images reach 0.32 (seed 0, 2026-12-06; 3 epochs on 3,000 reach
    # about 0.4, and took twice as long in the suite).
    assert record["test"]["accuracy"] > 0.25
