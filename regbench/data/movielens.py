"""MovieLens loaders: the GroupLens zip files by their canonical names, read without extracting.

Accepted: `<name>.zip` or an extracted `<name>/` folder in `data.dir`, else `paths.data_dir/movielens`,
else `paths.data_dir`; when none is there and `data.download=true`, the zip is fetched from
files.grouplens.org into the first of those folders. Each set's files are parsed with the separator
and text encoding they really use (ml-100k and ml-1m are latin-1).
"""
from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regbench.data.files import download
from regbench.errors import DataError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-latest-small")
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class MovieLens:
    """Raw ids as in the files. `users` is None for the sets without user features (ml-10m, ml-20m,
    ml-latest-small)."""

    name: str
    ratings: pd.DataFrame        # user, item, rating, timestamp
    items: pd.DataFrame          # item, year (0 = unknown), genres (list of str)
    users: pd.DataFrame | None   # user, age, gender, occupation
    source: str


class _Files:
    """The members of a GroupLens zip or an extracted folder, found by file name whatever the top folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self._members = {p.name: p for p in path.rglob("*") if p.is_file()}
            self._zip = None
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise DataError(f"{path} is not a zip file (expected the GroupLens {path.name}): "
                                "re-download it or point data.dir at the extracted folder") from None
            self._members = {Path(n).name: n for n in self._zip.namelist() if not n.endswith("/")}

    def text(self, name: str, encoding: str) -> io.StringIO:
        if name not in self._members:
            raise DataError(f"{self.path} has no {name} (found: {', '.join(sorted(self._members)) or 'nothing'}): "
                            "is this the GroupLens file it is named after?")
        member = self._members[name]
        raw = self._zip.read(member) if self._zip is not None else Path(member).read_bytes()
        try:
            return io.StringIO(raw.decode(encoding))
        except UnicodeDecodeError as err:
            raise DataError(f"{self.path}: {name} is not {encoding} text ({err})") from None

    def table(self, name: str, encoding: str, **read_csv: Any) -> pd.DataFrame:
        """pandas.read_csv of one member; a malformed file is a DataError naming the file and pandas' line."""
        try:
            return pd.read_csv(self.text(name, encoding), **read_csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            raise DataError(f"{self.path}: {name} is malformed ({str(err).strip()}); re-download it") from None


def on_disk(name: str, dirs: list[Path], allow_download: bool) -> Path | None:
    """The zip or extracted folder of `name` in the first of `dirs` that holds one; None when there is none
    but a download is allowed; DataError when neither."""
    if name not in DATASETS:
        raise DataError(f"data.name={name!r} is not a MovieLens set this loader knows: choose one of {', '.join(DATASETS)}")
    for d in dirs:
        for candidate in (d / f"{name}.zip", d / name):
            if candidate.exists():
                return candidate
    if not allow_download:
        looked = ", ".join(str(d) for d in dirs)
        raise DataError(f"MovieLens {name}: no {name}.zip or {name}/ folder in {looked}; put the GroupLens file "
                        "there, set data.dir, or set data.download=true on a machine that is online")
    return None


def locate(name: str, dirs: list[Path], allow_download: bool) -> Path:
    """The zip or extracted folder of `name` in the first of `dirs` that holds one, else a download."""
    found = on_disk(name, dirs, allow_download)
    if found is not None:
        return found
    looked = ", ".join(str(d) for d in dirs)
    url = GROUPLENS_URL.format(name=name)
    try:
        return download(url, dirs[0] / f"{name}.zip")
    except OSError as err:
        raise DataError(f"MovieLens {name}: no {name}.zip or {name}/ folder in {looked}, and the download from "
                        f"{url} failed ({err}); download it by hand into one of those folders") from None


def load(name: str, path: Path) -> MovieLens:
    files = _Files(path)
    if name == "ml-100k":
        data = _ml100k(files)
    elif name == "ml-1m":
        data = _ml1m(files)
    elif name == "ml-10m":
        ratings = _ratings_dat(files, "utf-8")
        movies = files.table("movies.dat", "utf-8", sep="::", engine="python", header=None,
                             names=["item", "title", "genres"])
        data = MovieLens(name, ratings, _items_from_titles(movies), None, str(path))
    else:
        ratings = files.table("ratings.csv", "utf-8")
        ratings.columns = ["user", "item", "rating", "timestamp"][: len(ratings.columns)]
        movies = files.table("movies.csv", "utf-8")
        movies.columns = ["item", "title", "genres"][: len(movies.columns)]
        data = MovieLens(name, ratings, _items_from_titles(movies), None, str(path))
    ratings_file = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-10m": "ratings.dat"}.get(name, "ratings.csv")
    _check_numbers(data.ratings, f"{path}: {ratings_file}", header_lines=int(ratings_file.endswith(".csv")))
    return data


def _check_numbers(ratings: pd.DataFrame, where: str, header_lines: int) -> None:
    """A truncated or malformed ratings file fails here, with the first bad line named."""
    columns = ["user", "item", "rating", "timestamp"]
    if list(ratings.columns) != columns:
        raise DataError(f"{where}: expected the 4 columns user, item, rating, timestamp, found {len(ratings.columns)}")
    numeric = ratings[columns].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{where}, line {row + 1 + header_lines}: {ratings.iloc[row].tolist()} is not four numbers "
                        "(user, item, rating, timestamp); the file is damaged or truncated: re-download it")


def _ratings_dat(files: _Files, encoding: str) -> pd.DataFrame:
    return files.table("ratings.dat", encoding, sep="::", engine="python", header=None,
                       names=["user", "item", "rating", "timestamp"])


def _items_from_titles(movies: pd.DataFrame) -> pd.DataFrame:
    """ml-1m and later: the year is the "(1995)" at the end of the title, genres are "A|B"."""
    years = movies["title"].astype(str).str.extract(YEAR_IN_TITLE, expand=False).fillna(0).astype(int)
    genres = movies["genres"].fillna("").map(lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"])
    return pd.DataFrame({"item": movies["item"], "year": years, "genres": genres})


def _ml100k(files: _Files) -> MovieLens:
    ratings = files.table("u.data", "latin-1", sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
    users = files.table("u.user", "latin-1", sep="|", header=None,
                        names=["user", "age", "gender", "occupation", "zip"]).drop(columns="zip")
    cols = ["item", "title", "release", "video_release", "url", *ML100K_GENRES]
    raw = files.table("u.item", "latin-1", sep="|", header=None, names=cols)
    years = pd.to_datetime(raw["release"], format="%d-%b-%Y", errors="coerce").dt.year.fillna(0).astype(int)
    flags = raw[list(ML100K_GENRES)].to_numpy(dtype=bool)
    genres = [[g for g, on in zip(ML100K_GENRES, row) if on and g != "unknown"] for row in flags]
    items = pd.DataFrame({"item": raw["item"], "year": years, "genres": genres})
    return MovieLens("ml-100k", ratings, items, users, str(files.path))


def _ml1m(files: _Files) -> MovieLens:
    ratings = _ratings_dat(files, "latin-1")
    users = files.table("users.dat", "latin-1", sep="::", engine="python", header=None,
                        names=["user", "gender", "age", "occupation", "zip"]).drop(columns="zip")
    movies = files.table("movies.dat", "latin-1", sep="::", engine="python", header=None,
                         names=["item", "title", "genres"])
    return MovieLens("ml-1m", ratings, _items_from_titles(movies), users[["user", "age", "gender", "occupation"]],
                     str(files.path))


def categorical_codes(values: pd.Series) -> np.ndarray:
    """Codes 1..n for the distinct values (0 is kept for "unknown")."""
    return pd.factorize(values.astype(str), sort=True)[0] + 1
