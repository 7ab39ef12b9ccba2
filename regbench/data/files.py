"""File helpers shared by the loaders and the run record: atomic writes, writable cache dirs."""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_UMASK = os.umask(0)  # read the process umask once (the only way to read it is to set it) ...
os.umask(_UMASK)      # ... and put it back at once


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """sha256 of the file at `path`; raises DataError naming both hashes when `expected` is set and differs."""
    from regbench.errors import DataError

    actual = sha256_of(path)
    if expected and actual.lower() != expected.lower():
        raise DataError(f"{path} has sha256 {actual}, but {expected} was expected (data.sha256): the file is "
                        "damaged or a different version; re-download it, or fix data.sha256")
    return actual


def unsafe_member(name: str, is_link: bool) -> str | None:
    """Why an archive member must not be used (absolute path, '..', or a link), or None when it is safe."""
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in parts:
        return "a path that leaves the archive's folder ('..')"
    if is_link:
        return "a link"
    return None


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


def fallback_cache_dir(preferred: Path) -> Path:
    """Where the cache for `preferred` goes when `preferred` cannot be written (a read-only shared data
    folder): a folder of its own under ~/.cache/regbench, so caches of different data never mix."""
    key = hashlib.sha256(str(Path(preferred).expanduser().resolve()).encode("utf-8")).hexdigest()[:16]
    return Path.home() / ".cache" / "regbench" / key


def writable_cache_dir(preferred: Path) -> Path:
    """`preferred` if we can write there, else its fallback_cache_dir (e.g. a read-only shared data dir)."""
    for candidate in (preferred, fallback_cache_dir(preferred)):
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
    raise OSError(f"no writable cache directory: tried {preferred} and {fallback_cache_dir(preferred)}; "
                  "set paths.cache_dir")


def cached_file(preferred: Path, name: str) -> Path | None:
    """An existing cache file `name` for the cache folder `preferred`: in it, or in its fallback."""
    for folder in (preferred, fallback_cache_dir(preferred)):
        if (folder / name).is_file():
            return folder / name
    return None


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the block: processes on one machine take turns."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download(url: str, target: Path, timeout: float = 60) -> Path:
    """Fetch `url` into `target` atomically (no half-written file is ever left). Raises OSError."""
    log.info("downloading %s to %s", url, target)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        write_atomic(target, lambda fh: shutil.copyfileobj(response, fh))
    return target
