import itertools
import math

import numpy as np
import polars as pl
import pytest

from embrm.aggregate import aggregate_all, standardize
from embrm.bon import bon_curves, bon_weights, curves_frame, expected_best_of_n, fit_gao, kl_bon
from embrm.errors import EmbrmError
from embrm.synthetic import synthetic_pool


def brute_force(proxy, gold, n):
    """Enumerate every n-subset; the pick is uniform among the subset's tied best proxies."""
    vals = []
    for sub in itertools.combinations(range(len(proxy)), n):
        best = max(proxy[i] for i in sub)
        vals.append(np.mean([gold[i] for i in sub if proxy[i] == best]))
    return float(np.mean(vals))


def test_reference_vector():
    assert expected_best_of_n([.1, .5, .3, .9], [1, 2, 0, -1], 2) == pytest.approx(1 / 6, abs=1e-12)


def test_weights_formula_and_columns_sum_to_one():
    w = bon_weights(9)
    for i, n in itertools.product(range(1, 10), range(1, 10)):
        assert w[i - 1, n - 1] == pytest.approx(math.comb(i - 1, n - 1) / math.comb(9, n), rel=1e-12, abs=1e-300)
    np.testing.assert_allclose(bon_weights(500).sum(0), 1, rtol=1e-10)
    assert bon_weights(500, 7).shape == (500, 7)


@pytest.mark.parametrize("seed", range(6))
def test_exact_against_enumeration_with_ties(seed):
    rng = np.random.default_rng(seed)
    N = 9
    proxy = rng.integers(0, 4, N).astype(float)  # many ties
    gold = rng.standard_normal(N)
    c = bon_curves(np.zeros(N, int), proxy, gold, dtype=np.float64)
    expect = [brute_force(proxy, gold, n) for n in range(1, N + 1)]
    np.testing.assert_allclose(c.gold[0], expect, atol=1e-12)
    # proxy curve with the same weights
    np.testing.assert_allclose(c.proxy[0], [brute_force(proxy, proxy, n) for n in range(1, N + 1)], atol=1e-12)


def test_negative_zero_ties_with_zero():
    proxy, gold = np.array([0.0, -0.0, -1.0]), np.array([1.0, 3.0, 0.0])
    c = bon_curves(np.zeros(3, int), proxy, gold, dtype=np.float64)
    np.testing.assert_allclose(c.gold[0], [brute_force(proxy, gold, n) for n in (1, 2, 3)])


def test_gold_travels_with_proxy_coste_bug():
    # Coste et al.'s code sorted the proxy but indexed the UNSORTED gold: rank i got gold[i] of the original order.
    proxy = np.array([0.9, 0.1, 0.5, 0.3])
    gold = np.array([-1.0, 1.0, 2.0, 0.0])
    w = bon_weights(4)
    buggy = w.T @ gold  # gold not re-ordered
    correct = w.T @ gold[np.argsort(proxy)]
    c = bon_curves(np.zeros(4, int), proxy, gold, dtype=np.float64)
    np.testing.assert_allclose(c.gold[0], correct)
    assert abs(c.gold[0, 1] - buggy[1]) > 0.1
    # a shuffled table gives the same curves
    perm = np.random.default_rng(0).permutation(4)
    np.testing.assert_allclose(bon_curves(np.zeros(4, int), proxy[perm], gold[perm]).gold, c.gold, rtol=1e-6)


def test_every_member_reaches_the_aggregate_sun_bug():
    rng = np.random.default_rng(0)
    P, N, K = 60, 16, 5
    pid = np.repeat(np.arange(P), N)
    gold = rng.standard_normal(P * N)
    scores = gold[:, None] + rng.standard_normal((P * N, K)) * np.arange(1, K + 1)  # members disagree
    aggs = aggregate_all(scores, ("mean", "min", "single"))
    c = bon_curves(pid, aggs, gold)
    g = dict(zip(c.aggregations, c.gold))
    assert not np.allclose(g["mean"][1:], g["min"][1:])
    assert not np.allclose(g["mean"][1:], g["single"][1:])
    assert not np.allclose(g["min"][1:], g["single"][1:])
    # changing member k (k != the 'single' member) changes the mean curve
    s2 = scores.copy()
    s2[:, 3] = rng.standard_normal(P * N) * 5
    c2 = bon_curves(pid, aggregate_all(s2, ("mean", "single")), gold)
    assert not np.allclose(c2.gold[0], g["mean"])
    np.testing.assert_allclose(c2.gold[1], g["single"])


def test_monte_carlo_agrees():
    rng = np.random.default_rng(3)
    P, N = 30, 20
    pid = np.repeat(np.arange(P), N)
    gold = rng.standard_normal(P * N)
    proxy = gold + rng.standard_normal(P * N)
    c = bon_curves(pid, proxy, gold, dtype=np.float64)
    G, Q = gold.reshape(P, N), proxy.reshape(P, N)
    draws = 20000
    for n in (1, 3, 8, 20):
        sub = np.argsort(rng.random((draws, P, N)), axis=2)[:, :, :n]  # random n-subsets per prompt
        q = np.take_along_axis(np.broadcast_to(Q, (draws, P, N)), sub, 2)
        pick = np.take_along_axis(sub, q.argmax(2)[:, :, None], 2)[:, :, 0]
        mc = np.take_along_axis(np.broadcast_to(G, (draws, P, N)), pick[:, :, None], 2)[:, :, 0].mean(1)
        assert abs(mc.mean() - c.gold[0, n - 1]) < 4 * mc.std() / np.sqrt(draws) + 1e-9


def test_unequal_pools_nan_gold_mask_and_per_prompt():
    rng = np.random.default_rng(1)
    sizes = [3, 5, 5, 8]
    pid = np.repeat(np.array(["a", "b", "c", "d"]), sizes)
    gold = rng.standard_normal(len(pid))
    proxy = rng.standard_normal((len(pid), 2))
    gold_nan = np.concatenate([gold, [np.nan, np.nan]])
    pid_nan = np.concatenate([pid, ["a", "e"]])
    proxy_nan = np.concatenate([proxy, np.zeros((2, 2))])
    order = rng.permutation(len(pid_nan))  # unsorted table
    c = bon_curves(pid_nan[order], proxy_nan[order], gold_nan[order], per_prompt=True, dtype=np.float64,
                   names=["x", "y"])
    assert list(c.prompts) == ["a", "b", "c", "d"] and list(c.pool_size) == sizes
    np.testing.assert_array_equal(c.n_prompts, [4, 4, 4, 3, 3, 1, 1, 1])
    starts = np.cumsum([0] + sizes)
    for j in range(2):
        per = np.full((4, 8), np.nan)
        for p in range(4):
            sl = slice(starts[p], starts[p + 1])
            for n in range(1, sizes[p] + 1):
                per[p, n - 1] = brute_force(proxy[sl, j], gold[sl], n)
        np.testing.assert_allclose(c.per_prompt_gold[j], per, atol=1e-6)
        np.testing.assert_allclose(c.gold[j], np.nanmean(per, axis=0), atol=1e-12)
    pool_mean = np.array([gold[starts[p]:starts[p + 1]].mean() for p in range(4)])
    pool_max = np.array([gold[starts[p]:starts[p + 1]].max() for p in range(4)])
    np.testing.assert_allclose(c.random[:3], pool_mean.mean())
    np.testing.assert_allclose(c.oracle[5:], pool_max[3])
    np.testing.assert_allclose(c.gold[:, 0], c.random[0])  # n = 1 is a random pick
    np.testing.assert_allclose(c.percentile[:, 0], 50.0)
    np.testing.assert_allclose(c.gain[:, 0], 0, atol=1e-12)
    # a mask drops rows like NaN gold does
    m = bon_curves(pid_nan, proxy_nan, np.nan_to_num(gold_nan), mask=~np.isnan(gold_nan), dtype=np.float64)
    np.testing.assert_allclose(m.gold, c.gold, atol=1e-12)


def test_oracle_proxy_reaches_oracle_and_percentile_100():
    rng = np.random.default_rng(2)
    pid = np.repeat(np.arange(20), 10)
    gold = rng.standard_normal(200)
    c = bon_curves(pid, gold, gold)
    assert c.gold[0, -1] == pytest.approx(c.oracle[-1], rel=1e-6)
    assert c.percentile[0, -1] == pytest.approx(100.0)
    assert c.gain[0, -1] == pytest.approx(1.0)
    assert np.all(np.diff(c.gold[0]) >= -1e-6)


def test_float32_agrees_with_float64():
    sp = synthetic_pool(200, 100, dim=8, seed=0, embeddings=False)
    aggs = aggregate_all(standardize(sp.scores), ("mean", "min"))
    c32 = bon_curves(sp.prompt_index, aggs, sp.gold)
    c64 = bon_curves(sp.prompt_index, aggs, sp.gold, dtype=np.float64)
    for a, b in ((c32.gold, c64.gold), (c32.proxy, c64.proxy), (c32.percentile, c64.percentile)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_frame_and_result_api():
    sp = synthetic_pool(20, 12, dim=8, seed=0, embeddings=False)
    c = bon_curves(sp.responses["prompt_id"], aggregate_all(sp.scores, ("mean", "lcb")), sp.responses["gold"],
                   n_max=10)
    df = curves_frame(c)
    assert df.height == 20 and set(df["agg"].unique()) == {"mean", "lcb"}
    for col in ("agg", "n", "kl", "d", "gold", "proxy", "percentile", "n_prompts", "gain", "random", "oracle"):
        assert col in df.columns
    assert df.filter(pl.col("n") == 1)["kl"].to_list() == [0.0, 0.0]
    assert c["mean"]["gold"].shape == (10,) and set(c.best_n()) == {"mean", "lcb"}
    assert "2 aggregations" in repr(c)
    with pytest.raises(EmbrmError, match="n_max = 13"):
        bon_curves(sp.prompt_index, sp.scores[:, 0], sp.gold, n_max=13)
    with pytest.raises(EmbrmError, match="NaN/inf"):
        bad = sp.scores[:, 0].copy()
        bad[3] = np.nan
        bon_curves(sp.prompt_index, bad, sp.gold)


def test_kl_and_gao_fit():
    assert kl_bon(1) == 0.0
    assert kl_bon(np.array([2.0]))[0] == pytest.approx(np.log(2) - 0.5)
    d = np.sqrt(kl_bon(np.arange(1, 200)))
    alpha, beta = fit_gao(d, d * (1.5 - 0.4 * d))
    assert (alpha, beta) == (pytest.approx(1.5), pytest.approx(0.4))
    with pytest.raises(EmbrmError):
        fit_gao([0.0], [0.0])
