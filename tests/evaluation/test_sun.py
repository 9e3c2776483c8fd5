import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from embrm.core._errors import EmbrmError
from embrm.evaluation._sun import SUN_N, SunMetrics, sun_metrics


def pools(sizes, seed=0):
    """prompt ids (prompt p repeated sizes[p] times) and standard normal gold."""
    pid = np.repeat(np.arange(len(sizes)), sizes)
    return pid, np.random.default_rng(seed).standard_normal(len(pid))


def values(res: SunMetrics) -> dict:
    return {(r["reward"], r["metric"], r["n"]): r["value"] for r in res.rows}


def counts(res: SunMetrics) -> dict:
    return {(r["reward"], r["metric"], r["n"]): r["prompts"] for r in res.rows}


def reference(pid, gold, proxies, rows, ns, seed, k):
    """Loop over prompts and pairs, with the same draws (same rng calls on the same (prompt, position) layout:
    prompts sorted, rows in input order within a prompt)."""
    keep = np.ones(len(pid), bool) if rows is None else rows
    keys = sorted(set(pid[keep].tolist()))
    members = [[i for i in range(len(pid)) if keep[i] and pid[i] == key] for key in keys]
    width = max(len(m) for m in members)
    rng = np.random.default_rng(seed)
    shuffle_keys = rng.random((len(keys), width))
    ua, ub = rng.random((len(keys), k)), rng.random((len(keys), k))
    out = {}
    for name, s in proxies.items():
        correct, pair_prompts, rhos, bon = [], 0, [], {n: ([], []) for n in ns}
        for p, idx in enumerate(members):
            size = len(idx)
            g, x = gold[idx], s[idx]
            used = False
            for t in range(k):
                if size < 2:
                    break
                a, b = int(ua[p, t] * size), int(ub[p, t] * (size - 1))
                b += b >= a
                if g[a] == g[b]:
                    continue
                used = True
                d = (x[a] - x[b]) * np.sign(g[a] - g[b])
                correct.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
            pair_prompts += used
            if size > 1 and len(set(g)) > 1 and len(set(x)) > 1:
                rhos.append(spearmanr(x, g).correlation)
            order = sorted(range(size), key=lambda j: shuffle_keys[p, j])
            for n in ns:
                if n > size:
                    continue
                sub = order[:n]
                best = max(x[j] for j in sub)
                pick = next(j for j in sub if x[j] == best)  # first in shuffled order
                bon[n][0].append(g[pick])
                bon[n][1].append((np.sum(g < g[pick]) + 0.5 * np.sum(g == g[pick])) / size)
        if correct:
            out[(name, "accuracy", None)] = (np.mean(correct), pair_prompts)
        if rhos:
            out[(name, "spearman", None)] = (np.mean(rhos), len(rhos))
        for n, (gp, qp) in bon.items():
            if gp:
                out[(name, "bon_gold", n)] = (np.mean(gp), len(gp))
                out[(name, "bon_quantile", n)] = (np.mean(qp), len(qp))
    return out


def test_matches_loop_reference_with_ties_unequal_pools_mask_and_unsorted_rows():
    rng = np.random.default_rng(3)
    sizes = [1, 2, 3, 7, 12, 12, 20, 4]
    pid = np.repeat(np.array([50, 10, 30, 20, 70, 60, 40, 80]), sizes)
    gold = rng.integers(0, 5, len(pid)).astype(float)  # many gold ties
    gold[pid == 60] = 2.0  # one constant-gold prompt: no Spearman, no pairs
    proxies = {"coarse": rng.integers(0, 3, len(pid)).astype(float), "fine": gold + rng.normal(0, 1, len(pid))}
    perm = rng.permutation(len(pid))
    pid, gold = pid[perm], gold[perm]
    proxies = {k: v[perm] for k, v in proxies.items()}
    rows = rng.random(len(pid)) > 0.1
    gold[~rows] = np.nan  # unevaluated rows may lack gold
    ns = (1, 2, 5, 10, 30)
    res = sun_metrics(pid, gold, proxies, rows, ns=ns, seed=7, pairs_per_prompt=6)
    ref = reference(pid, gold, proxies, rows, ns, 7, 6)
    got = {k: (v, counts(res)[k]) for k, v in values(res).items()}
    assert got.keys() == ref.keys()
    for key, (value, prompts) in ref.items():
        assert got[key][0] == pytest.approx(value, abs=1e-12), key
        assert got[key][1] == prompts, key
    assert ("coarse", "bon_gold", 30) not in got  # no pool holds 30 evaluated rows
    assert res.n_prompts == len(set(pid[rows]))


def test_gold_proxy_is_perfect_and_negated_gold_is_reversed():
    pid, gold = pools([20] * 3000, seed=1)
    res = sun_metrics(pid, gold, {"gold": gold, "neg": -gold}, ns=(2, 5, 20))
    v = values(res)
    assert v[("gold", "accuracy", None)] == 1.0 and v[("neg", "accuracy", None)] == 0.0
    assert v[("gold", "spearman", None)] == pytest.approx(1.0, abs=1e-12)
    assert v[("neg", "spearman", None)] == pytest.approx(-1.0, abs=1e-12)
    m = 20
    for n in (2, 5, 20):
        # the pick is the top gold of n draws: E[its rank] = n (m + 1) / (n + 1); percentile (rank - 1/2) / m
        expect = (n * (m + 1) / (n + 1) - 0.5) / m
        assert v[("gold", "bon_quantile", n)] == pytest.approx(expect, abs=0.006)
        assert v[("neg", "bon_quantile", n)] == pytest.approx(1 - expect, abs=0.006)
    assert v[("gold", "bon_quantile", 20)] == pytest.approx(1 - 0.5 / m, abs=1e-12)


def test_random_proxy_is_chance():
    pid, gold = pools([30] * 2000, seed=2)
    noise = np.random.default_rng(9).standard_normal(len(gold))
    res = sun_metrics(pid, gold, {"random": noise}, ns=(2, 10, 30))
    v = values(res)
    assert v[("random", "accuracy", None)] == pytest.approx(0.5, abs=0.02)
    assert v[("random", "spearman", None)] == pytest.approx(0.0, abs=0.01)
    for n in (2, 10, 30):
        assert v[("random", "bon_gold", n)] == pytest.approx(gold.mean(), abs=0.05)
        assert v[("random", "bon_quantile", n)] == pytest.approx(0.5, abs=0.015)


def test_bon_at_full_pool_is_the_argmax_and_does_not_depend_on_the_draw():
    sizes = [8, 5, 8, 8]
    pid, gold = pools(sizes, seed=4)
    proxy = gold + np.random.default_rng(5).standard_normal(len(gold))
    starts = np.cumsum([0] + sizes[:-1])
    full = [p for p, n in enumerate(sizes) if n == 8]
    picks = [starts[p] + np.argmax(proxy[starts[p]:starts[p] + 8]) for p in full]
    quantile = [(np.sum(gold[starts[p]:starts[p] + 8] < gold[i]) + 0.5) / 8 for p, i in zip(full, picks)]
    for seed in (0, 1, 2):
        res = sun_metrics(pid, gold, {"p": proxy}, ns=(5, 8), seed=seed)
        v = values(res)
        assert v[("p", "bon_gold", 8)] == pytest.approx(np.mean(gold[picks]), abs=1e-12)
        assert v[("p", "bon_quantile", 8)] == pytest.approx(np.mean(quantile), abs=1e-12)
        assert counts(res)[("p", "bon_gold", 8)] == 3


def test_draws_are_seeded_shared_and_independent_of_prompt_interleaving():
    pid, gold = pools([10, 15, 12, 9], seed=6)
    rng = np.random.default_rng(0)
    proxies = {"a": gold + rng.standard_normal(len(gold)), "b": rng.standard_normal(len(gold))}
    first = sun_metrics(pid, gold, proxies, ns=(2, 5), seed=11)
    assert sun_metrics(pid, gold, proxies, ns=(2, 5), seed=11).rows == first.rows
    assert sun_metrics(pid, gold, proxies, ns=(2, 5), seed=12).rows != first.rows
    # rows interleaved across prompts, order within each prompt kept: the same draws, the same numbers
    position = np.arange(len(pid)) - np.searchsorted(pid, pid)  # each row's place within its prompt
    order = np.lexsort((-pid, position))  # round robin over the prompts (last prompt first)
    assert not np.array_equal(order, np.arange(len(pid)))
    inter = sun_metrics(pid[order], gold[order], {k: v[order] for k, v in proxies.items()}, ns=(2, 5), seed=11)
    assert inter.rows == first.rows
    # any reordering keeps what does not depend on the draws
    perm = rng.permutation(len(pid))
    full = values(sun_metrics(pid[perm], gold[perm], {k: v[perm] for k, v in proxies.items()}, ns=(15,), seed=11))
    base = values(sun_metrics(pid, gold, proxies, ns=(15,), seed=11))  # N = 15: one prompt, its whole pool
    for key in [("a", "spearman", None), ("b", "spearman", None), ("a", "bon_gold", 15), ("b", "bon_quantile", 15)]:
        assert full[key] == pytest.approx(base[key], abs=1e-12)


def test_every_proxy_is_scored_on_its_own_values():
    """The anchor script loaded one member, so its mean, min and first rewards were identical."""
    pid, gold = pools([40] * 50, seed=8)
    rng = np.random.default_rng(1)
    members = np.stack([gold + rng.normal(0, s, len(gold)) for s in (0.5, 2.0, 4.0)])
    proxies = {"mean": members.mean(0), "min": members.min(0), "first": members[0]}
    res = sun_metrics(pid, gold, proxies, ns=(5, 40))
    table = res.table()
    assert table["reward"].to_list() == ["mean", "min", "first"]
    for col in ["accuracy", "spearman", "bon_gold@5", "bon_quantile@40"]:
        assert len(set(table[col].to_list())) == 3, col
    same = sun_metrics(pid, gold, {"mean": members[0], "min": members[0]}, ns=(5,)).table()
    assert same.row(0)[1:] == same.row(1)[1:]


def test_unequal_pools_skip_prompts_per_n():
    pid, gold = pools([3, 6, 10, 10], seed=2)
    res = sun_metrics(pid, gold, {"p": gold}, ns=(2, 5, 10, 11))
    c = counts(res)
    assert [c[("p", "bon_gold", n)] for n in (2, 5, 10)] == [4, 3, 2]
    assert ("p", "bon_gold", 11) not in c and ("p", "bon_quantile", 11) not in c
    assert "bon_gold@11" not in res.table().columns
    assert c[("p", "spearman", None)] == 4


def test_constant_prompts_are_skipped_from_spearman():
    pid, gold = pools([5, 5, 5, 1], seed=3)
    gold[:5] = 1.0  # constant gold
    proxy = gold.copy()
    proxy[5:10] = 0.0  # constant proxy
    res = sun_metrics(pid, gold, {"p": proxy}, ns=(2,))
    assert counts(res)[("p", "spearman", None)] == 1  # prompt 2 only (prompt 3 holds one response)
    assert counts(res)[("p", "accuracy", None)] == 2  # prompts 1 and 2 have pairs with different gold


def test_errors():
    pid, gold = pools([4, 4])
    p = {"p": gold}
    with pytest.raises(EmbrmError, match="gold"):
        sun_metrics(pid, gold[:-1], p)
    with pytest.raises(EmbrmError, match="proxy 'q'"):
        sun_metrics(pid, gold, {"p": gold, "q": gold[:-1]})
    with pytest.raises(EmbrmError, match="proxies is empty"):
        sun_metrics(pid, gold, {})
    with pytest.raises(EmbrmError, match="rows must be a boolean mask"):
        sun_metrics(pid, gold, p, np.ones(7, bool))
    bad = gold.copy()
    bad[2] = np.nan
    with pytest.raises(EmbrmError, match="1 evaluated rows have non-finite gold"):
        sun_metrics(pid, bad, p)
    rows = np.ones(8, bool)
    rows[2] = False
    assert sun_metrics(pid, bad, {"p": gold}, rows, ns=(2,)).n_prompts == 2  # NaN gold outside the rows is fine
    inf = gold.copy()
    inf[0] = np.inf
    with pytest.raises(EmbrmError, match="non-finite"):
        sun_metrics(pid, gold, {"p": inf})
    with pytest.raises(EmbrmError, match="ns"):
        sun_metrics(pid, gold, p, ns=(0, 2))
    with pytest.raises(EmbrmError, match="pairs_per_prompt"):
        sun_metrics(pid, gold, p, pairs_per_prompt=0)


def test_round_trip_frame_table_and_markdown():
    pid, gold = pools([12] * 6, seed=5)
    rng = np.random.default_rng(2)
    res = sun_metrics(pid, gold, {"mean": gold + rng.standard_normal(72), "worst case": -gold}, seed=3)
    back = SunMetrics.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res and back.seed == 3
    frame = res.frame()
    assert frame.columns == ["reward", "metric", "n", "value", "prompts"] and frame.height == len(res.rows)
    assert frame.filter(frame["metric"] == "bon_gold")["n"].to_list() == [2, 5, 10] * 2  # default SUN_N, pools of 12
    assert SUN_N == (2, 5, 10, 30, 50, 100, 300, 500)
    table = res.table()
    assert table.columns == ["reward", "accuracy", "spearman", "bon_gold@2", "bon_gold@5", "bon_gold@10",
                             "bon_quantile@2", "bon_quantile@5", "bon_quantile@10"]
    assert table["accuracy"].to_list() == [values(res)[(w, "accuracy", None)] for w in ("mean", "worst case")]
    md = res.markdown()
    assert "| mean |" in md and "| worst case |" in md and "worst case quantile" in md and "| 10 |" in md
    assert f"{values(res)[('worst case', 'spearman', None)]:.3f}" in md
