"""Seed ensembles: `regbench ensemble RUNS_OR_SWEEPS... [--by KEY ...]` groups completed runs as `compare`
does (every identity key but the seed), averages the members' stored test predictions (test_outputs.npz,
written by every run unless trainer.test_outputs=false) and scores the average with the task's own
metrics. Each member is scored from its stored predictions the same way, so the gain compares like
with like:
- classification: the softmax probabilities; accuracy, NLL, ECE, Brier.
- tagging: each token's tag probabilities (the CRF's marginals or the softmax), decoded by the most
  probable tag per token (so a CRF member's score here can differ slightly from the Viterbi-decoded
  one in its metrics.json); chunk F1 (span tag sets), token accuracy, and NLL, ECE, Brier over tokens.
- ranking (MovieLens): the test users x items score matrix, averaged as raw scores; the task's top-K
  metrics. ml-100k's matrix is 6 MB; above trainer.test_outputs_max_mb (ml-1m's 90 MB, ml-20m's 14.8 GB)
  runs store none and are refused here: ensembling those would need each member's top items instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from regbench import metrics, ranking
from regbench.calibration import calibration
from regbench.errors import CompareError
from regbench.runs import key_values, label_keys, load_runs
from regbench.tables import TERMINAL_WIDTH
from regbench.fileio import write_csv_atomic, write_text_atomic
from regbench.record import TEST_OUTPUTS_FILE, legacy_direction, read_test_outputs

# The arrays that must agree across members (same test set, same masking) and the one that is averaged.
SAME = {"classification": ("labels",), "tagging": ("labels", "lengths", "tag_names"), "ranking": ("relevant", "ks")}
AVERAGED = {"classification": "probs", "tagging": "probs", "ranking": "scores"}


def score(outputs: dict[str, Any]) -> dict[str, float]:
    """The task's metrics of one set of stored test predictions (first: the one the table shows first)."""
    kind = outputs["kind"]
    if kind == "classification":
        probs, labels = outputs["probs"], outputs["labels"]
        return {"accuracy": float((probs.argmax(1) == labels).mean()), **calibration(probs, labels)}
    if kind == "tagging":
        return _score_tokens(outputs)
    if kind == "ranking":
        return _score_ranking(outputs)
    raise CompareError(f"test_outputs.npz of kind {kind!r} is not one regbench writes")


def _score_tokens(outputs: dict[str, Any]) -> dict[str, float]:
    probs, labels, names = outputs["probs"], outputs["labels"], outputs["tag_names"]
    cuts = np.cumsum(outputs["lengths"])[:-1]
    gold = [list(names[s]) for s in np.split(labels, cuts)]
    predicted = [list(names[s]) for s in np.split(probs.argmax(1), cuts)]
    out: dict[str, float] = {}
    if bool(outputs["span"]):
        out["f1"] = metrics.span_scores(gold, predicted)["f1"]
    out["accuracy"] = metrics.token_accuracy(gold, predicted)
    return {**out, **calibration(probs, labels)}


def _score_ranking(outputs: dict[str, Any]) -> dict[str, float]:
    scores = torch.as_tensor(outputs["scores"])
    relevant = torch.zeros(scores.shape, dtype=torch.bool)
    pairs = torch.as_tensor(outputs["relevant"])
    relevant[pairs[:, 0], pairs[:, 1]] = True
    ks = [int(k) for k in outputs["ks"]]
    per_user = ranking.per_user_metrics(relevant.gather(1, ranking.top_k(scores, max(ks))), relevant.sum(1), ks)
    first = [f"ndcg@{ks[0]}"] if f"ndcg@{ks[0]}" in per_user else []
    return {k: float(per_user[k].mean()) for k in first + sorted(set(per_user) - set(first))}


def average(members: list[dict[str, Any]]) -> dict[str, Any]:
    """One member-shaped set of outputs whose predictions are the members' mean (float64)."""
    kind = members[0]["kind"]
    key = AVERAGED[kind]
    return {**members[0], key: np.mean([m[key].astype(np.float64) for m in members], axis=0)}


@dataclass
class Ensembles:
    table: pd.DataFrame   # one row per group: keys, n_members, ensemble.<m>, member_mean.<m>, gain.<m>
    keys: list[str]
    metrics: list[str]    # the scored metrics, the task's primary one first

    def write(self, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        csv, md = out / "ensemble.csv", out / "ensemble.md"
        write_csv_atomic(csv, self.table)
        write_text_atomic(md, self.table.to_markdown(index=False, floatfmt=".4f") + "\n")
        return [csv, md]

    def text(self) -> str:
        shown = [m for m in (self.metrics[0], "ece") if m in self.metrics]
        # short headers for the terminal (ensemble.csv keeps the full names)
        headers = {"n_members": "members"}
        for m in shown:
            headers.update({f"ensemble.{m}": f"{m} ensemble", f"member_mean.{m}": f"{m} members",
                            f"gain.{m}": f"{m} gain"})
        table = self.table[[*self.keys, *headers]].rename(columns=headers)
        return table.to_string(index=False, float_format=lambda v: f"{v:.4f}", line_width=TERMINAL_WIDTH)


def _direction(group: pd.DataFrame, metric: str) -> bool:
    """Whether higher is better for `metric`, as the members' records say (metric_directions)."""
    column = f"metric_directions.{metric}"
    if column in group and group[column].notna().any():
        return bool(group[column].dropna().iloc[0])
    return legacy_direction(metric, None, None)


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
    rows, scored = [], []
    for label, group in runs.groupby(keys, sort=False, dropna=False) if keys else [((), runs)]:
        label = label if isinstance(label, tuple) else (label,)
        members = [_outputs(path, tasks[0]) for path in group["run_path"]]
        _check_same_test_set(members, dict(zip(keys, label)))
        together = score(average(members))
        alone = pd.DataFrame([score(m) for m in members]).mean()
        row = dict(zip(keys, label), n_members=len(members))
        for metric, value in together.items():
            gain = value - alone[metric]
            higher = _direction(group, metric)
            row.update({f"ensemble.{metric}": value, f"member_mean.{metric}": alone[metric],
                        f"gain.{metric}": gain if higher else -gain})
        rows.append(row)
        scored = list(together)
    return Ensembles(pd.DataFrame(rows), keys, scored)


def _check_same_test_set(members: list[dict[str, Any]], group: dict[str, Any]) -> None:
    kind = members[0]["kind"]
    if any(m["kind"] != kind for m in members):
        raise CompareError(f"the runs of {group} stored different kinds of test outputs: give runs of one task")
    shape = members[0][AVERAGED[kind]].shape
    for m in members[1:]:
        same = m[AVERAGED[kind]].shape == shape and all(
            m[k].shape == members[0][k].shape and np.array_equal(m[k], members[0][k]) for k in SAME[kind])
        if kind == "ranking" and same:  # the same items masked (the same train/validation split)
            same = np.array_equal(np.isneginf(m["scores"]), np.isneginf(members[0]["scores"]))
        if not same:
            raise CompareError(f"the runs of {group} were tested on different test sets: their predictions cannot "
                               "be averaged")


def _outputs(path, task: str) -> dict[str, Any]:
    stored = read_test_outputs(Path(path)) if isinstance(path, str) else None
    if stored is None:
        where = f"{path} has no {TEST_OUTPUTS_FILE}" if isinstance(path, str) else "a run without its directory"
        raise CompareError(f"{where}: ensembles need each run's stored test outputs (task={task}); train it again "
                           "with trainer.test_outputs=true trainer.resume=false (and, for a large MovieLens set, a "
                           "trainer.test_outputs_max_mb above its score matrix), or leave it out")
    return stored
