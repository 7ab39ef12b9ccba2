"""Top-K recommendation on MovieLens (implicit feedback) with two_tower, mf or popularity, scored by
full ranking over all items (regbench.ranking), RecBole's protocol by default.

Everything lives on the run's device: the training pairs, the side features, the per-split
interaction lists. Evaluation computes the item vectors once, then scores users in chunks against
every item, with the items the user already interacted with in earlier splits masked out.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks, ranking
from regbench.data import interactions, movielens
from regbench.data.files import verify_sha256
from regbench.errors import ConfigError
from regbench.fileio import write_csv_atomic
from regbench.models.two_tower import TowerInputs
from regbench.regimen import Regimen
from regbench.tasks.base import Task

AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # ml-1m's age groups, also applied to ml-100k's exact ages
FIRST_YEAR, LAST_YEAR = 1900, 2030        # release decades coded 1.. from FIRST_YEAR; 0 = unknown year
N_DECADES = (LAST_YEAR - FIRST_YEAR) // 10 + 1
NEGATIVE_RESAMPLE_ROUNDS = 10
SPLIT_DIR = "split"
log = logging.getLogger(__name__)


class MovieLensTask(Task):
    name = "movielens"
    inputs = "interactions"  # two_tower, mf, popularity
    task_model_keys: ClassVar[tuple[str, ...]] = ("loss", "negatives", "num_negatives")  # the training objective
    primary_metric = "ndcg@10"
    metric_directions = {"hit": True, "precision": True, "recall": True, "mrr": True, "ndcg": True}
    equivalent_keys = {"data.limit_train": "data.max_users", "data.limit_eval": "data.max_users"}

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        d = cfg.data
        checks.choice(cfg, "data.name", movielens.DATASETS)
        checks.choice(cfg, "data.split", ("random", "leave_last_out"))
        checks.boolean(cfg, "data.download")
        sha = d.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdefABCDEF"
                                                                                   for c in sha)):
            raise ConfigError(f"data.sha256={sha!r} is invalid: it must be 64 hexadecimal digits or null")
        checks.number(cfg, "data.min_rating", allow_none=True)
        checks.number(cfg, "data.max_users", low=1, integer=True, allow_none=True)
        checks.number(cfg, "data.min_user_interactions", low=0, integer=True)
        checks.number(cfg, "data.split_seed", low=0, integer=True)
        checks.number(cfg, "data.train_eval_users", low=1, integer=True)
        ratios = list(d.ratios)
        if len(ratios) != 3 or any(not isinstance(r, (int, float)) or r < 0 for r in ratios) \
                or abs(sum(ratios) - 1) > 1e-6 or ratios[0] <= 0:
            raise ConfigError(f"data.ratios={ratios!r} is invalid: three non-negative shares of train, valid and "
                              "test that sum to 1, e.g. [0.8,0.1,0.1]")
        ks = list(d.ks)
        if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
            raise ConfigError(f"data.ks={ks!r} is invalid: a list of positive cut-offs, e.g. [10,20]")
        allowed = [f"{m}@{k}" for m in ranking.METRICS for k in ks]
        if d.valid_metric not in allowed:
            raise ConfigError(f"data.valid_metric={d.valid_metric!r} is not computed: choose one of "
                              f"{', '.join(allowed)} (the cut-offs come from data.ks)")

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        movielens.on_disk(cfg.data.name, cls.data_dirs(cfg), cfg.data.download)

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        d = cfg.data
        self.primary_metric = d.valid_metric
        self.ks = sorted(set(d.ks))
        self.source = movielens.locate(d.name, self.data_dirs(cfg), d.download)
        # the zip's hash goes into the record; with data.sha256 set, a different file is refused
        self.sha256 = verify_sha256(self.source, d.get("sha256")) if self.source.is_file() else None
        self.dataset = self.read_once("dataset", lambda: movielens.load(d.name, self.source))
        ratings = self.dataset.ratings
        if d.max_users:
            ratings = ratings[ratings["user"].isin(np.sort(ratings["user"].unique())[: d.max_users])]
        self.split, self.user_ids, self.item_ids = interactions.build_split(
            ratings, min_rating=d.min_rating, min_user_interactions=d.min_user_interactions,
            method=d.split, ratios=tuple(d.ratios), seed=d.split_seed)
        if self.split.counts["interactions"] == 0 or len(self.split.train) == 0:
            raise ConfigError(f"data.min_rating={d.min_rating} / data.min_user_interactions={d.min_user_interactions} "
                              f"leave no training interactions in {d.name}: lower them")
        self.n_users, self.n_items = len(self.user_ids), len(self.item_ids)
        frames = self.split.frames()
        self.pairs = {s: (torch.tensor(f["user"].to_numpy(), device=device),
                          torch.tensor(f["item"].to_numpy(), device=device)) for s, f in frames.items()}
        train_users, train_items = self.pairs["train"]
        self.item_counts = torch.bincount(train_items, minlength=self.n_items).float()
        self.log_q = torch.log(self.item_counts.clamp(min=1) / self.item_counts.sum())  # in-batch sampling odds
        self.train_keys = torch.sort(train_users * self.n_items + train_items).values
        # Negative sampling stops redrawing once no negative is a training item. Knowing that needs a
        # host read, which on a GPU stalls every step for longer than the remaining rounds take.
        self.stop_sampling_early = device.type == "cpu"
        self.topk: tuple[Tensor, Tensor, Tensor] | None = None
        self._test_outputs: dict[str, Any] | None = None  # set by evaluate(model, "test") when kept

    # -- features ------------------------------------------------------------------------------
    def _user_features(self) -> tuple[list[int], Tensor]:
        users = self.dataset.users
        if users is None:
            return [], torch.zeros(self.n_users, 0, dtype=torch.long)
        users = users.set_index("user").reindex(self.user_ids)
        age = np.searchsorted(AGE_BUCKETS, users["age"].fillna(0).to_numpy(), side="right") + 1
        codes = [age, movielens.categorical_codes(users["gender"]), movielens.categorical_codes(users["occupation"])]
        sizes = [len(AGE_BUCKETS) + 1, int(codes[1].max()), int(codes[2].max())]
        return sizes, torch.as_tensor(np.stack(codes, axis=1), dtype=torch.long)

    def _item_features(self) -> tuple[list[int], Tensor, Tensor]:
        items = self.dataset.items.set_index("item").reindex(self.item_ids)
        year = items["year"].fillna(0).astype(int).to_numpy()
        decade = np.where(year > 0, (year - FIRST_YEAR).clip(0, LAST_YEAR - FIRST_YEAR) // 10 + 1, 0)
        genres = sorted({g for gs in items["genres"].dropna() for g in gs})
        index = {g: i for i, g in enumerate(genres)}
        multi = torch.zeros(self.n_items, len(genres))
        for row, gs in enumerate(items["genres"]):
            for g in gs if isinstance(gs, list) else []:
                multi[row, index[g]] = 1.0
        return [N_DECADES], torch.as_tensor(decade[:, None], dtype=torch.long), multi

    def model_inputs(self) -> dict[str, Any]:
        user_sizes, self._user_cats = self._user_features()
        item_sizes, self._item_cats, self._item_multi = self._item_features()
        return {"users": TowerInputs(self.n_users, user_sizes),
                "items": TowerInputs(self.n_items, item_sizes, self._item_multi.shape[1]),
                "item_counts": self.item_counts}

    def build_model(self, regimen: Regimen) -> nn.Module:
        model = super().build_model(regimen)
        if hasattr(model, "set_features"):  # the towers look their side features up by id
            model.set_features(self._user_cats, torch.zeros(self.n_users, 0), self._item_cats, self._item_multi)
        return model

    # -- training ------------------------------------------------------------------------------
    def num_train_batches(self) -> int:
        return math.ceil(len(self.split.train) / self.cfg.trainer.batch_size)

    def _in_train(self, keys: Tensor) -> Tensor:
        """Whether each user * n_items + item key is a training interaction (binary search; torch.isin
        is 30x slower here)."""
        at = torch.searchsorted(self.train_keys, keys).clamp(max=len(self.train_keys) - 1)
        return self.train_keys[at] == keys

    def _negatives(self, users: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """Uniform items the user has not interacted with in train (redrawn up to 10 times, as RecBole)."""
        users = users[:, None].expand(-1, n)
        neg = torch.randint(self.n_items, users.shape, generator=generator, device=generator.device)
        for _ in range(NEGATIVE_RESAMPLE_ROUNDS):
            seen = self._in_train(users * self.n_items + neg)
            if self.stop_sampling_early and not seen.any():
                break
            fresh = torch.randint(self.n_items, users.shape, generator=generator, device=generator.device)
            neg = torch.where(seen, fresh, neg)
        return neg

    def train_batches(self, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
        users, items = self.pairs["train"]
        order = torch.randperm(len(users), generator=generator, device=generator.device)
        bs = self.cfg.trainer.batch_size
        m = self.cfg.model
        n_neg = m.num_negatives if m.get("negatives", "uniform") == "uniform" else 0
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            batch = {"users": users[idx], "items": items[idx]}
            if n_neg:
                batch["negatives"] = self._negatives(batch["users"], n_neg, generator)
            yield batch

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        m = self.cfg.model
        users, pos = batch["users"], batch["items"]
        u = model.user_vectors(users)
        if m.negatives == "in_batch":
            logits = model.logits(u, model.item_vectors(pos)) - self.log_q[pos][None, :]  # log-Q correction
            same = pos[None, :] == pos[:, None]
            logits = logits.masked_fill(same & ~torch.eye(len(pos), dtype=torch.bool, device=pos.device),
                                        float("-inf"))  # another row's positive that is this row's too
            loss = nn.functional.cross_entropy(logits.float(), torch.arange(len(pos), device=pos.device))
        else:
            neg = batch["negatives"]
            vectors = model.item_vectors(torch.cat([pos, neg.flatten()]))  # one pass: one set of BN statistics
            vp, vn = vectors[: len(pos)], vectors[len(pos):].view(*neg.shape, -1)
            pos_s, neg_s = model.pair_scores(u, vp), model.pair_scores(u[:, None], vn)
            if m.loss == "bpr":
                loss = nn.functional.softplus(neg_s - pos_s[:, None]).mean()
            else:
                logits = torch.cat([pos_s[:, None], neg_s], dim=1).float()
                loss = nn.functional.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))
        n = torch.full((), float(len(pos)), device=pos.device)
        return loss, {"loss_sum": loss.detach() * n, "count": n}

    def loss_names(self) -> dict[str, str]:
        m = self.cfg.model
        train = ("in-batch softmax cross-entropy (log-Q corrected)" if m.get("negatives") == "in_batch" else
                 f"BPR loss on sampled negatives ({m.get('num_negatives')} per positive)" if m.get("loss") == "bpr" else
                 f"softmax cross-entropy on sampled negatives ({m.get('num_negatives')} per positive)")
        return {"train": train if self.cfg.model.name != "popularity" else "none (nothing is trained)",
                "val": "cross-entropy of each held-out item against all items"}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / sums["count"]}

    # -- evaluation ----------------------------------------------------------------------------
    def _dense(self, split: str, lo: int, hi: int) -> Tensor:
        """(hi - lo, n_items) bool: the split's interactions of users lo..hi-1."""
        users, items = self.pairs[split]
        keep = (users >= lo) & (users < hi)
        out = torch.zeros(hi - lo, self.n_items, dtype=torch.bool, device=self.device)
        out[users[keep] - lo, items[keep]] = True
        return out

    def evaluate(self, model: nn.Module, split: str) -> dict[str, Any]:
        split = {"val": "valid"}.get(split, split)
        excluded = {"train": (), "valid": ("train",), "test": ("train", "valid")}[split]
        n_users = self.n_users if split != "train" else min(self.n_users, self.cfg.data.train_eval_users)
        max_k = max(self.ks)
        item_vectors = model.item_vectors()
        sums: dict[str, Tensor] = {}
        n_scored = 0
        loss_sum, loss_count = torch.zeros((), device=self.device), 0
        keep_topk = split == "test"
        keep_scores = keep_topk and self._keeps_test_scores()
        topk_items, topk_scores, kept_scores, kept_relevant = [], [], [], []
        chunk = self.cfg.trainer.eval_batch_size
        for lo in range(0, n_users, chunk):
            hi = min(lo + chunk, n_users)
            users = torch.arange(lo, hi, device=self.device)
            scores = model.logits(model.user_vectors(users), item_vectors).float()
            relevant = self._dense(split, lo, hi)
            for other in excluded:
                scores = scores.masked_fill(self._dense(other, lo, hi), float("-inf"))
            # loss: cross-entropy of each relevant item against every candidate item
            log_probs = scores - torch.logsumexp(scores, dim=1, keepdim=True)
            loss_sum += -log_probs[relevant].sum()
            loss_count += int(relevant.sum())
            top = ranking.top_k(scores, max_k)
            n_relevant = relevant.sum(1)
            has = n_relevant > 0
            per_user = ranking.per_user_metrics(relevant.gather(1, top)[has], n_relevant[has], self.ks)
            for key, values in per_user.items():
                sums[key] = sums.get(key, 0) + values.sum()
            if keep_scores:
                kept_scores.append(scores[has].cpu())
                kept_relevant.append(relevant[has].nonzero().cpu() + torch.tensor([n_scored, 0]))
            n_scored += int(has.sum())
            if keep_topk:
                topk_items.append(top)
                topk_scores.append(scores.gather(1, top))
        if keep_topk:
            self.topk = (torch.arange(n_users), torch.cat(topk_items).cpu(), torch.cat(topk_scores).cpu())
        if keep_scores:
            self._test_outputs = {"kind": "ranking", "scores": torch.cat(kept_scores).numpy().astype(np.float32),
                                  "relevant": torch.cat(kept_relevant).numpy().astype(np.int64),
                                  "ks": np.asarray(self.ks, np.int64)}
        result: dict[str, Any] = {k: float(v) / max(1, n_scored) for k, v in sums.items()}
        result["loss"] = float(loss_sum) / max(1, loss_count)
        result["users"] = n_scored
        return result

    def _keeps_test_scores(self) -> bool:
        """Whether the test users x items score matrix goes to test_outputs.npz. 943 x 1,682 float32 on
        ml-100k is 6 MB; ml-1m's is 90 MB and ml-20m's 14.8 GB, so above trainer.test_outputs_max_mb it is
        not even gathered (an ensemble of such runs would need each member's top items instead)."""
        t = self.cfg.trainer
        n_test_users = len(torch.unique(self.pairs["test"][0]))
        size_mb = n_test_users * self.n_items * 4 / 2**20
        if t.test_outputs and size_mb > t.test_outputs_max_mb:
            log.warning("test_outputs.npz not written: the test score matrix (%d users x %d items) would be %.0f MB, "
                        "over trainer.test_outputs_max_mb=%s", n_test_users, self.n_items, size_mb,
                        t.test_outputs_max_mb)
        return bool(t.test_outputs) and size_mb <= t.test_outputs_max_mb

    def test_outputs(self) -> dict[str, Any] | None:
        return self._test_outputs

    def example_input(self) -> tuple[Tensor, ...]:
        users, items = self.pairs["train"]
        return users[:1], items[:1]

    # -- outputs -------------------------------------------------------------------------------
    def write_outputs(self, run_dir: Path) -> None:
        """split/{train,valid,test}.csv with the raw ids, and test_topk.csv (user, rank, item, score)."""
        for name, frame in self.split.frames().items():
            out = frame.assign(user=self.user_ids[frame["user"].to_numpy()], item=self.item_ids[frame["item"].to_numpy()])
            write_csv_atomic(run_dir / SPLIT_DIR / f"{name}.csv", out[["user", "item", "rating", "timestamp"]])
        if self.topk is None:
            return
        users, items, scores = self.topk
        test_users = torch.unique(self.pairs["test"][0]).cpu()
        keep = torch.isin(users, test_users)
        users, items, scores = users[keep], items[keep], scores[keep]
        k = items.shape[1]
        table = pd.DataFrame({"user": np.repeat(self.user_ids[users.numpy()], k),
                              "rank": np.tile(np.arange(1, k + 1), len(users)),
                              "item": self.item_ids[items.numpy().ravel()], "score": scores.numpy().ravel()})
        write_csv_atomic(run_dir / "test_topk.csv", table)

    def data_summary(self) -> dict[str, Any]:
        return {"name": self.dataset.name, "source": str(self.source), "sha256": self.sha256,
                "split": self.cfg.data.split,
                "ratios": list(self.cfg.data.ratios), **self.split.counts,
                "user_features": self.dataset.users is not None}
