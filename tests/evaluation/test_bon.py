import itertools
import math

import numpy as np
import polars as pl
import pytest

import embrm.evaluation._bon as bon_mod
from embrm.core._errors import EmbrmError
from embrm.data._synthetic import synthetic_pool
from embrm.evaluation._aggregate import aggregate_all, standardize
from embrm.evaluation._bon import (
    ALL_N_LIMIT,
    bon_curves,
    bon_weights,
    curves_frame,
    expected_best_of_n,
    fit_gao,
    kl_bon,
    log_grid,
)


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


# ----------------------------------------------------------------------------- grids of n (bon_curves(n_grid=...))

CURVE_FIELDS = ("gold", "proxy", "percentile", "random", "oracle")


def _mixed_table(seed=0, sizes=(3, 5, 5, 8, 12, 12, 20), ties=True):
    """Unequal pools, a shuffled table, NaN gold rows, tied proxies, string keys."""
    rng = np.random.default_rng(seed)
    keys = np.array([f"p{i}" for i in range(len(sizes))])
    pid = np.repeat(keys, sizes)
    n = len(pid)
    gold = rng.standard_normal(n)
    proxy = rng.standard_normal((n, 3))
    if ties:
        proxy[:, 1] = rng.integers(0, 4, n)  # many ties
        gold[rng.random(n) < 0.2] = np.round(gold[rng.random(n) < 0.2].mean(), 1)  # gold ties too
    extra = 4  # unscored rows (NaN gold) in two pools
    pid = np.concatenate([pid, keys[[0, 3, 3, 6]]])
    gold = np.concatenate([gold, np.full(extra, np.nan)])
    proxy = np.concatenate([proxy, np.zeros((extra, 3))])
    order = rng.permutation(len(pid))
    return pid[order], proxy[order], gold[order]


def _assert_grid_matches_all(c_grid, c_all, atol=1e-12):
    pos = c_grid.n - 1
    np.testing.assert_array_equal(c_all.n[pos], c_grid.n)
    np.testing.assert_array_equal(c_grid.n_prompts, c_all.n_prompts[pos])
    for f in CURVE_FIELDS:
        a, b = getattr(c_grid, f), getattr(c_all, f)[..., pos]
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f)
    if c_all.per_prompt_gold is not None and c_grid.per_prompt_gold is not None:
        np.testing.assert_array_equal(np.isnan(c_grid.per_prompt_gold), np.isnan(c_all.per_prompt_gold[..., pos]))
        np.testing.assert_allclose(c_grid.per_prompt_gold, c_all.per_prompt_gold[..., pos], atol=1e-6)


@pytest.mark.parametrize("grid", [[1, 2, 5, 8, 20], [3], [20], [1, 12], np.array([7, 2, 2, 19])])
def test_grid_equals_all_n_unequal_pools_ties_nan_gold(grid):
    pid, proxy, gold = _mixed_table()
    c_all = bon_curves(pid, proxy, gold, n_grid="all", per_prompt=True, dtype=np.float64)
    assert c_all.all_n and len(c_all.n) == 20
    c = bon_curves(pid, proxy, gold, n_grid=grid, per_prompt=True, dtype=np.float64)
    assert c.n.dtype == np.int64 and list(c.n) == sorted({int(v) for v in grid})
    assert c.gold.shape == (3, len(c.n)) and c.per_prompt_gold.shape == (3, 7, len(c.n))
    _assert_grid_matches_all(c, c_all)
    # a mask drops rows like NaN gold does, on a grid too
    keep = ~np.isnan(gold)
    m = bon_curves(pid, proxy, np.nan_to_num(gold), mask=keep, n_grid=grid, per_prompt=True, dtype=np.float64)
    for f in CURVE_FIELDS:
        np.testing.assert_allclose(getattr(m, f), getattr(c, f), atol=1e-12)
    # float32 gathering on a grid: same as float32 all-n at the same n
    _assert_grid_matches_all(bon_curves(pid, proxy, gold, n_grid=grid),
                             bon_curves(pid, proxy, gold, n_grid="all"), atol=1e-9)


def test_grid_equals_all_n_equal_pools():
    sp = synthetic_pool(40, 30, dim=8, seed=3, embeddings=False)
    aggs = aggregate_all(standardize(sp.scores), ("mean", "min", "lcb"))
    aggs["tied"] = np.round(aggs["mean"])
    grid = log_grid(30, 8)
    c_all = bon_curves(sp.prompt_index, aggs, sp.gold, per_prompt=True, dtype=np.float64)
    c = bon_curves(sp.prompt_index, aggs, sp.gold, per_prompt=True, dtype=np.float64, n_grid=grid)
    _assert_grid_matches_all(c, c_all)
    # and with n_max below the pool size: the grid stops at n_max
    c10 = bon_curves(sp.prompt_index, aggs, sp.gold, n_max=10, n_grid="log", dtype=np.float64)
    assert c10.n[-1] == 10 and c10.all_n  # ~100 log points up to 10 round to every n
    _assert_grid_matches_all(c10, c_all)


@pytest.mark.parametrize("seed", range(3))
def test_grid_against_enumeration(seed):
    rng = np.random.default_rng(seed)
    N = 9
    proxy = rng.integers(0, 4, N).astype(float)  # many ties
    gold = rng.standard_normal(N)
    c = bon_curves(np.zeros(N, int), proxy, gold, dtype=np.float64, n_grid=[2, 5, 9])
    np.testing.assert_allclose(c.gold[0], [brute_force(proxy, gold, n) for n in (2, 5, 9)], atol=1e-12)
    np.testing.assert_allclose(c.proxy[0], [brute_force(proxy, proxy, n) for n in (2, 5, 9)], atol=1e-12)
    # two pools of different sizes: a grid n above the smaller pool only averages the larger one
    p2, g2 = rng.standard_normal(6), rng.standard_normal(6)
    pid = np.repeat([0, 1], [N, 6])
    c2 = bon_curves(pid, np.concatenate([proxy, p2]), np.concatenate([gold, g2]), dtype=np.float64,
                    n_grid=[3, 7], per_prompt=True)
    np.testing.assert_array_equal(c2.n_prompts, [2, 1])
    want3 = (brute_force(proxy, gold, 3) + brute_force(p2, g2, 3)) / 2
    np.testing.assert_allclose(c2.gold[0], [want3, brute_force(proxy, gold, 7)], atol=1e-12)
    assert np.isnan(c2.per_prompt_gold[0, 1, 1]) and not np.isnan(c2.per_prompt_gold[0, 0, 1])


def test_expected_best_of_n_single_point_grid():
    rng = np.random.default_rng(4)
    proxy, gold = rng.standard_normal(30), rng.standard_normal(30)
    c = bon_curves(np.zeros(30, int), proxy, gold, dtype=np.float64)
    for n in (1, 4, 17, 30):
        assert expected_best_of_n(proxy, gold, n) == pytest.approx(c.gold[0, n - 1], abs=1e-12)
    with pytest.raises(EmbrmError, match="n_max = 31"):
        expected_best_of_n(proxy, gold, 31)


def test_log_grid():
    g = log_grid(12_500)
    assert g.dtype == np.int64 and g[0] == 1 and g[-1] == 12_500
    assert np.all(np.diff(g) > 0) and 60 <= len(g) <= 100
    assert list(g[:8]) == list(range(1, 9))  # small n dense
    ratios = g[1:] / g[:-1]
    assert ratios[-20:].max() < 1.15  # geometric at large n (~100 points: step ~1.10)
    assert list(log_grid(5)) == [1, 2, 3, 4, 5] and list(log_grid(1)) == [1]
    g60 = log_grid(60_000)
    assert g60[0] == 1 and g60[-1] == 60_000 and len(g60) <= 100
    assert len(log_grid(1000, points=10)) == 10
    with pytest.raises(EmbrmError):
        log_grid(0)


def test_default_grid_switches_above_all_n_limit(monkeypatch):
    rng = np.random.default_rng(5)
    # a single pool of ALL_N_LIMIT candidates: all n; one more candidate: the log grid
    for N, all_n in ((ALL_N_LIMIT, True), (ALL_N_LIMIT + 1, False)):
        proxy, gold = rng.standard_normal(N), rng.standard_normal(N)
        c = bon_curves(np.zeros(N, int), proxy, gold)
        assert c.all_n is all_n and c.n[0] == 1 and c.n[-1] == N
        if not all_n:
            np.testing.assert_array_equal(c.n, log_grid(N))
            assert f"values of n in 1..{N}" in repr(c)
        else:
            assert len(c.n) == N and f"n = 1..{N} (all)" in repr(c)
    # the limit is the module constant; the largest scored pool decides
    monkeypatch.setattr(bon_mod, "ALL_N_LIMIT", 16)
    pid, proxy, gold = _mixed_table()
    c = bon_curves(pid, proxy, gold, dtype=np.float64)
    assert c.all_n and len(c.n) == 20  # the log grid of ~100 points up to 20 is every n
    monkeypatch.setattr(bon_mod, "GRID_POINTS", 6)
    c = bon_curves(pid, proxy, gold, dtype=np.float64)
    assert not c.all_n and c.n[0] == 1 and c.n[-1] == 20 and len(c.n) == 6
    np.testing.assert_array_equal(c.n, log_grid(20))
    _assert_grid_matches_all(c, bon_curves(pid, proxy, gold, dtype=np.float64, n_grid="all"))
    assert bon_curves(pid, proxy, gold, n_grid="all").all_n
    c12 = bon_curves(pid[np.isin(pid, ["p0", "p1", "p4"])], proxy[np.isin(pid, ["p0", "p1", "p4"])],
                     gold[np.isin(pid, ["p0", "p1", "p4"])])
    assert c12.all_n and c12.n[-1] == 12


def test_grid_results_api():
    pid, proxy, gold = _mixed_table(ties=False)
    c = bon_curves(pid, proxy, gold, n_grid=[1, 4, 9, 20], names=["a", "b", "c"], dtype=np.float64)
    c_all = bon_curves(pid, proxy, gold, names=["a", "b", "c"], dtype=np.float64)
    assert not c.all_n and c.n_max == 20 and "4 values of n in 1..20" in repr(c)
    df = c.frame()
    assert df.height == 12 and df["n"].to_list()[:4] == [1, 4, 9, 20]
    np.testing.assert_allclose(df.filter(pl.col("agg") == "b")["gold"].to_numpy(), c_all.gold[1, [0, 3, 8, 19]],
                               atol=1e-12)
    assert c.final_gain() == pytest.approx(c_all.final_gain(), abs=1e-12)  # last grid point is n_max
    best = c.best_n()
    for j, a in enumerate(c.aggregations):
        assert best[a] == c.n[np.argmax(c.gold[j])] and best[a] in (1, 4, 9, 20)
    assert c.index(9) == 2 and list(c.index([1, 20])) == [0, 3]
    with pytest.raises(EmbrmError, match="n = 5 is not on this Best-of-n grid"):
        c.index(5)
    assert c["a"]["gold"].shape == (4,) and c["a"]["n"] is c.n
    np.testing.assert_allclose(c.kl, kl_bon([1, 4, 9, 20]))


@pytest.mark.parametrize("bad, match", [
    ([0, 3], "n = 0 is out of range"),
    ([3, 21], "n = 21 is out of range: each n must be in 1..20"),
    ([2.5], "n = 2.5 is not an integer"),
    ([], "empty"),
    ("some", "n_grid = 'some'"),
    (5, "sequence of integers"),
    ([True, False], "integers"),
    ([[1, 2]], "sequence of integers"),
])
def test_user_grid_validation(bad, match):
    pid, proxy, gold = _mixed_table()
    with pytest.raises(EmbrmError, match=match) as e:
        bon_curves(pid, proxy, gold, n_grid=bad)
    assert "\n" not in str(e.value)


def test_user_grid_respects_n_max_and_float_integers():
    pid, proxy, gold = _mixed_table()
    with pytest.raises(EmbrmError, match="n = 12 is out of range: each n must be in 1..10"):
        bon_curves(pid, proxy, gold, n_max=10, n_grid=[2, 12])
    c = bon_curves(pid, proxy, gold, n_grid=np.array([2.0, 6.0]))
    assert c.n.dtype == np.int64 and list(c.n) == [2, 6]


def test_all_grid_refused_when_weights_are_absurd(monkeypatch):
    N = 20_001  # 20,001^2 = 4e8 float64 cells > ALL_N_MAX_CELLS
    rng = np.random.default_rng(6)
    proxy, gold = rng.standard_normal(N), rng.standard_normal(N)
    with pytest.raises(EmbrmError, match=r"n_grid='all'.*GB.*n_grid='log'") as e:
        bon_curves(np.zeros(N, int), proxy, gold, n_grid="all")
    assert "\n" not in str(e.value)
    # fine with n_max small (N x n_max cells)
    c = bon_curves(np.zeros(N, int), proxy, gold, n_grid="all", n_max=50)
    assert c.all_n and len(c.n) == 50
    monkeypatch.setattr(bon_mod, "ALL_N_MAX_CELLS", 100)
    pid, px, g = _mixed_table()
    with pytest.raises(EmbrmError, match="n_grid='all'"):
        bon_curves(pid, px, g, n_grid="all")


# ----------------------------------------------------------------------------- chunks of prompts

@pytest.mark.parametrize("grid", [None, "log", [1, 3, 11]])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunking_does_not_change_results(monkeypatch, grid, dtype):
    pid, proxy, gold = _mixed_table(seed=7, sizes=(3, 5, 5, 5, 8, 12, 12, 12, 12, 20, 20))
    ref = bon_curves(pid, proxy, gold, per_prompt=True, dtype=dtype, n_grid=grid)
    for budget, wbudget, threads in ((1, 1, 1), (1, 1, 2), (2000, 1, 2), (50_000, 10**9, 1)):
        monkeypatch.setattr(bon_mod, "CHUNK_BYTES", budget)
        monkeypatch.setattr(bon_mod, "CHUNK_WEIGHT_BYTES", wbudget)
        monkeypatch.setattr(bon_mod, "SORT_THREADS", threads)
        c = bon_curves(pid, proxy, gold, per_prompt=True, dtype=dtype, n_grid=grid)
        np.testing.assert_array_equal(c.n, ref.n)
        np.testing.assert_array_equal(c.n_prompts, ref.n_prompts)
        for f in CURVE_FIELDS:
            np.testing.assert_allclose(getattr(c, f), getattr(ref, f), rtol=1e-12, atol=1e-12, err_msg=f)
        np.testing.assert_allclose(c.per_prompt_gold, ref.per_prompt_gold, rtol=1e-6, atol=1e-6)


def test_chunking_equal_pools_contiguous_layout(monkeypatch):
    sp = synthetic_pool(50, 24, dim=8, seed=2, embeddings=False)
    aggs = aggregate_all(standardize(sp.scores), ("mean", "min", "single"))
    ref = bon_curves(sp.prompt_index, aggs, sp.gold, dtype=np.float64, per_prompt=True)
    monkeypatch.setattr(bon_mod, "CHUNK_BYTES", 24 * 7 * 200)  # a few prompts per chunk
    c = bon_curves(sp.prompt_index, aggs, sp.gold, dtype=np.float64, per_prompt=True)
    for f in CURVE_FIELDS:
        np.testing.assert_allclose(getattr(c, f), getattr(ref, f), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c.per_prompt_gold, ref.per_prompt_gold, atol=1e-6)
    # the caller's scores are never written (the -0.0 -> +0.0 step works on a copy)
    before = {k: v.copy() for k, v in aggs.items()}
    bon_curves(sp.prompt_index, aggs, sp.gold)
    for k in aggs:
        np.testing.assert_array_equal(aggs[k], before[k])


def test_plan_chunks_budgets():
    ss = np.array([2, 2, 3, 3, 3, 10, 10, 50])
    first = np.r_[True, ss[1:] != ss[:-1]]
    wb = ss * ss * 8.0
    chunks = bon_mod._plan_chunks(ss, wb, first, cell=10, budget=200, weight_budget=10**9)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(ss)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    for lo, hi in chunks:
        assert hi - lo == 1 or (hi - lo) * ss[hi - 1] * 10 <= 200
    # the weight budget alone: each distinct size's matrix counted once per chunk
    chunks = bon_mod._plan_chunks(ss, wb, first, cell=1, budget=10**9, weight_budget=800)
    assert chunks == [(0, 5), (5, 7), (7, 8)]  # 2^2*8 + 3^2*8 = 104 fit; 10^2*8 = 800 fits alone; 50^2*8 alone
    for lo, hi in chunks:
        assert hi - lo == 1 or sum(int(s) ** 2 * 8 for s in set(ss[lo:hi])) <= 800


def test_threaded_aggregations_raise_proxy_errors(monkeypatch):
    monkeypatch.setattr(bon_mod, "SORT_THREADS", 2)
    pid, proxy, gold = _mixed_table()
    proxy = proxy.copy()
    proxy[np.flatnonzero(~np.isnan(gold))[3], 2] = np.inf
    with pytest.raises(EmbrmError, match="proxy 'agg2': contains NaN/inf"):
        bon_curves(pid, proxy, gold)


# ----------------------------------------------------------------------------- weights of chosen columns

def test_weight_columns_exact_against_big_integers():
    N = 2000
    grid = np.array([1, 2, 7, 100, 999, 1500, 1999, 2000])
    w = bon_weights(N, n=grid)
    assert w.shape == (N, len(grid)) and not w.flags.writeable
    for k, n in enumerate(grid):
        for i in sorted({int(n), min(int(n) + 1, N), (int(n) + N) // 2, N - 1, N, 1}):
            exact = math.comb(i - 1, int(n) - 1) / math.comb(N, int(n))  # correctly rounded big-int division
            if exact < 1e-290:
                assert w[i - 1, k] < 1e-280
            else:
                assert w[i - 1, k] == pytest.approx(exact, rel=1e-9), (i, n)
    np.testing.assert_allclose(w.sum(0), 1, rtol=1e-10)  # log-factorials of ~1e4: ~|log| * eps
    # the same numbers as the all-n matrix's columns
    np.testing.assert_array_equal(bon_weights(300, n=[1, 5, 300]), bon_weights(300)[:, [0, 4, 299]])
    assert bon_weights(300, 40, n=[3, 40]).shape == (300, 2)


def test_weight_columns_sum_to_one_at_60000():
    N = 60_000
    grid = log_grid(N)
    w = bon_weights(N, n=grid)
    assert w.shape == (N, len(grid))
    np.testing.assert_allclose(w.sum(0), 1, rtol=0, atol=1e-9)
    assert np.all(w >= 0) and np.all((w == 0) | (w >= np.finfo(np.float64).tiny))  # no subnormals
    assert w[-1, -1] == 1.0 and w[0, 0] == pytest.approx(1 / N)  # n = N: the top rank; n = 1: uniform
    # structural zeros: rank i < n is never the pick
    rows = np.arange(1, N + 1)[:, None]
    assert not np.any(w[rows < grid[None, :]])


def test_bon_weights_validation():
    with pytest.raises(EmbrmError, match="out of range"):
        bon_weights(10, n=[0, 3])
    with pytest.raises(EmbrmError, match="out of range"):
        bon_weights(10, 5, n=[3, 6])
    with pytest.raises(EmbrmError, match="sorted and distinct"):
        bon_weights(10, n=[5, 3])
    with pytest.raises(EmbrmError, match="n_max <= pool"):
        bon_weights(10, 11)


def test_weight_cache_is_bounded():
    cache = bon_mod._WeightCache(1000)
    for i in range(10):
        cache.put(i, np.zeros(50))  # 400 bytes each
    assert cache.bytes <= 1000 and len(cache.items) == 2 and cache.get(9) is not None and cache.get(0) is None
    cache.put("big", np.zeros(1000))  # larger than the budget: not cached
    assert cache.get("big") is None


def test_sparse_tie_average_matches_pools_tie_average():
    from embrm.evaluation import _pools as pools_mod
    from embrm.evaluation._pools import avg_ranks, tie_average

    def whole_rows(keys, values, valid):  # the whole-row pass alone, whatever the density of ties
        m = keys.shape[-1]
        eq = keys[:, 1:] == keys[:, :-1]
        if valid is not None:
            eq &= valid[:, 1:]
        if eq.any():
            pools_mod._tie_average_rows(eq, values.reshape(-1, m, values.shape[-1]))
        return values

    def ranks_by_rows(matrix, valid):
        o = np.argsort(matrix, axis=1)
        pos = np.broadcast_to(np.arange(1, matrix.shape[1] + 1, dtype=np.float64), matrix.shape).copy()[:, :, None]
        whole_rows(np.take_along_axis(matrix, o, axis=1), pos, valid)
        ranks = np.empty(matrix.shape)
        np.put_along_axis(ranks, o, pos[:, :, 0], axis=1)
        return ranks

    rng = np.random.default_rng(8)
    for trial in range(60):
        r, m = int(rng.integers(1, 20)), int(rng.integers(1, 80))
        levels = int(rng.integers(1, 400))  # from ties everywhere to a few tied pairs
        keys = rng.integers(0, levels, (r, m)).astype(np.float32)
        valid = None
        if trial % 2:
            valid = np.arange(m)[None] < rng.integers(1, m + 1, r)[:, None]
            keys = np.where(valid, keys, np.inf)
        keys = np.sort(keys, axis=1)
        for dt in (np.float32, np.float64):
            v = rng.standard_normal((r, m, 2)).astype(dt)
            a, b = v.copy(), v.copy()
            whole_rows(keys, a, valid)
            tie_average(keys, b, valid)
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ranks_by_rows(keys, valid), avg_ranks(keys, valid))
