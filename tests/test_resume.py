"""Resume and skip: run ids, exact resumption after an interruption, reuse of finished runs, refusal of
a foreign checkpoint (in-process, real training on tiny data)."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from conftest import tiny_overrides
from regbench import resume, runner
from regbench.results import read_metrics

EXTRA = ("regularizer=bn_dropout", "trainer.max_epochs=3", "augment=standard", "optimizer=adam")
TIMES = ("train_time_s", "eval_time_s")


@pytest.fixture
def make_cfg(compose_cfg, tiny_data_dir, tmp_path):
    def _make(*extra: str, outputs: str = "outputs"):
        overrides = [o for o in tiny_overrides(tiny_data_dir, tmp_path / "cache", *EXTRA, *extra)
                     if not o.startswith("paths.output_dir=")]
        return compose_cfg(*overrides, f"paths.output_dir={tmp_path / outputs}")
    return _make


def test_run_id_ignores_cosmetic_keys_only(make_cfg, tmp_path):
    base = resume.run_id(make_cfg())
    assert resume.run_id(make_cfg("trainer.progress=true", "trainer.resume=false", "trainer.threads=1",
                                  outputs="elsewhere")) == base
    assert resume.run_id(make_cfg("seed=1")) != base
    assert resume.run_id(make_cfg("optimizer.lr=0.002")) != base


def _interrupt_during(epoch: int, monkeypatch):
    """Deliver a 'signal' at the start of `epoch`, as the SIGTERM handler would."""
    original = runner.Run.train_epoch

    def train_epoch(self, loop, e):
        if e == epoch:
            self.stop_signal = 15
        return original(self, loop, e)
    monkeypatch.setattr(runner.Run, "train_epoch", train_epoch)


def _metrics_of(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=[c for c in history.columns if c in TIMES])


def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result(make_cfg, tmp_path, monkeypatch):
    reference = runner.run(make_cfg(outputs="reference-outputs"), tmp_path / "reference")  # its own index

    cfg = make_cfg("trainer.resume=true")
    with monkeypatch.context() as patch:
        _interrupt_during(3, patch)
        with pytest.raises(runner.RunInterrupted):
            runner.run(cfg, tmp_path / "first")
    stopped = read_metrics(tmp_path / "first")
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"] and stopped["epochs_run"] == 2
    checkpoint = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["run_id"] == reference["run_id"]

    # The same command again, into a new sweep directory: found through the index, resumed after epoch 2.
    resumed = runner.run(cfg, tmp_path / "second")
    assert resumed["status"] == "completed" and "after epoch 2" in resumed["resumed_from"]
    for split in ("train", "val", "test"):
        assert resumed[split] == reference[split]
    assert resumed["best_epoch"] == reference["best_epoch"]
    pd.testing.assert_frame_equal(_metrics_of(pd.read_csv(tmp_path / "second" / "history.csv")),
                                  _metrics_of(pd.read_csv(tmp_path / "reference" / "history.csv")))
    assert not (tmp_path / "second" / "checkpoints" / "last.pt").exists()  # a finished run frees it
    assert (tmp_path / "second" / "checkpoints" / "best.pt").is_file()


def test_a_finished_run_is_reused_and_resume_false_trains_again(make_cfg, tmp_path, monkeypatch):
    first = runner.run(make_cfg(), tmp_path / "a")
    calls = []
    monkeypatch.setattr(runner.Run, "_train", lambda self: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    again = runner.run(make_cfg(), tmp_path / "b")
    assert not calls and again["reused_from"] == str(tmp_path / "a") and again["test"] == first["test"]
    assert read_metrics(tmp_path / "b")["test"] == first["test"]
    assert (tmp_path / "b" / "history.csv").read_bytes() == (tmp_path / "a" / "history.csv").read_bytes()
    in_place = runner.run(make_cfg(), tmp_path / "a")  # the same directory: nothing is rewritten
    assert in_place["started_at"] == first["started_at"]
    monkeypatch.undo()
    fresh = runner.run(make_cfg("trainer.resume=false"), tmp_path / "c")
    assert fresh["reused_from"] is None and fresh["resumed_from"] is None and fresh["test"] == first["test"]


def test_a_checkpoint_of_another_configuration_is_refused(make_cfg, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _interrupt_during(2, patch)
        with pytest.raises(runner.RunInterrupted):
            runner.run(make_cfg(), tmp_path / "a")
    other = tmp_path / "b"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.pt", other / "checkpoints" / "last.pt")
    with pytest.raises(resume.CheckpointError, match="written by another configuration"):
        runner.run(make_cfg("seed=1"), other)
    record = read_metrics(other)
    assert record["status"] == "failed" and "another configuration" in record["error"]


def test_a_corrupt_checkpoint_gets_a_message(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(resume.CheckpointError, match="cannot be read as a regbench checkpoint"):
        resume.load_checkpoint(path, "abc")


def test_checkpoint_every_spaces_out_last_pt(make_cfg, tmp_path, monkeypatch):
    saved = []
    original = runner.Run._save_last
    monkeypatch.setattr(runner.Run, "_save_last", lambda self, loop, progress: saved.append(progress.epoch) or
                        original(self, loop, progress))
    runner.run(make_cfg("trainer.checkpoint_every=2", "trainer.max_epochs=5"), tmp_path / "a")
    assert saved == [2, 4]
    saved.clear()
    runner.run(make_cfg("trainer.checkpoint_every=0", "trainer.max_epochs=2", "seed=3"), tmp_path / "b")
    assert saved == []


def test_a_data_generator_state_from_another_device_kind_is_not_applied(caplog):
    """A GPU run's checkpoint resumed on a CPU: the data-order generator's state does not convert, so the
    run goes on from its seed with a warning instead of failing (torch would refuse the state)."""
    saved = resume.rng_state(torch.Generator().manual_seed(1))
    assert saved["data_device"] == "cpu"
    here = torch.Generator().manual_seed(2)
    expected = torch.Generator().manual_seed(2).get_state()
    saved.update(data=torch.zeros(16, dtype=torch.uint8), data_device="cuda")  # a CUDA generator's state
    resume.restore_rng(saved, here)
    assert torch.equal(here.get_state(), expected)
    assert "data-order generator was on cuda, this run's is on cpu" in caplog.text
    old = resume.rng_state(torch.Generator().manual_seed(3))
    del old["data_device"]  # a checkpoint written before the key existed came from a CPU generator
    resume.restore_rng(old, here)
    assert torch.equal(here.get_state(), torch.Generator().manual_seed(3).get_state())


def test_cuda_rng_states_from_a_machine_with_another_number_of_gpus(caplog):
    """A checkpoint written on 8 GPUs and resumed on 1 (or the reverse) must not ask for devices that do
    not exist: the states of the devices both machines have are restored, and a warning says so."""
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]
    assert resume.cuda_states_to_restore(states, 1) == [(0, states[0])]
    assert "CUDA RNG states of 8 GPUs, this machine has 1" in caplog.text
    assert resume.cuda_states_to_restore(states[:1], 4) == [(0, states[0])]
    caplog.clear()
    assert resume.cuda_states_to_restore(states[:2], 2) == [(0, states[0]), (1, states[1])]
    assert caplog.text == ""
