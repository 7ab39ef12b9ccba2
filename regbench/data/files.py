"""File helpers of the dataset loaders: hashes, safe archive members, cache folders, downloads
(written atomically through regbench.fileio)."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from regbench.errors import DataError
from regbench.fileio import write_atomic

log = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """sha256 of the file at `path`; raises DataError naming both hashes when `expected` is set and differs."""
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


def download(url: str, target: Path, timeout: float = 60) -> Path:
    """Fetch `url` into `target` atomically (no half-written file is ever left). Raises OSError."""
    log.info("downloading %s to %s", url, target)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        write_atomic(target, lambda fh: shutil.copyfileobj(response, fh))
    return target
