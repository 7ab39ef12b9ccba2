"""CoNLL column-format corpora: one token per line, columns separated by spaces or tabs, a blank
line between sentences, `-DOCSTART-` lines skipped, plain or .gz, UTF-8.

Locators for CoNLL-2003 NER (train/valid/test, or the original eng.train/eng.testa/eng.testb),
CoNLL-2000 chunking (train.txt.gz / test.txt.gz, downloadable from the shared-task site), and any
corpus in the format (`task=conll data.dir=PATH`)."""
from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

from regbench.data.files import download
from regbench.errors import DataError

log = logging.getLogger(__name__)

CONLL2000_URL = "https://www.clips.uantwerpen.be/conll2000/chunking/{name}"


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]


@dataclass
class Corpus:
    """A corpus's splits as read: sentences per split ("train", "val", "test") and the file each came from."""

    sentences: dict[str, list[Sentence]]
    files: dict[str, Path]


def read_conll(path: Path, token_column: int = 0, tag_column: int | str = -1) -> list[Sentence]:
    """Read sentences from a CoNLL column file; errors name the file and line.

    tag_column="auto" takes the last column that holds more than one distinct value: the NER tag
    both in the original 4-column CoNLL-2003 files and in copies with a constant trailing column."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start}); "
                        f"convert it, e.g. iconv -f latin1 -t utf-8") from None
    rows: list[list[list[str]]] = []
    current: list[list[str]] = []
    n_columns = None
    fixed = [c for c in (token_column, tag_column) if isinstance(c, int)]
    needed = max(c if c >= 0 else -c - 1 for c in fixed) + 1
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if current:
                rows.append(current)
                current = []
            continue
        if n_columns is None:
            n_columns = len(fields)
            if n_columns < max(needed, 2):
                raise DataError(f"{path}:{lineno}: {n_columns} column(s), but a token and a tag column "
                                f"(token {token_column}, tag {tag_column}) need at least {max(needed, 2)}: {line!r}")
        elif len(fields) != n_columns:
            raise DataError(f"{path}:{lineno}: expected {n_columns} columns like the lines before it, "
                            f"found {len(fields)}: {line!r}")
        current.append(fields)
    if current:
        rows.append(current)
    if not rows:
        raise DataError(f"{path} holds no sentences")
    if tag_column == "auto":
        varying = [c for c in range(n_columns) if c != token_column % n_columns
                   and len({f[c] for sent in rows for f in sent}) > 1]
        tag_column = varying[-1] if varying else n_columns - 1
    return [Sentence([f[token_column] for f in sent], [f[tag_column] for f in sent]) for sent in rows]


def _find(dirs: list[Path], names: tuple[str, ...]) -> Path | None:
    for d in dirs:
        for name in names:
            for candidate in (d / name, d / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    return None


def _missing(what: str, dirs: list[Path], expected: str, extra: str = "") -> DataError:
    where = " or ".join(str(d) for d in dirs)
    return DataError(f"{what} not found in {where}: put {expected} there{extra}. "
                     f"The data folder is paths.data_dir (env REGBENCH_DATA), or set data.dir=PATH.")


def locate_splits(dirs: list[Path], what: str, split_names: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """Find one file per split (any of its accepted names, optionally .gz) in the first dir that has it."""
    found = {}
    for split, names in split_names.items():
        path = _find(dirs, names)
        if path is None:
            wanted = ", ".join(f"{names[0]} ({split})" for split, names in split_names.items())
            raise _missing(what, dirs, wanted, f"; accepted names for {split}: {', '.join(names)} (optionally .gz)")
        found[split] = path
    return found


def check_conll2000(dirs: list[Path], download: bool) -> None:
    """Raise DataError when CoNLL-2000's files are neither on disk nor allowed to be downloaded."""
    if not download and not all(_find(dirs, (f"{split}.txt",)) for split in ("train", "test")):
        raise _missing("CoNLL-2000", dirs, "train.txt.gz and test.txt.gz (the original shared-task files)",
                       " or set data.download=true on a machine that is online")


def conll2000_files(dirs: list[Path], download: bool) -> dict[str, Path]:
    """train.txt.gz and test.txt.gz of CoNLL-2000, downloaded into dirs[0] when absent and allowed."""
    names = {"train": ("train.txt",), "test": ("test.txt",)}
    found = {split: _find(dirs, n) for split, n in names.items()}
    if all(found.values()):
        return found  # type: ignore[return-value]
    check_conll2000(dirs, download)
    target = dirs[0]
    for split, path in found.items():
        if path is None:
            found[split] = _download(CONLL2000_URL.format(name=f"{split}.txt.gz"), target / f"{split}.txt.gz", dirs)
    return found  # type: ignore[return-value]


def _download(url: str, target: Path, dirs: list[Path]) -> Path:
    try:
        download(url, target)
    except OSError as err:
        raise _missing("CoNLL-2000", dirs, "train.txt.gz and test.txt.gz",
                       f" (the download from {url} failed: {err})") from None
    return target
