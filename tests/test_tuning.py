"""`regbench tune`, the fair protocol, on Optuna with a real SQLite database and real tiny MovieLens runs:
the same budget per regimen, selection on validation, final runs on fresh seeds, a search that continues
after its process died, pruned trials, and bad input as one line."""
from __future__ import annotations

import json
import math

import pytest

from regbench import runner
from regbench.cli import tuning_score
from regbench.preflight import merge_overrides

optuna = pytest.importorskip("optuna", reason="needs pip install 'regbench[optuna]'")

STUDY = "movielens-two_tower-adam"


@pytest.fixture
def tune_args(tiny_ml_dir, tmp_path):
    def _args(*tune: str) -> list[str]:
        return merge_overrides(["task=movielens", f"data.dir={tiny_ml_dir}", "data.download=false",
                                "trainer.max_epochs=2", "trainer.batch_size=64", "trainer.progress=false",
                                "trainer.device=cpu", f"paths.output_dir={tmp_path / 'outputs'}",
                                "tune.regimens=[none,dropout]", "tune.trials=3", "tune.final_seeds=[0,1]",
                                f"tune.dir={tmp_path / 'tune'}"], tune)
    return _args


def studies(tmp_path) -> dict:
    url = f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}"
    return {r: optuna.load_study(study_name=f"{STUDY}.{r}", storage=url) for r in ("none", "dropout")}


def test_each_regimen_gets_the_same_budget_is_selected_on_validation_and_rerun_on_fresh_seeds(tune_args, tmp_path,
                                                                                              capsys, caplog):
    from regbench.tune import tune_main

    with caplog.at_level("INFO", logger="regbench.tune"):
        assert tune_main(tune_args()) == 0
    progress = [r.getMessage() for r in caplog.records if r.getMessage().endswith("in all)")]
    assert len(progress) == 6 and progress[0].endswith("(1 of 3 for none; 1 of 6 in all)")
    assert progress[-1].endswith("(3 of 3 for dropout; 6 of 6 in all)")  # the regimen furthest behind goes next
    found = studies(tmp_path)
    for regimen, study in found.items():
        trials = study.get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3
        for trial in trials:
            record = json.loads((tmp_path / "tune" / "trials" / regimen / f"{trial.number:04d}" /
                                 "metrics.json").read_text())
            assert trial.value == record["val"]["ndcg@10"]  # the validation metric, never the test one
            assert record["seed"] == 100 and record["regularizer"] == regimen
            assert float(record["overrides"]["optimizer.lr"]) == trial.params["optimizer.lr"]
            assert 5e-3 / 10 ** 1.5 <= trial.params["optimizer.lr"] <= 5e-3 * 10 ** 1.5
    assert "regularizer.dropout.p" in found["dropout"].trials[0].params  # its own key, where it reads it
    assert "regularizer.dropout.p" not in found["none"].trials[0].params
    # the same seeded sampler: both searches start at the same learning rate and weight decay
    assert found["none"].trials[0].params["optimizer.lr"] == found["dropout"].trials[0].params["optimizer.lr"]
    tuned = json.loads((tmp_path / "tune" / "tuned.json").read_text())
    for regimen, study in found.items():
        assert tuned["best"][regimen]["params"] == study.best_trial.params
        for seed in (0, 1):
            final = json.loads((tmp_path / "tune" / "final" / regimen / f"s{seed}" / "metrics.json").read_text())
            assert final["seed"] == seed and final["status"] == "completed"
            assert float(final["config"]["optimizer"]["lr"]) == study.best_trial.params["optimizer.lr"]
    summary = (tmp_path / "tune" / "summary.md").read_text()
    assert "dropout" in summary and "none" in summary
    assert "Tuned protocol" in capsys.readouterr().out

    # The whole budget is spent: the same command runs no trial; a larger budget adds only what is new.
    assert tune_main(tune_args()) == 0
    assert [len(s.get_trials()) for s in studies(tmp_path).values()] == [3, 3]
    assert tune_main(tune_args("tune.trials=4")) == 0
    assert [len(s.get_trials()) for s in studies(tmp_path).values()] == [4, 4]


def test_a_trial_left_running_by_a_dead_process_runs_again_and_counts_once(tune_args, tmp_path):
    from regbench.tune import tune_main

    assert tune_main(tune_args("tune.trials=1")) == 0
    study = studies(tmp_path)["none"]
    stale = study.ask()  # as a process killed mid-trial leaves it: RUNNING, its run unfinished
    params = {"optimizer.lr": stale.suggest_float("optimizer.lr", 1e-4, 0.1, log=True),
              "optimizer.weight_decay": stale.suggest_float("optimizer.weight_decay", 1e-6, 1e-2, log=True)}
    assert tune_main(tune_args("tune.trials=2")) == 0
    trials = studies(tmp_path)["none"].get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == params  # the same point, run again; the budget counts it once
    assert len(studies(tmp_path)["dropout"].get_trials()) == 2


def test_a_crashed_trial_stops_the_tune_is_queued_again_and_never_counts(tune_args, tmp_path, monkeypatch):
    """A crash (a bug, the machine) says nothing about the trial's point: before, every later trial crashed too
    and the whole budget was spent on failures in seconds, leaving a study "finished" with nothing in it."""
    from regbench.tune import tune_main
    from regbench.tune_studies import TrialCrashed

    real_run, calls = runner.run, []

    def crashing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("a bug in the user's code")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(runner, "run", crashing_once)
    with pytest.raises(TrialCrashed, match=r"trial 0 of study .*\.dropout crashed: ValueError: a bug in the user's code "
                                           r"\(its record: .*\). It is queued again and does not count") as crash:
        tune_main(tune_args("tune.trials=2"))
    assert crash.value.exit_code == 1 and len(calls) == 2  # the worker stopped at the crash
    crashed = studies(tmp_path)["dropout"].get_trials()
    assert [t.state.name for t in crashed] == ["FAIL", "WAITING"] and crashed[0].system_attrs["regbench_requeued"]
    monkeypatch.setattr(runner, "run", real_run)
    assert tune_main(tune_args("tune.trials=2")) == 0
    for regimen, study in studies(tmp_path).items():
        states = [t.state.name for t in study.get_trials()]
        assert states.count("COMPLETE") == 2, (regimen, states)  # exactly the budget, the crash not counted
    again = studies(tmp_path)["dropout"].get_trials()
    assert again[1].params == crashed[0].params  # the crashed point ran again
    rows = (tmp_path / "tune" / "trials.csv").read_text()
    assert ",requeued," in rows


def test_sigterm_in_a_trials_last_step_stops_the_worker_before_its_next_trial(tune_args, tmp_path, monkeypatch):
    """SIGTERM as a trial's last epoch ends: the trial completes and counts, and the worker asks for no other
    (in the CPU study a worker went on to the next trial after the session's SIGTERM, 2026-12-06)."""
    from test_resume import SignalledRun  # sends itself SIGTERM after the given epoch

    from regbench.tune import tune_main
    from regbench.tune_studies import TrialInterrupted

    real_run, calls = runner.run, []

    def signalled_in_the_first_trials_last_epoch(cfg, run_dir, overrides=None, threads=None, in_sweep=False,
                                                 prune=None):
        calls.append(run_dir)
        if len(calls) == 1:
            return SignalledRun(cfg, run_dir, after=int(cfg.trainer.max_epochs), prune=prune).execute()
        return real_run(cfg, run_dir, overrides, threads, in_sweep, prune)

    monkeypatch.setattr(runner, "run", signalled_in_the_first_trials_last_epoch)
    with pytest.raises(TrialInterrupted, match="stopped by SIGTERM as a trial finished: no trial is running; run "
                                               "the same command to continue") as stop:
        tune_main(tune_args())
    assert stop.value.exit_code == 143 and len(calls) == 1
    assert [t.state.name for t in studies(tmp_path)["none"].get_trials()] == ["COMPLETE"]
    assert studies(tmp_path)["dropout"].get_trials() == []  # no next trial was asked for
    monkeypatch.setattr(runner, "run", real_run)
    assert tune_main(tune_args()) == 0  # the same command continues
    assert [len(s.get_trials()) for s in studies(tmp_path).values()] == [3, 3]


@pytest.fixture
def remembering_sigterm():
    """This process as a tune worker process is: SIGTERM between two runs is remembered (remember_stops)."""
    import signal

    from regbench.signals import heed_stop, remember_stops

    previous = signal.getsignal(signal.SIGTERM)
    remember_stops()
    yield
    signal.signal(signal.SIGTERM, previous)
    heed_stop()


def test_sigterm_just_after_a_worker_is_given_a_trial_queues_that_trial_again(tune_args, tmp_path, monkeypatch,
                                                                             remembering_sigterm):
    """SIGTERM between a trial's choice and its run's start: the worker does not die with the trial RUNNING
    in the storage (a worker ended at once did, seen in CI on 2026-12-07); the run does not start, the
    trial is failed and queued again, and the same command continues."""
    import os
    import signal

    from regbench.tune import tune_main
    from regbench.tune_studies import REQUEUED_ATTR, TrialInterrupted

    real_run, calls = runner.run, []

    def signalled_before_the_second_run(cfg, run_dir, overrides=None, threads=None, in_sweep=False, prune=None):
        calls.append(run_dir)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trial is RUNNING in the storage by now
        return real_run(cfg, run_dir, overrides, threads, in_sweep, prune)

    monkeypatch.setattr(runner, "run", signalled_before_the_second_run)
    with pytest.raises(TrialInterrupted, match=r"stopped by SIGTERM before the run in .* started: trial 0 of study "
                                               r".*\.dropout is queued again and does not count") as stop:
        tune_main(tune_args())
    assert stop.value.exit_code == 143 and len(calls) == 2
    assert not (calls[1] / "metrics.json").exists()  # it never started
    assert [t.state.name for t in studies(tmp_path)["none"].get_trials()] == ["COMPLETE"]
    [given, queued] = studies(tmp_path)["dropout"].get_trials()
    assert given.state.name == "FAIL" and given.system_attrs[REQUEUED_ATTR]
    assert queued.state.name == "WAITING" and queued.system_attrs["fixed_params"] == given.params
    monkeypatch.setattr(runner, "run", real_run)
    assert tune_main(tune_args()) == 0  # the same command continues
    assert [sum(t.state.name == "COMPLETE" for t in s.get_trials()) for s in studies(tmp_path).values()] == [3, 3]


def test_sigterm_while_a_run_is_being_built_stops_it_before_its_first_step(small_cfg, tmp_path, monkeypatch,
                                                                          remembering_sigterm):
    """Remembered while the run was building its model and data (before its own handler was set): the run
    stops before its first step, its record says so, and nothing trains."""
    import os
    import signal

    real_build = runner.Run._build

    def build_then_signal(self, regimen):
        built = real_build(self, regimen)
        os.kill(os.getpid(), signal.SIGTERM)
        return built

    monkeypatch.setattr(runner.Run, "_build", build_then_signal)
    with pytest.raises(runner.RunInterrupted, match="stopped by SIGTERM during epoch 1"):
        runner.run(small_cfg("movielens", "trainer.max_epochs=2"), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["epochs_run"] == 0


def test_a_pruned_run_is_recorded_as_pruned_and_never_tested(small_cfg, tmp_path, caplog):
    cfg = small_cfg("movielens", "trainer.max_epochs=3")
    seen = []
    with caplog.at_level("INFO"):
        record = runner.run(cfg, tmp_path / "run", prune=lambda epoch, score: seen.append((epoch, score)) or epoch >= 2)
    assert record["status"] == "pruned" and record["epochs_run"] == 2 and record["test"] == {}
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("pruned after epoch 2 (val ndcg@10 ") for line in lines)
    assert not any("early stopping" in line for line in lines)  # it once said "no better val ... for 0 epochs"
    assert [e for e, _ in seen] == [1, 2] and all(math.isfinite(s) for _, s in seen)
    again = runner.run(cfg, tmp_path / "again", prune=lambda epoch, score: False)  # the tuner reuses it
    assert again["status"] == "pruned" and again["reused_from"] == str(tmp_path / "run")
    full = runner.run(cfg, tmp_path / "full")  # anyone else trains the configuration in full
    assert full["status"] == "completed" and full["reused_from"] is None and full["epochs_run"] == 3


def test_asha_prunes_trials_through_the_command_and_pruned_ones_count_but_are_never_chosen(tune_args, tmp_path):
    """tune.pruner=asha (the CPU study's pruner): trials stop after an epoch through the loop's hook, their
    records say `pruned` and were never tested, they count against the budget, and the final runs use a
    completed trial."""
    import pandas as pd

    from regbench.tune import tune_main

    assert tune_main(tune_args("tune.regimens=[none]", "tune.trials=6", "tune.pruner=asha", "trainer.max_epochs=4",
                               "tune.final_seeds=[0]")) == 0
    study = optuna.load_study(study_name=f"{STUDY}.none", storage=f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}")
    states = [t.state.name for t in study.get_trials()]
    assert len(states) == 6 and "PRUNED" in states and "COMPLETE" in states
    # Every trial, the first included, files its epoch-1 score at the first rung (epoch 1) and competes there:
    # with Optuna's automatic minimum resource the first trial filed none and the second was always promoted.
    for trial in study.get_trials():
        assert trial.system_attrs["completed_rung_0"] == trial.intermediate_values[1], trial.number
    for trial in study.get_trials():
        record = json.loads((tmp_path / "tune" / "trials" / "none" / f"{trial.number:04d}" / "metrics.json").read_text())
        if trial.state.name == "PRUNED":
            assert record["status"] == "pruned" and record["epochs_run"] < 4 and record["test"] == {}
            assert sorted(trial.intermediate_values) == list(range(1, record["epochs_run"] + 1))
        else:
            assert record["status"] == "completed" and record["epochs_run"] == 4
    assert set(pd.read_csv(tmp_path / "tune" / "trials.csv")["state"]) == {"pruned", "complete"}
    final = json.loads((tmp_path / "tune" / "final" / "none" / "s0" / "metrics.json").read_text())
    assert float(final["config"]["optimizer"]["lr"]) == study.best_trial.params["optimizer.lr"]
    assert study.best_trial.state.name == "COMPLETE"


def test_a_resumed_trial_tells_asha_its_restored_epochs_so_each_rung_gets_that_epochs_value(small_cfg, tmp_path):
    """A trial stopped after epoch 2 and queued again resumes from its checkpoint in a new trial, which
    reports epochs 1 and 2 from the restored history before epoch 3: ASHA's rung at epoch 1 holds the
    epoch-1 score (it once held the first live epoch's, a later and higher one that pruned other trials)."""
    cfg = small_cfg("movielens", "trainer.max_epochs=3", "trainer.resume=true")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=2))

    def pruner_of(trial):
        return lambda epoch, score: trial.report(score, epoch) or trial.should_prune()

    from test_resume import SignalledRun  # sends itself SIGTERM after epoch 2, as a session's end does

    stopped = study.ask()
    with pytest.raises(runner.RunInterrupted):
        SignalledRun(cfg, tmp_path / "0000", after=2, prune=pruner_of(stopped)).execute()
    again = study.ask()  # the same point queued again: its run resumes after epoch 2
    record = runner.run(cfg, tmp_path / "0001", prune=pruner_of(again))
    assert "after epoch 2" in record["resumed_from"] and record["status"] == "completed"
    stopped, again = (study.get_trials()[t.number] for t in (stopped, again))
    assert sorted(stopped.intermediate_values) == [1, 2] and sorted(again.intermediate_values) == [1, 2, 3]
    assert {s: again.intermediate_values[s] for s in (1, 2)} == stopped.intermediate_values  # as first seen
    assert again.system_attrs["completed_rung_0"] == again.intermediate_values[1]
    assert again.system_attrs["completed_rung_1"] == again.intermediate_values[2]


@pytest.mark.parametrize("tune, message", [
    (["tune.space={}", "tune.conditional=false"], "tune.space is empty and tune.conditional=false: there is nothing"),
    (["tune.space.optimizer.weight_decay.low=1"], "tune.space.optimizer.weight_decay: low=1 is not below high=0.01"),
    (["tune.space.optimizer.weight_decay.low=0"], "a log range must stay above 0 (low=0)"),
    (["tune.regimens=[none,bn]", "+tune.space.regularizer.dropout.p={low:0.1,high:0.5}"],
     "tune.space.regularizer.dropout.p: none of tune.regimens (none, bn) reads regularizer.dropout.p"),
    (["tune.storage=postgresql://nobody@127.0.0.1:9/none"], "tune.storage=postgresql://nobody@127.0.0.1:9/none: cannot"),
    (["tune.final_seeds=[100,1]"], "tune.final_seeds=[100, 1] holds tune.trial_seed=100"),
    (["tune.pruner=hyperband"], "tune.pruner=hyperband: choose one of none, median, asha"),
    (["tune.launcher=k8s"], "tune.launcher=k8s: choose one of local, slurm"),
    (["tune.trial=3"], "there is no key 'tune.trial' in tune's configuration"),
    (["tune.fixed=[/nowhere/sweep]"], "tune.fixed: /nowhere/sweep does not exist"),
    (["tune.fixed=[]"], "tune.fixed=[]: give a list of folders or results.csv files"),
    # what does not compose is worded as the run command words it, naming the override at fault
    (["tune.regimens=[none,bogus]"], "tune.regimens: regularizer=bogus: no such option; choose one of bn, bn_dropout"),
    (["model=bogus"], "model=bogus: no such option; choose one of bilstm, cnn13"),
])
def test_bad_input_is_one_line_and_exit_2(tune, message, tune_args, tmp_path, monkeypatch, capsys):
    import sys

    from regbench import cli

    monkeypatch.setattr(sys, "argv", ["regbench", "tune", *tune_args(*tune)])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("regbench tune: error: ")


def test_a_study_name_reused_with_another_space_is_refused(tune_args, tmp_path, capsys):
    from regbench.errors import ConfigError
    from regbench.tune import tune_main

    assert tune_main(tune_args("tune.trials=1")) == 0
    with pytest.raises(ConfigError, match="was made for another task, model or space"):
        tune_main(tune_args("tune.trials=1", "tune.space.optimizer.weight_decay.high=0.1"))


def test_tune_help_explains_the_command_and_lists_every_key_with_its_default(capsys):
    from importlib.resources import files

    import yaml

    from regbench.cli import _tune

    assert _tune(["task=movielens", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: regbench tune [OVERRIDE ...] [tune.KEY=VALUE ...]") and "docs/tuning.md" in out
    listed = yaml.safe_load(out.split("(conf/tune/default.yaml):\n", 1)[1])  # the keys as YAML, comments and all
    assert listed == yaml.safe_load(files("regbench.conf").joinpath("tune", "default.yaml").read_text())
    assert listed["trials"] == 16 and listed["pruner"] == "none"


def test_hydra_sweeper_tune_points_to_regbench_tune(monkeypatch, capsys):
    import sys

    from regbench import cli

    monkeypatch.setattr(sys, "argv", ["regbench", "-m", "hydra/sweeper=tune", "task=movielens"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2 and "use `regbench tune`" in capsys.readouterr().err


def test_the_score_a_tuner_maximises():
    record = {"status": "completed", "primary_metric": "f1", "higher_is_better": True, "val": {"f1": 0.8},
              "test": {"f1": 0.9}}
    assert tuning_score(record) == 0.8
    assert tuning_score({**record, "higher_is_better": False}) == -0.8
    assert math.isnan(tuning_score({**record, "status": "diverged"}))  # Optuna: a failed trial, not a crash
    assert tuning_score({**record, "val": {}}) is None


def test_the_progress_line_counts_finished_trials_and_names_running_ones_apart():
    """With two workers the budget counts a running trial (so no worker exceeds it), but the line says how
    many are done: it once said "60 of 60 in all" while the last trial still had 5 epochs to train."""
    import optuna
    from optuna.trial import TrialState

    from regbench.tune_studies import REQUEUED_ATTR, progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {name: optuna.create_study(direction="maximize") for name in ("none", "bn")}
    studies["none"].tell(studies["none"].ask(), 0.5)
    studies["none"].tell(studies["none"].ask(), state=TrialState.PRUNED)
    studies["bn"].tell(studies["bn"].ask(), 0.7)
    studies["bn"].ask()  # a worker is training it
    requeued = studies["bn"].ask()  # its worker died: failed, queued again, not counted
    requeued.storage.set_trial_system_attr(requeued._trial_id, REQUEUED_ATTR, True)
    studies["bn"].tell(requeued, state=TrialState.FAIL)
    assert progress(studies, "none", 3) == "2 of 3 for none; 3 of 6 in all, 1 running"
    assert progress(studies, "bn", 3) == "1 of 3 for bn; 3 of 6 in all, 1 running"
    studies["bn"].tell(studies["bn"].ask(), state=TrialState.FAIL)  # diverged: failed for a reason of its own
    assert progress(studies, "bn", 3) == "2 of 3 for bn; 4 of 6 in all, 1 running"


def test_asha_ranks_a_requeued_trials_copy_against_the_others_not_against_its_interrupted_self(tune_args, tmp_path):
    """A trial stopped by a session's end is failed and queued again, but it keeps the scores it filed at
    ASHA's rungs. Where its checkpoint was lost its copy trains again from epoch 1 and scores a little
    differently; ranked against its interrupted self it was pruned (the CPU study's CIFAR-10 search:
    bn_dropout trial 5, 0.2915 at epoch 1 against its copy's 0.318 and a peer's 0.263). The studies that
    `regbench tune` opens leave requeued trials out of the pruner's peers."""
    from optuna.trial import TrialState

    from regbench.tune import split_command_line
    from regbench.tune_space import plans, tune_config
    from regbench.tune_studies import REQUEUED_ATTR, open_studies, storage_url

    run_overrides, tune_overrides = split_command_line(tune_args("tune.pruner=asha"))
    tune = tune_config(tune_overrides)
    plans_ = plans(run_overrides, tune)
    (tmp_path / "tune").mkdir()
    study = open_studies(tune, plans_, storage_url(tune, tmp_path / "tune"))["dropout"]

    def epoch_one(study, score: float):
        trial = study.ask()
        trial.report(score, 1)
        return trial, trial.should_prune()

    def copy_pruned(study) -> bool:
        peer, pruned = epoch_one(study, 0.263)
        assert not pruned  # the first at its rung goes on
        study.tell(peer, 0.727)
        interrupted, pruned = epoch_one(study, 0.318)
        assert not pruned
        study._storage.set_trial_system_attr(interrupted._trial_id, REQUEUED_ATTR, True)  # as tune does on SIGTERM
        study.tell(interrupted, state=TrialState.FAIL)
        assert "completed_rung_0" in study.get_trials()[interrupted.number].system_attrs  # its score stays filed
        return epoch_one(study, 0.2915)[1]

    assert not copy_pruned(study)  # it beats its one peer, 0.263
    assert epoch_one(study, 0.2)[1]  # the others are still ranked
    plain = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    assert copy_pruned(plain)  # Optuna's pruner alone ranks it against 0.318


@pytest.mark.integration
def test_two_workers_and_a_sigkilled_search_keep_exactly_the_budget(tune_args, tmp_path, cli_env):
    """Two worker processes share the budget without exceeding it; a search killed with SIGKILL mid-trial
    continues with the same command: no lost or duplicated trial, the interrupted one run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "regbench", "tune", *tune_args("tune.trials=3", "tune.workers=2",
                                                                 "trainer.max_epochs=30")]
    process = subprocess.Popen(args, env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + 300
    while not list((tmp_path / "tune" / "trials").glob("*/*/checkpoints/last.pt")):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = subprocess.run(args, env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "queued again" in result.stderr
    for study in studies(tmp_path).values():
        states = [t.state.name for t in study.get_trials()]
        assert states.count("COMPLETE") == 3 and set(states) <= {"COMPLETE", "FAIL"}
        failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
        assert all(t.system_attrs.get("regbench_requeued") for t in failed)
        assert {tuple(sorted(t.params.items())) for t in failed} <= \
            {tuple(sorted(t.params.items())) for t in study.get_trials() if t.state.name == "COMPLETE"}
        completed = [tuple(sorted(t.params.items())) for t in study.get_trials() if t.state.name == "COMPLETE"]
        assert len(set(completed)) == 3  # the two workers never ran the same point
    # The final runs train two at a time too, each on its share of the CPUs, as the workers did.
    finals = [json.loads(p.read_text()) for p in (tmp_path / "tune" / "final").glob("*/s*/metrics.json")]
    assert len(finals) == 4 and {(r["status"], r["threads"]) for r in finals} == {("completed", 1)}


WORKER_BETWEEN_RUNS = """
import os, signal, sys, threading, time
from pathlib import Path

from regbench.tune import TrialInterrupted, run_in_processes


def killed_between_runs(ready):
    from tqdm.auto import tqdm

    for _ in tqdm(range(2), disable=True):  # an epoch's bar, as the training loop makes one
        pass
    # Ended at once, as a worker is by SIGKILL (the kernel's OOM killer) or by a signal before it set its
    # handler (a worker remembers SIGTERM between runs: test_sigterm_just_after_a_worker_is_given_a_trial...)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    Path(ready).touch()
    time.sleep(120)


def between_runs(ready):
    from regbench.signals import heed_stop

    Path(ready).touch()
    deadline = time.time() + 60
    while time.time() < deadline:  # no run in progress: the SIGTERM passed on is remembered, not fatal
        stop = heed_stop()
        if stop is not None:  # the check a worker makes before its next trial or run
            Path(ready + ".stopped").write_text(str(stop))
            return
        time.sleep(0.05)


def signal_when_ready(files):
    while not all(Path(f).exists() for f in files):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    target, files = globals()[sys.argv[1]], sys.argv[2:]
    threading.Thread(target=signal_when_ready, args=(files,), daemon=True).start()
    try:
        run_in_processes(target, [(f,) for f in files])
    except TrialInterrupted as err:
        print(f"regbench tune: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
"""


@pytest.mark.integration
def test_workers_ended_at_once_leave_no_semaphore_for_the_resource_tracker(tmp_path):
    """A worker ended at once exits without Python's clean-up; tqdm's default lock (a multiprocessing
    semaphore) then outlived it and the resource tracker warned of a leak after the command's
    last line (seen in CI on 2026-12-07). The error stays the last line of stderr."""
    import signal

    done = workers_signalled(tmp_path, "killed_between_runs")
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "leaked" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("regbench tune: error: stopped by SIGTERM: "), done.stderr


def workers_signalled(tmp_path, target: str):
    """The command's process, signalled (SIGTERM) once both workers have run `target` up to their point."""
    import subprocess
    import sys

    script = tmp_path / "workers.py"
    script.write_text(WORKER_BETWEEN_RUNS)
    return subprocess.run([sys.executable, str(script), target, str(tmp_path / "w0"), str(tmp_path / "w1")],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_a_worker_between_runs_remembers_sigterm_and_stops_at_its_next_check(tmp_path):
    """SIGTERM passed on to a worker that is between two runs: it is not ended at once (which left a trial
    it had just been given RUNNING in the storage, seen in CI on 2026-12-07) but stops at its next check."""
    import signal

    done = workers_signalled(tmp_path, "between_runs")
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    for worker in ("w0", "w1"):
        assert (tmp_path / f"{worker}.stopped").read_text() == str(int(signal.SIGTERM))
    assert done.stderr.strip().splitlines()[-1].startswith("regbench tune: error: stopped by SIGTERM: "), done.stderr


def live_processes_in_group(pgid: int) -> list[str]:
    """The processes of a process group that still run (not zombies: this machine's init may reap late)."""
    from pathlib import Path

    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(stat.parent.name)
    return live


@pytest.mark.integration
@pytest.mark.parametrize("signame, to_group", [("SIGINT", True), ("SIGTERM", False)], ids=["ctrl-c", "kill-pid"])
def test_a_search_stopped_by_ctrl_c_or_sigterm_ends_in_one_line_and_leaves_no_worker(signame, to_group, tune_args,
                                                                                    tmp_path, cli_env):
    """Ctrl-C (SIGINT to the whole process group) or `kill PID` (SIGTERM to the command alone) during a
    two-worker search: the command passes it on to its workers, which stop after their step and queue their
    trial again; it ends with one line and exit code 128 + the signal, and no worker is left running (before
    2026-12-06 the command hung on its pool, or died and left its workers training)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sig = getattr(signal, signame)
    args = [sys.executable, "-m", "regbench", "tune", *tune_args("tune.trials=3", "tune.workers=2",
                                                                 "trainer.max_epochs=30")]
    process = subprocess.Popen(args, env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    deadline = time.time() + 300
    while len(list((tmp_path / "tune" / "trials").glob("*/*/checkpoints/last.pt"))) < 2:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    (os.killpg if to_group else os.kill)(process.pid, sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"regbench tune: error: stopped by {signame}: "), err[-3000:]
    assert "leaked" not in err, err[-3000:]  # no worker left a semaphore for the resource tracker
    time.sleep(1)
    assert live_processes_in_group(process.pid) == []  # nothing of the command is left (zombies aside)
    for study in studies(tmp_path).values():
        trials = study.get_trials()
        assert not [t for t in trials if t.state.name == "RUNNING"]
        for trial in (t for t in trials if t.state.name == "FAIL"):
            assert trial.system_attrs.get("regbench_requeued")  # queued again, not counted
            run = tmp_path / "tune" / "trials" / study.study_name.rsplit(".", 1)[1] / f"{trial.number:04d}"
            if not (run / "metrics.json").exists():
                continue  # given to its worker just before the signal: its run never started
            record = json.loads((run / "metrics.json").read_text())
            assert record["status"] == "interrupted"
            if record["epochs_run"]:
                assert (run / "checkpoints" / "last.pt").is_file()  # the queued trial resumes from here
        assert any(t.state.name == "FAIL" for t in trials)


def test_the_budget_curve_sensitivity_plot_and_fixed_against_tuned_are_written(tune_args, tmp_path, capsys,
                                                                                 caplog):
    """The fixed protocol's runs of the same grid (the same command at the task's defaults, on the final
    seeds) are found through the run index, and each regimen's tuned-minus-fixed difference is paired."""
    import pandas as pd

    from regbench.preflight import compose_config
    from regbench.tune import tune_main

    fixed = {}
    base = [a for a in tune_args() if not a.startswith("tune.")]
    for regimen in ("none", "dropout"):
        for seed in (0, 1):
            record = runner.run(compose_config([*base, f"regularizer={regimen}", f"seed={seed}"]),
                                tmp_path / "fixed" / regimen / str(seed))
            fixed[(regimen, seed)] = record["test"]["ndcg@10"]
    assert tune_main(tune_args()) == 0
    folder = tmp_path / "tune"
    for name in ("trials.csv", "plots/budget_curve.png", "plots/lr_sensitivity.svg", "protocols.csv"):
        assert (folder / name).is_file(), name
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 6 and set(trials["state"]) == {"complete"}
    protocols = pd.read_csv(folder / "protocols.csv").set_index("regimen")
    for regimen in ("none", "dropout"):
        before = (fixed[(regimen, 0)] + fixed[(regimen, 1)]) / 2
        assert protocols.loc[regimen, "fixed"] == pytest.approx(before)
        assert protocols.loc[regimen, "tuned_minus_fixed"] == pytest.approx(protocols.loc[regimen, "tuned"] - before)
    assert "Fixed protocol (the task's defaults, same seeds) against tuned" in capsys.readouterr().out

    # Fixed runs that the run index does not hold (another machine's, docs/results'): tune.fixed names them.
    # Here copies of the same records, their metric moved by 0.01, so the table shows which it read.
    import json
    import shutil

    shutil.copytree(tmp_path / "fixed", tmp_path / "elsewhere")
    for path in (tmp_path / "elsewhere").rglob("metrics.json"):
        record = json.loads(path.read_text())
        record["test"]["ndcg@10"] += 0.01
        record["run_id"] = "f" + record["run_id"][1:]  # not the index's runs: only tune.fixed finds them
        path.write_text(json.dumps(record))
    assert tune_main(tune_args(f"tune.fixed=[{tmp_path / 'elsewhere'}]")) == 0  # trials and finals are reused
    protocols = pd.read_csv(folder / "protocols.csv").set_index("regimen")
    for regimen in ("none", "dropout"):
        before = (fixed[(regimen, 0)] + fixed[(regimen, 1)]) / 2 + 0.01
        assert protocols.loc[regimen, "fixed"] == pytest.approx(before)

    # A regimen that lacks a fixed run on a final seed is left out of the table, and the command says so.
    shutil.rmtree(tmp_path / "elsewhere" / "dropout" / "1")
    with caplog.at_level("WARNING", logger="regbench.tune"):
        assert tune_main(tune_args(f"tune.fixed=[{tmp_path / 'elsewhere'}]")) == 0
    assert list(pd.read_csv(folder / "protocols.csv")["regimen"]) == ["none"]
    assert any("no completed movielens runs of regularizer=dropout on every seed of [0, 1]" in r.getMessage()
               for r in caplog.records)


@pytest.mark.integration
def test_two_tune_commands_share_one_postgresql_study_without_exceeding_the_budget(tune_args, tmp_path, cli_env):
    """Workers on several machines share a PostgreSQL server: here two `regbench tune` commands (two
    folders, as two machines would have) with two workers each, at once, on one private server. The
    advisory lock keeps exactly tune.trials per regimen."""
    import subprocess
    import sys

    from postgres import private_server

    with private_server() as url:
        commands = [[sys.executable, "-m", "regbench", "tune",
                     *tune_args("tune.trials=4", "tune.workers=2", f"tune.storage={url}", "tune.study=shared",
                                "tune.final_seeds=[0]", f"tune.dir={tmp_path / f'machine{i}'}")] for i in (0, 1)]
        processes = [subprocess.Popen(c, env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for c in commands]
        outputs = [p.communicate(timeout=600) for p in processes]
        assert [p.returncode for p in processes] == [0, 0], [e[-2000:] for _, e in outputs]
        for regimen in ("none", "dropout"):
            study = optuna.load_study(study_name=f"shared.{regimen}", storage=url)
            assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 4
            assert len({tuple(sorted(t.params.items())) for t in study.get_trials()}) == 4
            workers = {t.system_attrs["regbench_worker"] for t in study.get_trials()}
            assert len(workers) >= 2  # the trials were shared out


def test_the_space_takes_an_initialisation_and_a_warmup_length_as_nuisance(tune_args, tmp_path):
    """model.init (a choice) and schedule.warmup_epochs (an integer) can be searched: with CNN-13 at lr
    0.05, `none` trains only with another initialisation (docs/tuning.md), so they belong to the space."""
    from regbench.tune import tune_main

    assert tune_main(tune_args("tune.trials=3", "tune.final_seeds=[0]", "tune.regimens=[none]",
                               "+tune.space.model.init={choices:[default,kaiming,xavier]}",
                               "+tune.space.schedule.warmup_epochs={low:0,high:2,int:true}")) == 0
    study = optuna.load_study(study_name=f"{STUDY}.none", storage=f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}")
    for trial in study.get_trials():
        assert trial.params["model.init"] in ("default", "kaiming", "xavier")
        assert trial.params["schedule.warmup_epochs"] in (0, 1, 2)
        record = json.loads((tmp_path / "tune" / "trials" / "none" / f"{trial.number:04d}" / "metrics.json").read_text())
        assert record["config"]["model"]["init"] == trial.params["model.init"]
        assert record["config"]["schedule"]["warmup_epochs"] == trial.params["schedule.warmup_epochs"]
    assert tune_main(tune_args("tune.trials=3", "tune.final_seeds=[0]", "tune.regimens=[none]",
                               "+tune.space.model.init={choices:[default,kaiming,xavier]}",
                               "+tune.space.schedule.warmup_epochs={low:0,high:2,int:true}")) == 0  # same space


def test_the_edge_warnings_advice_works(tune_args):
    """'move the range (tune.space.regularizer.dropout.p)': one bound of a regimen's own key can be moved
    alone, the other kept from its default range."""
    from regbench.tune import split_command_line
    from regbench.tune_space import plans, tune_config

    runs, tune = split_command_line(tune_args("tune.space.regularizer.dropout.p.high=0.9"))
    dropout = next(p for p in plans(runs, tune_config(tune), machine=False) if p.regimen == "dropout")
    (p,) = [r for r in dropout.ranges if r.key == "regularizer.dropout.p"]
    assert (p.low, p.high) == (0.05, 0.9)


def test_a_worker_reads_the_data_once_for_all_its_trials(tune_args, monkeypatch):
    from regbench.data import movielens
    from regbench.tasks import base
    from regbench.tune import tune_main

    calls = []
    real = movielens.load
    monkeypatch.setattr(movielens, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert tune_main(tune_args("tune.trials=2")) == 0  # 4 trials and 4 final runs in this process
    assert len(calls) == 1
    assert not base._KEEPING and not base._KEPT  # nothing kept for what the process does next


def test_parallel_workers_never_propose_the_same_point(tune_args, tmp_path):
    """Workers seeded alike would ask for the same first point, which is the same run: with one worker the
    sampler has tune.sampler_seed (reproducible), with several each process a seed of its own."""
    from omegaconf import OmegaConf

    from regbench.tune_space import tune_config
    from regbench.tune_studies import sampler_seed

    one = tune_config(["tune.sampler_seed=7"])
    assert sampler_seed(one, "sqlite:///x.db") == 7
    many = tune_config(["tune.sampler_seed=7", "tune.workers=2"])
    assert sampler_seed(many, "sqlite:///x.db") != 7
    shared = tune_config(["tune.sampler_seed=7"])
    assert sampler_seed(shared, "postgresql://u@h/db") != 7
    assert OmegaConf.to_container(one)["sampler_seed"] == 7


def test_a_one_worker_search_that_goes_on_proposes_new_points_not_its_first_ones_again(tune_args, tmp_path):
    """The same command again (after a stop, or with a larger tune.trials) continues the study: a sampler
    seeded with tune.sampler_seed once more would draw the search's first point again, the same run, and
    spend a trial of the budget on a repeat (seen 2026-12-06 when a stopped search was continued)."""
    from regbench.tune import tune_main

    args = ("tune.regimens=[none]", "tune.final_seeds=[0]")
    assert tune_main(tune_args("tune.trials=1", *args)) == 0
    assert tune_main(tune_args("tune.trials=2", *args)) == 0
    url = f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}"
    first, second = optuna.load_study(study_name=f"{STUDY}.none", storage=url).get_trials()
    assert first.state.name == second.state.name == "COMPLETE"
    assert second.params != first.params
    assert (tmp_path / "tune" / "trials" / "none" / "0001" / "metrics.json").is_file()


def test_local_workers_share_the_cpus(monkeypatch):
    from omegaconf import OmegaConf

    from regbench import launchers
    from regbench.tune import worker_threads

    monkeypatch.setattr(launchers, "available_cpus", lambda: 8)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    cfg = OmegaConf.create({"trainer": {"threads": 0}})
    assert worker_threads(cfg, 1) is None and worker_threads(cfg, 2) == 4 and worker_threads(cfg, 3) == 2
    assert worker_threads(OmegaConf.create({"trainer": {"threads": 3}}), 2) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")
    assert worker_threads(cfg, 2) == 5
