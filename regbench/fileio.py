"""Files written so that a crash never leaves half of one, and a lock for processes that share a file.

A leaf module: every part of regbench that writes (the run record, checkpoints, caches, a task's own
outputs) writes through here, and it imports nothing of regbench."""
from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

_UMASK = os.umask(0)  # read the process umask once (the only way to read it is to set it) ...
os.umask(_UMASK)      # ... and put it back at once


def write_atomic(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(fh) on a temporary sibling of `target`, flush and fsync it, then rename it over
    `target` (and fsync the folder): a crash at any instant leaves either the old or the new file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def json_safe(value: Any) -> Any:
    """NaN/Inf are not JSON: store them as null (a diverged run's loss) so any reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def write_csv_atomic(path: Path, frame: Any) -> None:
    """A pandas DataFrame as CSV, without its index."""
    write_text_atomic(path, frame.to_csv(index=False))


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the block: processes on one machine take turns."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
