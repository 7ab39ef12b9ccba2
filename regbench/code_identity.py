"""Your code is part of the run's identity: the source file of every user module that a `_target_` loads
(task, model, optimizer, regularizer.extra) is hashed into the run id and written into the record, so an
edited model trains anew while unchanged code is still reused (in the same folder, by joblib workers and
in Slurm jobs alike: each process hashes the file it imports).

Built-in code (regbench's own modules) is covered by the version and git commit already in the record, and
installed libraries (torch.optim.Adadelta) by their versions: only files outside both are hashed. The hash is
of the module's file that holds the target, not of what that file imports."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from regbench.targets import locate

PACKAGE_DIR = Path(__file__).resolve().parent
HASH_CHARS = 12  # in the identity (what compare's labels show); the record keeps the whole sha256


def targets(cfg: DictConfig) -> list[tuple[str, str]]:
    """(config key, dotted path) of every `_target_` a run loads code from."""
    found = []
    for section in ("task", "model", "optimizer"):
        node = cfg.get(section)
        if node is not None and not OmegaConf.is_missing(node, "_target_") and node.get("_target_"):
            found.append((f"{section}._target_", str(node._target_)))
    extra = cfg.get("regularizer", {}).get("extra") or []
    for i, entry in enumerate(extra):
        if OmegaConf.is_config(entry) and entry.get("_target_"):
            found.append((f"regularizer.extra[{i}]._target_", str(entry._target_)))
    return found


@lru_cache(maxsize=1)
def _library_dirs() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)


def is_user_file(path: Path) -> bool:
    """Not regbench's own code and not an installed library or the standard library."""
    path = path.resolve()
    return not any(path.is_relative_to(d) for d in (PACKAGE_DIR, *_library_dirs()))


def _source_file(key: str, target: str) -> Path | None:
    found = locate(key, target)
    module = inspect.getmodule(found) or importlib.import_module(target.rsplit(".", 1)[0])
    try:
        source = inspect.getsourcefile(module)
    except TypeError:  # a built-in module: no file
        return None
    return Path(source) if source else None


def user_code(cfg: DictConfig) -> list[dict[str, Any]]:
    """One entry per `_target_` whose module is a user's file: key, target, path and the sha256 of its bytes."""
    entries = []
    for key, target in targets(cfg):
        path = _source_file(key, target)
        if path is None or not path.is_file() or not is_user_file(path):
            continue
        entries.append({"key": key, "target": target, "path": str(path.resolve()),
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return entries


def identity_part(code: list[dict[str, Any]]) -> dict[str, str]:
    """What the run's identity holds of its code: {key: short hash}."""
    return {entry["key"]: entry["sha256"][:HASH_CHARS] for entry in code}
