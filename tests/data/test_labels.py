import numpy as np
import polars as pl
import pytest
from scipy.special import expit

from embrm.core._errors import EmbrmError
from embrm.data._labels import pair_indices, simulate_pairs, split_pairs, split_prompts


def pool(n_prompts=200, per_prompt=8, seed=0, null_every=0, discrete=False):
    rng = np.random.default_rng(seed)
    n = n_prompts * per_prompt
    gold = rng.standard_normal(n)
    if discrete:
        gold = np.round(gold)
    pid = np.repeat([f"p{i}" for i in range(n_prompts)], per_prompt)
    df = pl.DataFrame({"prompt_id": pid, "response_id": [f"{p}:{j % per_prompt}" for j, p in enumerate(pid)],
                       "prompt": pid, "response": ["x" * (j % 50 + 1) for j in range(n)], "gold": gold})
    if null_every:
        df = df.with_columns(gold=pl.when(pl.int_range(pl.len()) % null_every == 0).then(None)
                             .otherwise(pl.col("gold")))
    return df


def test_split_prompts_disjoint_and_reproducible():
    ids = np.repeat([f"p{i}" for i in range(50)], 3)
    tr, te = split_prompts(ids, test_size=0.2, seed=1)
    assert len(te) == 10 and len(tr) == 40
    assert not set(tr) & set(te) and set(tr) | set(te) == set(ids)
    tr2, te2 = split_prompts(ids, test_size=0.2, seed=1)
    assert np.array_equal(te, te2)
    _, te3 = split_prompts(ids, test_size=0.2, seed=2)
    assert not np.array_equal(te, te3)
    with pytest.raises(EmbrmError, match="at least 2 prompts"):
        split_prompts(["a", "a"])
    with pytest.raises(EmbrmError, match="test_size"):
        split_prompts(ids, test_size=1.5)


def test_split_pairs_by_prompt_and_too_few():
    pp = np.repeat(np.arange(30).astype(str), 4)
    tr, va = split_pairs(len(pp), 0.2, seed=0, prompt_ids=pp)
    assert not set(pp[tr]) & set(pp[va])
    assert len(tr) + len(va) == len(pp) and len(set(pp[va])) == 6
    tr, va = split_pairs(100, 0.2, seed=0)
    assert len(va) == 20 and not set(tr) & set(va)
    with pytest.raises(EmbrmError, match="only 7 labelled pairs on the training prompts: need at least 20 for an "
                                         "80/20 split"):
        split_pairs(7, 0.2)


def test_noiseless_and_within_prompt():
    df = pool()
    p = simulate_pairs(df, 3000, seed=0)
    assert p.columns == ["prompt_id", "chosen_id", "rejected_id", "gold_chosen", "gold_rejected", "label_correct"]
    assert len(p) == 3000 and p["label_correct"].all()
    assert (p["gold_chosen"] > p["gold_rejected"]).all()
    same = p["chosen_id"].str.split(":").list.first() == p["rejected_id"].str.split(":").list.first()
    assert same.all() and (p["chosen_id"].str.split(":").list.first() == p["prompt_id"]).all()


def test_across_prompts():
    p = simulate_pairs(pool(), 2000, within_prompt=False, seed=0)
    cross = p["chosen_id"].str.split(":").list.first() != p["rejected_id"].str.split(":").list.first()
    assert cross.mean() > 0.9


def test_flip_rate_matches():
    p = simulate_pairs(pool(), 40_000, flip=0.25, seed=3)
    err = 1 - p["label_correct"].mean()
    assert abs(err - 0.25) < 0.01


@pytest.mark.parametrize("beta", [10.0, 1.0, 0.1])
def test_bt_noise_rate_matches(beta):
    df = pool(per_prompt=10)
    p = simulate_pairs(df, 40_000, beta=beta, seed=4)
    s = df["gold"].std(ddof=0)
    expected = expit(-beta * np.abs(p["gold_chosen"] - p["gold_rejected"]).to_numpy() / s).mean()
    err = 1 - p["label_correct"].mean()
    assert abs(err - expected) < 0.01
    if beta == 10:
        assert err < 0.05  # Sun et al.: beta = 10 gives < 5 % label errors
    if beta == 0.1:
        assert err > 0.4


def test_seeded_reproducible():
    df = pool()
    a = simulate_pairs(df, 500, beta=1.0, seed=7)
    b = simulate_pairs(df, 500, beta=1.0, seed=7)
    c = simulate_pairs(df, 500, beta=1.0, seed=8)
    assert a.equals(b) and not a.equals(c)


def test_unscored_never_enter_and_prompt_filter():
    df = pool(null_every=3)
    unscored = set(df.filter(pl.col("gold").is_null())["response_id"])
    p = simulate_pairs(df, 5000, seed=0)
    assert not (set(p["chosen_id"]) | set(p["rejected_id"])) & unscored
    keep = ["p1", "p2", "p3"]
    p = simulate_pairs(df, 200, seed=0, prompt_ids=keep)
    assert set(p["prompt_id"]) <= set(keep)


def test_ties_skip_or_random():
    df = pool(discrete=True)
    p = simulate_pairs(df, 3000, seed=0)
    assert (p["gold_chosen"] != p["gold_rejected"]).all()
    p = simulate_pairs(df, 3000, seed=0, ties="random")
    tie = p["gold_chosen"] == p["gold_rejected"]
    assert tie.any()
    assert p.filter(tie)["label_correct"].is_null().all()
    assert p.filter(~tie)["label_correct"].is_not_null().all()


def test_simulate_errors():
    df = pool().with_columns(gold=pl.lit(None, pl.Float64))
    with pytest.raises(EmbrmError, match="all gold scores are null in .*--gold-col"):
        simulate_pairs(df, 10)
    with pytest.raises(EmbrmError, match="either beta"):
        simulate_pairs(pool(), 10, beta=1, flip=0.1)
    with pytest.raises(EmbrmError, match="flip"):
        simulate_pairs(pool(), 10, flip=1.5)
    with pytest.raises(EmbrmError, match="n_pairs"):
        simulate_pairs(pool(), 0)
    with pytest.raises(EmbrmError, match="none of the"):
        simulate_pairs(pool(), 10, prompt_ids=["nope"])


def test_pair_indices():
    df = pool(n_prompts=5, per_prompt=4)
    p = simulate_pairs(df, 50, seed=0)
    idx = pair_indices(p, df)
    assert idx.dtype == np.int64 and idx.shape == (50, 2)
    assert (df["response_id"].to_numpy()[idx[:, 0]] == p["chosen_id"].to_numpy()).all()
    assert (df["gold"].to_numpy()[idx[:, 1]] == p["gold_rejected"].to_numpy()).all()
    bad = p.with_columns(rejected_id=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("ghost"))
                         .otherwise(pl.col("rejected_id")))
    with pytest.raises(EmbrmError, match="row 3: rejected_id 'ghost' is not in the responses table"):
        pair_indices(bad, df)
    with pytest.raises(EmbrmError, match="chosen_id"):
        pair_indices(p.drop("chosen_id"), df)
