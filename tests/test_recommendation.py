"""MovieLens task: loader, split protocol, ranking metrics against hand-worked values, the models'
regularizer mapping, and real runs on a synthetic ml-100k zip and on the real one."""
from __future__ import annotations

import math
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ML_ITEMS, ML_USERS, SHARED_DATA, make_ml100k_zip
from regbench import ranking
from regbench.data import interactions, movielens
from regbench.data.files import sha256_of
from regbench.errors import ConfigError, DataError
from regbench.models import build_model, two_tower
from regbench.regimen import Regimen
from regbench.tasks.recommendation import MovieLensTask
from regbench.validation import validate

# -- ranking metrics ---------------------------------------------------------------------------


def test_metrics_match_hand_worked_values():
    hits = torch.tensor([[True, False, True, False],    # 3 relevant items, hits at ranks 1 and 3
                         [False, False, True, False]])  # 1 relevant item, hit at rank 3
    out = ranking.per_user_metrics(hits, torch.tensor([3, 1]), [2, 4])
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    expected = {
        "hit@4": [1, 1], "precision@4": [0.5, 0.25], "recall@4": [2 / 3, 1], "mrr@4": [1, 1 / 3],
        "ndcg@4": [(1 + 1 / math.log2(4)) / idcg3, (1 / math.log2(4)) / 1],
        # K=2: the ideal DCG runs over min(R, K) = 2 hits for the first user
        "hit@2": [1, 0], "precision@2": [0.5, 0], "recall@2": [1 / 3, 0], "mrr@2": [1, 0],
        "ndcg@2": [1 / (1 + 1 / math.log2(3)), 0],
    }
    for key, values in expected.items():
        assert out[key].tolist() == pytest.approx(values, abs=1e-6), key


def test_metrics_match_torchmetrics_retrieval_values():
    """torchmetrics 1.9.0's RetrievalHitRate, RetrievalPrecision, RetrievalRecall, RetrievalMRR and
    RetrievalNormalizedDCG (top_k=K, one query per user) on these scores, computed on 2026-12-06 and copied."""
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.5, 0.7, 0.2, 0.4], [0.2, 0.6, 0.1, 0.9, 0.3, 0.8, 0.5, 0.7],
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.9, 0.8, 0.7], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])
    relevant = torch.tensor([[1, 0, 0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0, 1]]).bool()
    torchmetrics = {"hit@3": 0.75, "precision@3": 0.25, "recall@3": 0.2708333432674408, "mrr@3": 0.625,
                    "ndcg@3": 0.331352561712265, "hit@5": 0.75, "precision@5": 0.15000000596046448,
                    "recall@5": 0.2708333432674408, "mrr@5": 0.625, "ndcg@5": 0.31162789463996887}
    hits = relevant.gather(1, ranking.top_k(scores, 5))
    ours = {k: float(v.mean()) for k, v in ranking.per_user_metrics(hits, relevant.sum(1), [3, 5]).items()}
    assert ours == pytest.approx(torchmetrics, rel=1e-6)


def test_top_k_breaks_ties_towards_the_lower_item_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert ranking.top_k(scores, 4).tolist() == [[1, 2, 4, 3]]


# -- split -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,expected", [(10, [8, 1, 1]), (5, [3, 1, 1]), (2, [1, 0, 1]), (1, [1, 0, 0]),
                                        (23, [19, 2, 2])])
def test_ratio_counts_follow_recbole(n, expected):
    assert interactions.ratio_counts(n, (0.8, 0.1, 0.1)) == expected


def random_ratings(n_users=20, n_items=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(u, i, int(rng.integers(1, 6)), int(rng.integers(10**8, 10**9)))
            for u in range(1, n_users + 1) for i in rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(3, 15)),
                                                               replace=False)]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_the_split_is_per_user_disjoint_complete_and_deterministic():
    ratings = random_ratings()
    split, users, items = interactions.build_split(ratings, min_rating=None, min_user_interactions=0,
                                                   method="random", ratios=(0.8, 0.1, 0.1), seed=3)
    keys = {s: set(zip(f["user"], f["item"])) for s, f in split.frames().items()}
    assert not (keys["train"] & keys["valid"] or keys["train"] & keys["test"] or keys["valid"] & keys["test"])
    assert sum(len(k) for k in keys.values()) == len(ratings)
    for user, rows in ratings.groupby("user"):
        index = int(np.searchsorted(users, user))
        per_split = [sum(1 for u, _ in keys[s] if u == index) for s in interactions.SPLITS]
        assert per_split == interactions.ratio_counts(len(rows), (0.8, 0.1, 0.1))
    again, _, _ = interactions.build_split(ratings, min_rating=None, min_user_interactions=0, method="random",
                                           ratios=(0.8, 0.1, 0.1), seed=3)
    other, _, _ = interactions.build_split(ratings, min_rating=None, min_user_interactions=0, method="random",
                                           ratios=(0.8, 0.1, 0.1), seed=4)
    assert again.test.equals(split.test) and not other.test.equals(split.test)


def test_leave_last_out_takes_each_users_latest_interactions_and_filters_are_counted():
    ratings = random_ratings()
    split, users, items = interactions.build_split(ratings, min_rating=3, min_user_interactions=4,
                                                   method="leave_last_out", ratios=(0.8, 0.1, 0.1), seed=0)
    kept = ratings[ratings.rating >= 3]
    n_small = int((kept.groupby("user").size() < 4).sum())
    assert split.counts["users_dropped_too_few_interactions"] == n_small
    assert split.counts["users"] == kept.user.nunique() - n_small
    for index, row in split.test.iterrows():
        user_rows = pd.concat([f[f.user == row.user] for f in split.frames().values()])
        assert row.timestamp == user_rows.timestamp.max()
        assert split.valid[split.valid.user == row.user].timestamp.iloc[0] <= row.timestamp


def test_ml100k_loader_reads_latin1_items_genres_years_and_user_features(tiny_ml_dir):
    data = movielens.load("ml-100k", movielens.locate("ml-100k", [tiny_ml_dir], allow_download=False))
    assert len(data.ratings) == ML_USERS * 15 and len(data.items) == ML_ITEMS and len(data.users) == ML_USERS
    item7 = data.items.set_index("item").loc[7]
    assert item7.year == 1957 and item7.genres == [g for k, g in enumerate(movielens.ML100K_GENRES)
                                                    if (7 + k) % 7 == 0 and g != "unknown"]
    assert data.items.set_index("item").loc[5].year == 0  # missing release date
    assert set(data.users.columns) == {"user", "age", "gender", "occupation"}


def test_ml1m_and_csv_sets_parse_their_own_formats(tmp_path):
    with zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as z:
        z.writestr("ml-1m/ratings.dat", "1::10::5::978300760\n2::20::3::978302109\n")
        z.writestr("ml-1m/users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
        z.writestr("ml-1m/movies.dat", "10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n".encode("latin-1"))
    data = movielens.load("ml-1m", movielens.locate("ml-1m", [tmp_path], allow_download=False))
    assert data.ratings.values.tolist() == [[1, 10, 5, 978300760], [2, 20, 3, 978302109]]
    assert data.items.set_index("item").loc[10].tolist() == [2001, ["Comedy", "Romance"]]
    assert data.users.set_index("user").loc[2].tolist() == [56, "M", 16]
    folder = tmp_path / "ml-latest-small"  # an extracted folder works as well as the zip
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    (folder / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n')
    data = movielens.load("ml-latest-small", movielens.locate("ml-latest-small", [tmp_path], allow_download=False))
    assert data.users is None and data.items.iloc[0].tolist() == [1, 1995, ["Adventure", "Animation"]]


def test_missing_or_broken_files_get_errors_that_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"no ml-1m.zip or ml-1m/ folder in .*data.download=true"):
        movielens.locate("ml-1m", [tmp_path], allow_download=False)
    (tmp_path / "ml-100k.zip").write_text("not a zip")
    with pytest.raises(DataError, match="is not a zip file"):
        movielens.load("ml-100k", tmp_path / "ml-100k.zip")


def test_popularity_run_excludes_seen_items_and_writes_split_and_top_k(small_run):
    record, run_dir = small_run("movielens", "model=popularity")
    assert record["status"] == "completed" and record["epochs_run"] == 0 and record["best_epoch"] == 0
    assert record["primary_metric"] == "ndcg@10" and 0 <= record["test"]["ndcg@10"] <= 1
    assert {"hit@20", "precision@10", "recall@20", "mrr@10"} <= set(record["test"])
    split = {s: pd.read_csv(run_dir / "split" / f"{s}.csv") for s in ("train", "valid", "test")}
    assert sum(len(f) for f in split.values()) == ML_USERS * 15
    topk = pd.read_csv(run_dir / "test_topk.csv")
    assert list(topk.columns) == ["user", "rank", "item", "score"] and topk["rank"].max() == 20
    seen = set(zip(split["train"].user, split["train"].item)) | set(zip(split["valid"].user, split["valid"].item))
    assert not seen & set(zip(topk.user, topk.item))  # training and validation items are never recommended
    # popularity: every user's list is the most-counted unseen items, in count order
    counts = split["train"].item.value_counts()
    first = topk[topk.user == topk.user.iloc[0]]
    assert list(first.score) == sorted(first.score, reverse=True)
    assert first.score.iloc[0] == counts[first.item.iloc[0]]


@pytest.mark.parametrize("model", ["mf", "two_tower"])
@pytest.mark.parametrize("extra", [[], ["model.loss=softmax", "model.negatives=in_batch"],
                                   ["model.loss=bpr", "model.negatives=uniform"],
                                   ["model.loss=softmax", "model.negatives=uniform", "model.num_negatives=4",
                                    "model.score=cosine"]])
def test_trainable_models_train_with_every_loss(small_run, model, extra):
    record, run_dir = small_run("movielens", f"model={model}", "optimizer.lr=0.01", *extra)
    assert record["status"] == "completed" and record["epochs_run"] == 3
    history = pd.read_csv(run_dir / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_two_tower_runs_under_the_full_regimen_and_records_clipping(small_run):
    record, run_dir = small_run("movielens", "regularizer=bn_dropout_gc")
    history = pd.read_csv(run_dir / "history.csv")
    assert record["status"] == "completed" and np.isfinite(history["train_loss"]).all()
    assert history["clip_rate"].between(0, 1).all()


def test_regimens_map_onto_the_tower_mlps_and_mf_embeddings(compose_cfg):
    inputs = two_tower.TowerInputs(10, [3]), two_tower.TowerInputs(12, [4], 5)
    # bn's layers are "all" (embeddings and MLP layer, in both towers); dropout's "default" is the MLP only
    def build(*overrides):
        cfg = compose_cfg("task=movielens", *overrides)
        return build_model(cfg, Regimen.from_config(cfg), exclude=MovieLensTask.task_model_keys, users=inputs[0],
                           items=inputs[1], item_counts=None)

    for regimen, bn, drop in (("none", 0, 0), ("bn", 4, 0), ("dropout", 0, 2), ("bn_dropout", 4, 2)):
        model = build(f"regularizer={regimen}")
        kinds = [type(m) for m in model.modules()]
        assert (kinds.count(torch.nn.BatchNorm1d), kinds.count(torch.nn.Dropout)) == (bn, drop), regimen
        assert torch.nn.Dropout not in [type(m) for m in model.user_tower.input_layer]
    assert len(build("regularizer=dropout", "regularizer.dropout.layers=all").user_tower.input_layer) == 1
    mf = build("model=mf", "regularizer=bn_dropout")
    assert mf.user_tower.project is None and [type(m) for m in mf.user_tower.input_layer] == [
        torch.nn.BatchNorm1d, torch.nn.Dropout]


@pytest.mark.parametrize("override,message", [
    ("data.valid_metric=ndcg@5", r"data.valid_metric='ndcg@5' is not computed: choose one of .*ndcg@10"),
    ("data.ratios=[0.5,0.5,0.5]", r"data.ratios=.* sum to 1"),
    ("data.name=ml-5m", r"data.name='ml-5m' is not allowed"),
    ("model.loss=bpr", r"model.loss=bpr samples its negatives uniformly"),
    ("model=cnn13", r"model=cnn13 does not fit task=movielens"),
])
def test_bad_recommendation_config_is_named(compose_cfg, override, message):
    """(two_tower's defaults are in-batch softmax, so model.loss=bpr alone leaves in-batch negatives.)"""
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg("task=movielens", override), machine=False)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "movielens" / "ml-100k.zip").is_file(), reason="../shared/data is absent")
def test_real_ml100k_mf_beats_popularity(small_run):
    base = ["data.dir=null", f"paths.data_dir={SHARED_DATA}", "trainer.save_checkpoint=false",
            "trainer.batch_size=2048"]
    pop, _ = small_run("movielens", *base, "model=popularity", name="pop")
    mf, _ = small_run("movielens", *base, "model=mf", "optimizer.lr=0.005", "trainer.max_epochs=12", name="mf")
    assert pop["data"]["users"] == 943 and pop["data"]["items"] == 1682 and pop["data"]["users_without_test"] == 0
    assert pop["data"]["train_interactions"] + pop["data"]["valid_interactions"] + pop["data"]["test_interactions"] \
        == 100_000
    assert mf["test"]["ndcg@10"] > pop["test"]["ndcg@10"] + 0.03


def test_a_malformed_ratings_line_is_named_with_its_file_and_line(tmp_path):
    good = make_ml100k_zip(tmp_path / "good.zip")
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    lines = members["ml-100k/u.data"].decode().splitlines()
    lines[6] = "7\t12\tfive\t881250949"  # a damaged line
    for name, data in (("damaged", "\n".join(lines) + "\n"), ("truncated", "\n".join(lines[:3]) + "\n8\t1")):
        folder = tmp_path / name
        folder.mkdir()
        with zipfile.ZipFile(folder / "ml-100k.zip", "w") as z:
            for member, content in members.items():
                z.writestr(member, data if member.endswith("u.data") else content)
        expected = r"u.data, line 7: .* is not four numbers" if name == "damaged" else r"u.data, line 4: "
        with pytest.raises(DataError, match=expected):
            movielens.load("ml-100k", folder / "ml-100k.zip")


def test_a_zip_whose_sha256_differs_is_refused_with_both_hashes(small_run, tiny_ml_dir):
    actual = sha256_of(tiny_ml_dir / "ml-100k.zip")
    record, _ = small_run("movielens", "model=popularity", f"data.sha256={actual}")
    assert record["data"]["sha256"] == actual
    with pytest.raises(DataError, match=f"has sha256 {actual}, but {'0' * 64} was expected"):
        small_run("movielens", "model=popularity", "data.sha256=" + "0" * 64, name="refused")


def test_compiled_training_matches_eager_and_reports_compile_time(small_run):
    """trainer.compile=true: torch.compile trains the model; the first step's compilation is timed apart."""
    base = ("model=mf", "trainer.max_epochs=2", "trainer.save_checkpoint=false")
    eager, _ = small_run("movielens", *base, name="eager")
    compiled, _ = small_run("movielens", *base, "trainer.compile=true", name="compiled")
    assert eager["compile_time_s"] is None and compiled["compile_time_s"] > 0
    assert compiled["train_time_s"] < compiled["compile_time_s"]  # compilation is not training time
    assert compiled["run_id"] != eager["run_id"]
    for split in ("val", "test"):
        assert compiled[split]["ndcg@10"] == pytest.approx(eager[split]["ndcg@10"], abs=1e-4)
        assert compiled[split]["loss"] == pytest.approx(eager[split]["loss"], rel=1e-4)
