import json

import numpy as np
import polars as pl
import pytest
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core._errors import EmbrmError
from embrm.data._dataset import Dataset
from embrm.data._labels import pair_indices, simulate_pairs, split_prompts
from embrm.evaluation._heldout import gold_order_pairs
from embrm.evaluation._metrics import pairwise_accuracy
from embrm.methods._moe import MoEReward, moe_study
from embrm.rewards.heads import LinearBT


def category_pool(P=240, N=8, dim=16, n_cat=3, same_direction=False, seed=0):
    """Prompts in n_cat well-separated categories (by prompt embedding); within category c the gold is u_c . x,
    with orthonormal u_c (or one shared direction)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cat, dim)) * 2
    cat = rng.integers(n_cat, size=P)
    mu = centres[cat] + rng.normal(size=(P, dim)) * 0.5
    p = np.repeat(np.arange(P), N)
    X = (mu[p] + rng.normal(size=(P * N, dim))).astype(np.float32)
    U = np.linalg.qr(rng.normal(size=(dim, n_cat)))[0].T
    if same_direction:
        U = np.repeat(U[:1], n_cat, axis=0)
    gold = np.einsum("ij,ij->i", X, U[cat[p]])
    df = pl.DataFrame({"prompt_id": [f"p{i:04d}" for i in p], "response_id": [f"r{i}" for i in range(P * N)],
                       "gold": gold, "scored": True, "category": np.array(list("abcdefgh"))[cat[p]]})
    return df, X


def fit_both(df, X, categories=True, n_pairs=2500, **params):
    train, test = split_prompts(df["prompt_id"], 0.3, seed=0)
    pairs = pair_indices(simulate_pairs(df, n_pairs, beta=10, prompt_ids=train, seed=0), df)
    pid = df["prompt_id"].to_numpy()
    moe = MoEReward(3, **params).fit(X, pairs, pid, categories=df["category"].to_numpy() if categories else None)
    held = gold_order_pairs(df, test)
    single = pairwise_accuracy(LinearBT().fit(X, pairs).predict(X), held)
    return moe, pairwise_accuracy(moe.predict(X, pid), held), single, test


def test_moe_beats_one_head_when_categories_use_different_directions():
    df, X = category_pool()
    moe, acc_moe, acc_single, test = fit_both(df, X)
    assert acc_moe > 0.9 and acc_single < 0.75 and acc_moe > acc_single + 0.15
    # the router recovers the given categories on prompts it never saw
    pid = df["prompt_id"].to_numpy()
    held = df["prompt_id"].is_in(list(test)).to_numpy()
    assert np.mean(moe.predict_category(X, pid)[held] == df["category"].to_numpy()[held]) > 0.95
    assert moe.categories_.tolist() == ["a", "b", "c"] and (moe.expert_weight_ > 0.5).all()


def test_kmeans_router_finds_the_categories_without_labels():
    df, X = category_pool(seed=1)
    moe, acc_moe, acc_single, _ = fit_both(df, X, categories=False)
    assert acc_moe > acc_single + 0.15 and moe.kmeans_ is not None
    found = moe.predict_category(X, df["prompt_id"].to_numpy())
    # clusters are the categories up to renaming: every category maps to exactly one cluster
    pairs = pl.DataFrame({"cat": df["category"], "found": found}).unique()
    assert pairs.height == 3 and pairs["found"].n_unique() == 3


def test_moe_is_no_worse_when_every_category_shares_the_direction():
    df, X = category_pool(same_direction=True)
    _, acc_moe, acc_single, _ = fit_both(df, X)
    assert acc_single > 0.9 and acc_moe >= acc_single - 0.02


def test_experts_shrink_to_the_global_head_with_few_pairs():
    df, X = category_pool(P=120)
    moe, *_ = fit_both(df, X, n_pairs=600, min_pairs=10_000, combiner="mixture")
    # no category reaches min_pairs: every expert IS the global head, and the mixture is the global head
    assert moe.experts_ == [None] * 3 and np.all(moe.expert_weight_ == 0)
    pid = df["prompt_id"].to_numpy()
    np.testing.assert_allclose(moe.predict(X, pid), moe.global_.predict(X), rtol=1e-5, atol=1e-5)
    strong, *_ = fit_both(df, X, n_pairs=600, shrink=50.0)
    m = strong.pairs_per_category_
    np.testing.assert_allclose(strong.expert_weight_, m / (m + 50.0))


def test_hard_routing_is_one_hot_and_bad_input_is_named():
    df, X = category_pool(P=60)
    moe, *_ = fit_both(df, X, n_pairs=400, routing="hard")
    r = moe.route(X, df["prompt_id"].to_numpy())
    assert set(np.unique(r)) <= {0.0, 1.0} and np.all(r.sum(1) == 1)
    with pytest.raises(EmbrmError, match="not fitted"):
        MoEReward().predict(X, df["prompt_id"].to_numpy())
    with pytest.raises(EmbrmError, match="routing"):
        fit_both(df, X, n_pairs=400, routing="sparse")
    mixed = df["category"].to_numpy().copy()
    mixed[1] = "z" if mixed[0] != "z" else "y"  # two rows of prompt p0000 in different categories
    with pytest.raises(EmbrmError, match="constant within a prompt"):
        MoEReward().fit(X, np.array([[0, 1]]), df["prompt_id"].to_numpy(), categories=mixed)


def test_moe_study_summary_and_per_category_frame():
    df, X = category_pool()
    ds = Dataset("categories", df.with_columns(excluded=pl.lit(False)))
    summary, frame = moe_study(ds, X, categories="category", n_pairs=2500, test_size=0.3, seed=0)
    h = {r.name: r for r in summary.rewards}
    assert h["moe"].accuracy > h["single"].accuracy + 0.15
    assert h["moe"].bon_gold > h["single"].bon_gold and summary.router_accuracy > 0.95
    assert frame["category"].to_list() == ["a", "b", "c"]
    assert (frame["acc_moe"] > frame["acc_single"]).all()
    d = json.loads(json.dumps(summary.to_dict()))
    assert d["held_out"]["moe"]["bon_gold"] == h["moe"].bon_gold and d["per_category"] == frame.to_dicts()
    with pytest.raises(EmbrmError, match="no column"):
        moe_study(ds, X, categories="topic")


@pytest.mark.slow
@needs_data
def test_cli_moe_on_a_real_pool(renamed_pool, tmp_path):
    out = tmp_path / "moe"
    common = [str(renamed_pool / "pool.toml"), "--n-pairs", "600", "--cache-dir", str(renamed_pool / "cache"),
              "--dtype", "float32"]
    res = CliRunner().invoke(app, ["moe", *common, "--categories", "subset", "--test-size", "0.25", "--out", str(out),
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["categories"] == "subset" and summary["n_test_prompts"] == 3 and not summary["with_excluded"]
    assert set(summary["model"]["categories"]) <= {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    assert {"moe", "single", "length"} == set(summary["held_out"])
    assert pl.read_parquet(out / "per_category.parquet").height >= 1
    text = CliRunner().invoke(app, ["moe", *common, "--categories", "kmeans", "--n-clusters", "2"])
    assert text.exit_code == 0, text.output
    assert "cluster" in text.stdout and "held-out prompts" in text.stdout
