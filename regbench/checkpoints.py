"""Skip, resume and keep: a deterministic id per run, the index that finds a run's earlier attempt in
any sweep directory, the best-validation weights (best.pt), and the last-epoch checkpoint (last.pt) that
holds everything a run needs to continue exactly.

Hydra cannot resume a sweep, and its sweep directories are new for every invocation (they carry the
time), so an earlier attempt is found through `<paths.output_dir>/.index/<run id>`, a one-line file
with the directory of the latest attempt of that configuration; the run's own directory is looked at
first (a sweep re-run into the same `hydra.sweep.dir`)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from regbench import code_identity
from regbench.errors import RegbenchError
from regbench.fileio import write_atomic, write_json_atomic, write_text_atomic
from regbench.loop import EarlyStopping, FitState, Training
from regbench.record import ADDED_KEYS, COSMETIC_KEYS, METRICS_FILE, Status, read_metrics

log = logging.getLogger(__name__)

INDEX_DIR = ".index"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.pt"   # the best-validation weights
LAST_CHECKPOINT = "last.pt"   # everything an unfinished run needs to continue
CHECKPOINT_FORMAT = 1


# -- identity -------------------------------------------------------------------------------------
def identity(cfg: DictConfig, code: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The resolved configuration minus the cosmetic keys (the seed and the data folder stay), plus the hash
    of every user source file a `_target_` loads (regbench.code_identity; `code`: its user_code(cfg) when the
    caller has it already): what makes two runs the same run."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    for key in COSMETIC_KEYS:
        node = container
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    for key, off in ADDED_KEYS.items():
        _drop_at(container, key.split("."), off)
    code = code_identity.identity_part(code_identity.user_code(cfg) if code is None else code)
    if code:  # a user's model, task, optimizer or regularizer: its source is part of the run
        container["code"] = code
    return container


def _drop_at(node: Any, path: list[str], off: Any) -> None:
    """Remove the key at `path` when it holds `off` (a bool only equals a bool), and any dict it leaves empty."""
    if not isinstance(node, dict) or path[0] not in node:
        return
    if len(path) > 1:
        _drop_at(node[path[0]], path[1:], off)
        if node[path[0]] == {}:
            del node[path[0]]
    elif node[path[0]] == off and isinstance(node[path[0]], bool) == isinstance(off, bool):
        del node[path[0]]


def run_id(cfg: DictConfig, world_size: int = 1, ident: dict[str, Any] | None = None) -> str:
    """The run's identity hash (of `ident`, identity(cfg) when the caller has it already); a run on several
    processes (torchrun) is not the same run as one on one."""
    ident = dict(identity(cfg) if ident is None else ident)
    if world_size > 1:
        ident["world_size"] = world_size
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# -- the index of earlier attempts ------------------------------------------------------------------
def _index_file(cfg: DictConfig, rid: str) -> Path:
    return Path(cfg.paths.output_dir) / INDEX_DIR / rid


def remember(cfg: DictConfig, rid: str, run_dir: Path) -> None:
    write_text_atomic(_index_file(cfg, rid), str(Path(run_dir).resolve()) + "\n")


@dataclass
class Earlier:
    """An earlier attempt of the same run: finished (its record is reused) or resumable (a checkpoint)."""

    run_dir: Path
    record: dict[str, Any] | None
    checkpoint: Path | None

    @property
    def final(self) -> bool:
        """Its record has a final status (Status.final: completed, diverged, pruned): reused, never resumed."""
        return self.record is not None and self.record.get("status") in {s.value for s in Status if s.final}

    @property
    def pruned(self) -> bool:
        """A tuning trial stopped by its pruner: reused by the tuner, trained afresh by anyone else."""
        return self.record is not None and self.record.get("status") == Status.PRUNED


def find_earlier(cfg: DictConfig, rid: str, run_dir: Path) -> Earlier | None:
    """The run's own directory first, then the indexed one; None when neither holds this run."""
    candidates = [Path(run_dir)]
    index = _index_file(cfg, rid)
    if index.is_file():
        candidates.append(Path(index.read_text(encoding="utf-8").strip()))
    for directory in candidates:
        record = None
        try:
            record = read_metrics(directory)
        except (OSError, json.JSONDecodeError):
            pass
        if record is not None and record.get("run_id") != rid:
            continue  # a directory reused by another configuration
        checkpoint = directory / CHECKPOINT_DIR / LAST_CHECKPOINT
        earlier = Earlier(directory, record, checkpoint if checkpoint.is_file() else None)
        if earlier.final or earlier.checkpoint is not None:
            return earlier
    return None


def reuse(earlier: Earlier, run_dir: Path, overrides: dict[str, str]) -> dict[str, Any]:
    """The same configuration finished before: its record, with `reused_from` naming the original, and
    every file the original wrote (history.csv, test_outputs.npz, test_topk.csv, split files, best.pt,
    TensorBoard events, ...), hard-linked (copied across file systems) into `run_dir` when that is another
    directory, so that every reader finds there what the original has."""
    record = dict(earlier.record)
    log.info("run %s already %s in %s: reusing its record and files (trainer.resume=false trains it again)",
             record["run_id"], record["status"], earlier.run_dir)
    if earlier.run_dir.resolve() != Path(run_dir).resolve():
        record.update(reused_from=str(earlier.run_dir), overrides=overrides)
        for name in carry_files(earlier.run_dir, Path(run_dir)):
            log.debug("reused %s", name)
        write_json_atomic(Path(run_dir) / METRICS_FILE, record)
    return record


# The files of a run directory that belong to the attempt, not to the run: Hydra's record of this
# invocation, its log, the record itself (rewritten with reused_from), and the resume checkpoint.
NOT_CARRIED = (".hydra", METRICS_FILE, f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}")


def carry_files(source: Path, target: Path) -> list[str]:
    """Hard-link (or copy) every file of a finished run's directory into another one, leaving out
    NOT_CARRIED and top-level *.log files; files `target` already has are kept. Returns the names."""
    carried = []
    for path in sorted(source.rglob("*")):
        name = path.relative_to(source).as_posix()
        if not path.is_file() or name.startswith(NOT_CARRIED) or ("/" not in name and name.endswith(".log")):
            continue
        destination = target / name
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(path, destination)
        carried.append(name)
    return carried


# -- random number generators ----------------------------------------------------------------------
def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a run draws from, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     gauss),
             "torch": torch.get_rng_state(), "data": generator.get_state(), "data_device": generator.device.type,
             "cuda": None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    saved_on = state.get("data_device", "cpu")  # checkpoints before the generator moved to the device: cpu
    if saved_on == generator.device.type:
        generator.set_state(state["data"])
    else:  # a GPU run resumed on a CPU or the other way round: the two generators' states do not convert
        log.warning("the checkpoint's data-order generator was on %s, this run's is on %s: it starts again from "
                    "the seed, so batches after resuming differ from an uninterrupted run", saved_on,
                    generator.device.type)
    if state.get("cuda") is not None and torch.cuda.is_available():
        for index, cuda_state in cuda_states_to_restore(state["cuda"], torch.cuda.device_count()):
            torch.cuda.set_rng_state(cuda_state, index)


def cuda_states_to_restore(saved: list, n_devices: int) -> list[tuple[int, Any]]:
    """(device index, state) pairs to restore from a checkpoint's per-GPU RNG states on a machine with
    n_devices GPUs. A checkpoint written on a machine with more GPUs than this one has states for devices
    that do not exist here (restoring them all would crash); one from a machine with fewer leaves the
    extra devices as seeded. A run draws on its own device (cuda:0, or cuda:LOCAL_RANK under torchrun,
    which the same-sized job restores), so this loses nothing it uses."""
    if len(saved) != n_devices:
        log.warning("the checkpoint holds CUDA RNG states of %d GPUs, this machine has %d: restoring the first %d",
                    len(saved), n_devices, min(len(saved), n_devices))
    return list(enumerate(saved[:n_devices]))


# -- checkpoint files ---------------------------------------------------------------------------------
class CheckpointError(RegbenchError):
    """A checkpoint that does not belong to this run, or cannot be read."""


def save_best(run_dir: Path, cfg: DictConfig, state: FitState) -> Path:
    """checkpoints/best.pt: the best-validation weights, their epoch and validation metrics, the config."""
    path = Path(run_dir) / CHECKPOINT_DIR / BEST_CHECKPOINT
    checkpoint = {"model": state.best_state, "epoch": state.best_epoch, "val": state.val,
                  "config": OmegaConf.to_container(cfg, resolve=True)}
    write_atomic(path, lambda fh: torch.save(checkpoint, fh))
    return path


def save_last(run_dir: Path, cfg: DictConfig, rid: str, t: Training, state: FitState) -> None:
    """checkpoints/last.pt: everything needed to continue exactly after state.epoch, written atomically."""
    record = {"best_epoch": state.best_epoch, "val": state.val, "epochs_run": state.epoch,
              "train_time_s": state.train_time_s, "eval_time_s": state.eval_time_s}
    checkpoint = {"format": CHECKPOINT_FORMAT, "run_id": rid, "epoch": state.epoch, "stopped": state.stopped,
                  "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                  "scheduler": t.scheduler.state_dict(), "scaler": None,  # bf16 autocast needs no loss scaler
                  "best_value": state.early.best, "best_state": state.best_state,
                  "bad_epochs": state.early.bad_epochs, "rng": rng_state(t.generator), "history": state.history,
                  "record": record, "config": OmegaConf.to_container(cfg, resolve=True),
                  **t.hooks.state_dict()}  # "ema" and "extras": the regularizer hooks' states
    write_atomic(Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT, lambda fh: torch.save(checkpoint, fh))


def load_last(path: Path, rid: str) -> dict[str, Any]:
    """Read a last-epoch checkpoint safely (weights_only) and check it belongs to this configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise CheckpointError(f"{path}: cannot be read as a regbench checkpoint ({type(err).__name__}: {err}); "
                              "delete it or run with trainer.resume=false to start this run afresh") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a regbench last-epoch checkpoint (format {CHECKPOINT_FORMAT}); "
                              "delete it or run with trainer.resume=false")
    if state.get("run_id") != rid:
        raise CheckpointError(f"{path} was written by another configuration (run id {state.get('run_id')}, this "
                              f"run is {rid}); refusing to load it. Use another output directory, or "
                              "trainer.resume=false to overwrite it")
    return state


def resume(path: Path, rid: str, t: Training, early: EarlyStopping) -> FitState:
    """Put the model, optimizer, schedule and every RNG back as they were after the checkpoint's epoch;
    return the epoch loop's state then."""
    saved = load_last(path, rid)
    t.model.load_state_dict(saved["model"])
    t.optimizer.load_state_dict(saved["optimizer"])
    t.scheduler.load_state_dict(saved["scheduler"])
    t.hooks.load_state_dict(saved)
    restore_rng(saved["rng"], t.generator)
    early.best, early.bad_epochs = saved["best_value"], saved["bad_epochs"]
    record = saved["record"]
    log.info("resuming run %s after epoch %d from %s", rid, saved["epoch"], path)
    return FitState(early=early, epoch=saved["epoch"], stopped=saved["stopped"], best_state=saved["best_state"],
                    best_epoch=record["best_epoch"], val=record["val"], history=list(saved["history"]),
                    train_time_s=record["train_time_s"], eval_time_s=record["eval_time_s"])


def forget_last(run_dir: Path) -> None:
    """A run that completed or diverged is never resumed: its last.pt goes."""
    (Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT).unlink(missing_ok=True)
