"""File helpers shared by the loaders and the run record: atomic writes, writable cache dirs."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_UMASK = os.umask(0)  # read the process umask once (the only way to read it is to set it) ...
os.umask(_UMASK)      # ... and put it back at once


def write_atomic(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(fh) on a temporary sibling of `target`, flush and fsync it, then rename it over
    `target` (and fsync the folder): a crash at any instant leaves either the old or the new file."""
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


def download(url: str, target: Path, timeout: float = 60) -> Path:
    """Fetch `url` into `target` atomically (no half-written file is ever left). Raises OSError."""
    log.info("downloading %s to %s", url, target)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        write_atomic(target, lambda fh: shutil.copyfileobj(response, fh))
    return target
