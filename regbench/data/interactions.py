"""Implicit-feedback interactions and their per-user train/valid/test split.

The ratio split is RecBole's (`split_by_ratio` with `_calcu_split_ids`, its default `RS: [0.8, 0.1,
0.1]` with `order: RO`), re-implemented so that published numbers under that protocol compare:
per user, the interactions are shuffled and cut into int(ratio * n) for valid and test and the rest
for train, and a split whose share is between 0 and 1 interaction still gets one as long as train
keeps more than one. Written by hand because RecBole is a whole framework, not a splitting library.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")


@dataclass
class Split:
    train: pd.DataFrame   # user, item (contiguous indices), rating, timestamp
    valid: pd.DataFrame
    test: pd.DataFrame
    counts: dict[str, int]  # what was dropped or is left without a valid/test part, for the record

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


def ratio_counts(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """How many of a user's n interactions go to train, valid and test (RecBole's _calcu_split_ids)."""
    cnt = [int(r * n) for r in ratios]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def split_by_ratio(df: pd.DataFrame, ratios: tuple[float, float, float], seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for _, rows in df.groupby("user", sort=True).indices.items():
        rows = rng.permutation(rows)
        a, b, _ = ratio_counts(len(rows), ratios)
        parts["train"].append(rows[:a])
        parts["valid"].append(rows[a:a + b])
        parts["test"].append(rows[a + b:])
    return {s: df.iloc[np.sort(np.concatenate(parts[s]))].reset_index(drop=True) for s in SPLITS}


def split_leave_last_out(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per user by time: the last interaction is test, the one before it valid (users with >= 3)."""
    ordered = df.sort_values(["user", "timestamp"], kind="stable")
    rank_from_end = ordered.groupby("user").cumcount(ascending=False)
    size = ordered.groupby("user")["item"].transform("size")
    test = (rank_from_end == 0) & (size >= 3)
    valid = (rank_from_end == 1) & (size >= 3)
    return {"train": ordered[~test & ~valid].reset_index(drop=True), "valid": ordered[valid].reset_index(drop=True),
            "test": ordered[test].reset_index(drop=True)}


def build_split(ratings: pd.DataFrame, *, min_rating: float | None, min_user_interactions: int, method: str,
                ratios: tuple[float, float, float], seed: int) -> tuple[Split, np.ndarray, np.ndarray]:
    """Filter, re-index users and items to 0..n-1, split. Returns the split and the raw user and item ids
    of each index."""
    counts: dict[str, int] = {"ratings": len(ratings)}
    df = ratings
    if min_rating is not None:
        df = df[df["rating"] >= min_rating]
    counts["interactions"] = len(df)
    per_user = df.groupby("user")["item"].transform("size")
    counts["users_dropped_too_few_interactions"] = int(df.loc[per_user < min_user_interactions, "user"].nunique())
    df = df[per_user >= min_user_interactions]
    df = df.drop_duplicates(["user", "item"], keep="last")
    user_ids, users = np.unique(df["user"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(df["item"].to_numpy(), return_inverse=True)
    df = pd.DataFrame({"user": users, "item": items, "rating": df["rating"].to_numpy(),
                       "timestamp": df["timestamp"].to_numpy()})
    parts = split_by_ratio(df, ratios, seed) if method == "random" else split_leave_last_out(df)
    n_users = len(user_ids)
    counts.update(users=n_users, items=len(item_ids), **{f"{s}_interactions": len(parts[s]) for s in SPLITS})
    counts["users_without_valid"] = n_users - parts["valid"]["user"].nunique()
    counts["users_without_test"] = n_users - parts["test"]["user"].nunique()
    return Split(parts["train"], parts["valid"], parts["test"], counts), user_ids, item_ids
