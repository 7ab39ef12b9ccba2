"""File helpers shared by the dataset loaders: atomic writes, hashes, writable cache dirs."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_path(target: Path) -> Path:
    """A temporary sibling of `target` to write to, then os.replace() over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def writable_cache_dir(preferred: Path) -> Path:
    """`preferred` if we can write there, else ~/.cache/regbench (e.g. a read-only shared data dir)."""
    for candidate in (preferred, Path.home() / ".cache" / "regbench"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            probe = candidate / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
            if candidate != preferred:
                log.warning("cache dir %s is not writable; caching in %s instead", preferred, candidate)
            return candidate
        except OSError:
            continue
    raise OSError(f"no writable cache directory: tried {preferred} and ~/.cache/regbench; set paths.cache_dir")
