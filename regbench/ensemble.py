"""Seed ensembles: `regbench ensemble RUNS_OR_SWEEPS... [--by KEY ...]` groups completed runs as `compare`
does (every identity key but the seed), averages the members' stored test probabilities and scores the
average with the task's own metrics.

What a run must store: classification runs write test_outputs.npz (probs N x C, labels N), enough to
score an averaged softmax; that is what this module reads. Tagging (per-token marginals) and MovieLens
(the users x items score matrix: 943 x 1,682 float32 is 6 MB for ml-100k, but ml-20m's 138,493 x 26,744
would be 14.8 GB, so it could only be kept as each user's top items) store nothing yet: their runs are
refused with one line naming what is missing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from regbench.calibration import calibration
from regbench.compare import CompareError, key_values, label_keys, load_runs
from regbench.fileio import write_csv_atomic, write_text_atomic
from regbench.record import TEST_OUTPUTS_FILE, read_test_outputs

SCORED = ("accuracy", "nll", "ece", "brier")  # what an averaged softmax is scored on (accuracy first)
LOWER_IS_BETTER = {"nll", "ece", "brier"}


def score(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((probs.argmax(1) == labels).mean()), **calibration(probs, labels)}


@dataclass
class Ensembles:
    table: pd.DataFrame   # one row per group: keys, n_members, ensemble.<m>, member_mean.<m>, gain.<m>
    keys: list[str]

    def write(self, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        csv, md = out / "ensemble.csv", out / "ensemble.md"
        write_csv_atomic(csv, self.table)
        write_text_atomic(md, self.table.to_markdown(index=False, floatfmt=".4f") + "\n")
        return [csv, md]

    def text(self) -> str:
        shown = self.table[[*self.keys, "n_members", "ensemble.accuracy", "member_mean.accuracy", "gain.accuracy",
                            "ensemble.ece", "member_mean.ece"]]
        return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def ensemble(paths, by=None) -> Ensembles:
    runs = load_runs(list(paths))
    runs = runs[runs["status"] == "completed"]
    if runs.empty:
        raise CompareError("no completed runs to ensemble")
    tasks = sorted(set(runs["task"].dropna()))
    if len(tasks) > 1:
        raise CompareError(f"the runs are of different tasks ({', '.join(tasks)}): an ensemble averages one task's "
                           "predictions; give runs of one task")
    keys = list(by) if by else label_keys(runs)
    for key in keys:
        runs[key] = key_values(runs, key)
    rows = []
    for label, group in runs.groupby(keys, sort=False, dropna=False) if keys else [((), runs)]:
        label = label if isinstance(label, tuple) else (label,)
        members = [_outputs(path, tasks[0]) for path in group["run_path"]]
        labels = members[0][1]
        if any(m[1].shape != labels.shape or not np.array_equal(m[1], labels) for m in members):
            raise CompareError(f"the runs of {dict(zip(keys, label))} were tested on different test sets: their "
                               "predictions cannot be averaged")
        together = score(np.mean([m[0] for m in members], axis=0, dtype=np.float64), labels)
        alone = pd.DataFrame([score(m[0].astype(np.float64), labels) for m in members]).mean()
        row = dict(zip(keys, label), n_members=len(members))
        for metric in SCORED:
            gain = together[metric] - alone[metric]
            row.update({f"ensemble.{metric}": together[metric], f"member_mean.{metric}": alone[metric],
                        f"gain.{metric}": -gain if metric in LOWER_IS_BETTER else gain})
        rows.append(row)
    return Ensembles(pd.DataFrame(rows), keys)


def _outputs(path, task: str) -> tuple[np.ndarray, np.ndarray]:
    stored = read_test_outputs(Path(path)) if isinstance(path, str) else None
    if stored is None:
        where = f"{path} has no {TEST_OUTPUTS_FILE}" if isinstance(path, str) else "a run without its directory"
        raise CompareError(f"{where}: ensembles need each run's stored test outputs, which classification runs "
                           f"write (task={task} runs store none, or the run predates them); give run or sweep "
                           "directories of classification runs")
    return stored
