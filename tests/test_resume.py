"""Resume and skip: run ids, exact resumption after an interruption, reuse of finished runs, refusal of
a foreign checkpoint (in-process, real training on tiny data, a real SIGTERM)."""
from __future__ import annotations

import os
import shutil
import signal

import pandas as pd
import pytest
import torch

from regbench import checkpoints, runner
from regbench.record import read_metrics

EXTRA = ("regularizer=bn_dropout", "trainer.max_epochs=3", "augment=standard", "optimizer=adam")
TIMES = ("train_time_s", "eval_time_s")


@pytest.fixture
def make_cfg(small_cfg, tmp_path):
    def _make(*extra: str, outputs: str = "outputs"):
        return small_cfg("cifar10", *EXTRA, *extra, f"paths.output_dir={tmp_path / outputs}")
    return _make


def test_run_id_ignores_cosmetic_keys_only(make_cfg, tmp_path):
    base = checkpoints.run_id(make_cfg())
    assert checkpoints.run_id(make_cfg("trainer.progress=true", "trainer.resume=false", "trainer.threads=1",
                                       outputs="elsewhere")) == base
    assert checkpoints.run_id(make_cfg("seed=1")) != base
    assert checkpoints.run_id(make_cfg("optimizer.lr=0.002")) != base


class SignalledRun(runner.Run):
    """A run that sends itself SIGTERM when epoch `after` has finished, as `kill` would: the handler asks
    the loop to stop, which it does at the first step of the next epoch."""

    def __init__(self, cfg, run_dir, after: int, prune=None) -> None:
        super().__init__(cfg, run_dir, prune=prune)
        self.after = after

    def on_epoch_end(self, state) -> None:
        super().on_epoch_end(state)
        if state.epoch == self.after:
            os.kill(os.getpid(), signal.SIGTERM)


def interrupted_run(cfg, run_dir, after: int) -> dict:
    with pytest.raises(runner.RunInterrupted):
        SignalledRun(cfg, run_dir, after).execute()
    return read_metrics(run_dir)


def _metrics_of(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=[c for c in history.columns if c in TIMES])


def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result(make_cfg, tmp_path):
    reference = runner.run(make_cfg(outputs="reference-outputs"), tmp_path / "reference")  # its own index

    cfg = make_cfg("trainer.resume=true")
    interrupted_run(cfg, tmp_path / "first", after=2)
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


def test_a_signal_in_a_runs_last_step_stops_the_next_run_before_it_starts(make_cfg, tmp_path):
    """SIGTERM after the last epoch: nothing is left to stop, so the run completes; the process must still
    stop, not go on to its next run (a sweep's next job, a tune worker's next trial: seen 2026-12-06)."""
    done = SignalledRun(make_cfg(), tmp_path / "last", after=3).execute()  # EXTRA: three epochs
    assert done["status"] == "completed" and done["epochs_run"] == 3
    with pytest.raises(runner.RunInterrupted, match=r"stopped by SIGTERM before the run in .*next started; "
                                                    r"run the same command again to train it"):
        runner.run(make_cfg("seed=1"), tmp_path / "next")
    assert not (tmp_path / "next").exists()  # it never started: no record
    assert runner.run(make_cfg("seed=1"), tmp_path / "next")["status"] == "completed"  # the stop was heeded once


def test_a_finished_run_is_reused_and_resume_false_trains_again(make_cfg, tmp_path):
    first = runner.run(make_cfg(), tmp_path / "a")
    again = runner.run(make_cfg(), tmp_path / "b")
    assert again["reused_from"] == str(tmp_path / "a") and again["test"] == first["test"]
    assert read_metrics(tmp_path / "b")["test"] == first["test"]
    assert (tmp_path / "b" / "history.csv").read_bytes() == (tmp_path / "a" / "history.csv").read_bytes()
    in_place = runner.run(make_cfg(), tmp_path / "a")  # the same directory: nothing is rewritten
    assert in_place["started_at"] == first["started_at"]
    fresh = runner.run(make_cfg("trainer.resume=false"), tmp_path / "c")
    assert fresh["reused_from"] is None and fresh["resumed_from"] is None and fresh["test"] == first["test"]


def test_a_checkpoint_of_another_configuration_is_refused(make_cfg, tmp_path):
    interrupted_run(make_cfg(), tmp_path / "a", after=1)
    other = tmp_path / "b"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.pt", other / "checkpoints" / "last.pt")
    with pytest.raises(checkpoints.CheckpointError, match="written by another configuration"):
        runner.run(make_cfg("seed=1"), other)
    record = read_metrics(other)
    assert record["status"] == "failed" and "another configuration" in record["error"]


def test_a_corrupt_checkpoint_gets_a_message(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="cannot be read as a regbench checkpoint"):
        checkpoints.load_last(path, "abc")


def test_checkpoint_every_spaces_out_last_pt(make_cfg, tmp_path):
    """checkpoint_every=2: stopped during epoch 4, the run keeps epoch 2's state, not epoch 3's; 0 keeps none."""
    interrupted_run(make_cfg("trainer.checkpoint_every=2", "trainer.max_epochs=5"), tmp_path / "a", after=3)
    assert torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    interrupted_run(make_cfg("trainer.checkpoint_every=0", "trainer.max_epochs=5", "seed=3"), tmp_path / "b", after=2)
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()


def test_a_data_generator_state_from_another_device_kind_is_not_applied(caplog):
    """A GPU run's checkpoint resumed on a CPU: the data-order generator's state does not convert, so the
    run goes on from its seed with a warning instead of failing (torch would refuse the state)."""
    saved = checkpoints.rng_state(torch.Generator().manual_seed(1))
    assert saved["data_device"] == "cpu"
    here = torch.Generator().manual_seed(2)
    expected = torch.Generator().manual_seed(2).get_state()
    saved.update(data=torch.zeros(16, dtype=torch.uint8), data_device="cuda")  # a CUDA generator's state
    checkpoints.restore_rng(saved, here)
    assert torch.equal(here.get_state(), expected)
    assert "data-order generator was on cuda, this run's is on cpu" in caplog.text
    old = checkpoints.rng_state(torch.Generator().manual_seed(3))
    del old["data_device"]  # a checkpoint written before the key existed came from a CPU generator
    checkpoints.restore_rng(old, here)
    assert torch.equal(here.get_state(), torch.Generator().manual_seed(3).get_state())


def test_cuda_rng_states_from_a_machine_with_another_number_of_gpus(caplog):
    """A checkpoint written on 8 GPUs and resumed on 1 (or the reverse) must not ask for devices that do
    not exist: the states of the devices both machines have are restored, and a warning says so."""
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]
    assert checkpoints.cuda_states_to_restore(states, 1) == [(0, states[0])]
    assert "CUDA RNG states of 8 GPUs, this machine has 1" in caplog.text
    assert checkpoints.cuda_states_to_restore(states[:1], 4) == [(0, states[0])]
    caplog.clear()
    assert checkpoints.cuda_states_to_restore(states[:2], 2) == [(0, states[0]), (1, states[1])]
    assert caplog.text == ""


def test_a_reused_run_holds_every_file_the_original_wrote(make_cfg, tmp_path):
    """Until 2026-12-05 a reused run's directory held metrics.json and history.csv only: ensemble refused
    it, the reliability diagram left it out, and its best model was not there."""
    runner.run(make_cfg(), tmp_path / "a")
    runner.run(make_cfg(), tmp_path / "b")
    original = {p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert {"test_outputs.npz", "checkpoints/best.pt", "history.csv", "metrics.json"} <= original
    for name in original - {"metrics.json"}:
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_a_reused_run_without_test_outputs_says_which_key_writes_them(make_cfg, tmp_path, caplog):
    """The original never wrote test_outputs.npz: the reuse says so, and ensemble's advice is one that works
    (trainer.test_outputs=true alone would reuse the run again)."""
    from regbench.ensemble import ensemble
    from regbench.errors import RegbenchError

    runner.run(make_cfg("trainer.test_outputs=false"), tmp_path / "a")
    with caplog.at_level("WARNING"):
        runner.run(make_cfg(), tmp_path / "b")
    assert not (tmp_path / "b" / "test_outputs.npz").exists()
    assert "trainer.resume=false" in caplog.text and "test_outputs.npz" in caplog.text
    with pytest.raises(RegbenchError, match="trainer.resume=false"):
        ensemble([str(tmp_path / "b")])
    again = runner.run(make_cfg("trainer.resume=false"), tmp_path / "c")  # the advice, followed
    assert again["reused_from"] is None and (tmp_path / "c" / "test_outputs.npz").is_file()
