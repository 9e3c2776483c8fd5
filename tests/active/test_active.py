"""Active labelling (embrm.active): every rule picks new, distinct, available pairs of the training prompts; the
D-optimal rules equal a brute-force greedy log det and beat random batches on their objective; BALD equals a
direct computation; the campaign is reproducible, shares its seed set and labels across strategies (common random
numbers), and refuses bad configurations with one line."""

import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from realdata import needs_data
from scipy.special import expit

from embrm.active import STRATEGIES, ActiveConfig, State, annotate, build_candidates, run_active, select
from embrm.core._errors import EmbrmError
from embrm.data._overopt import overopt_dataset
from embrm.pipeline._protocol import LabelConfig
from embrm.pipeline._steps import label_pairs, split
from embrm.rewards.heads._laplace import LaplaceBT

SMALL = ActiveConfig(seed_pairs=12, batch=8, rounds=3, seeds=(0, 1), samples=8)
TIMING = ("select_seconds", "fit_seconds")


@pytest.fixture(scope="module")
def synthetic():
    """A 16-prompt x 10-candidate generated pool (known gold), its first candidate of each prompt excluded."""
    ds, X = overopt_dataset(n_prompts=16, n_candidates=10, dim=6, seed=0)
    r = ds.responses.with_columns(excluded=pl.col("candidate") == 0)
    return replace(ds, responses=r, exclusion="first candidates"), X


@pytest.fixture(scope="module")
def campaign(synthetic):
    ds, X = synthetic
    return run_active(ds, X, SMALL, progress=False)


@pytest.fixture(scope="module")
def tiny():
    """A State on 3 prompts x 5 responses in 4-d after 6 random labels (30 candidates, 24 open)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((15, 4)).astype(np.float32)
    cand = build_candidates(np.repeat(np.arange(3), 5))
    labelled = rng.choice(len(cand), 6, replace=False)
    pairs = label_pairs(cand.pairs, X @ rng.standard_normal(4), rng.random(len(cand)), LabelConfig("simulated"))
    model = LaplaceBT(C=0.5).fit(X, pairs[labelled])
    available = np.ones(len(cand), bool)
    available[labelled] = False
    return State(X, cand, available, model, model.sample(6, seed=1), lcb_beta=1.0)


def held_out_prompts(ds, seed, test_size=0.2):
    return set(split(ds.without_excluded(), LabelConfig("simulated"), test_size, seed).test.tolist())


def check_queries(ds, result):
    """Every (strategy, seed): no pair twice, none touching a held-out prompt or an excluded response, the
    seed set first and then one batch per round."""
    c = result.config
    prompt_of = dict(zip(ds.responses["response_id"], ds.responses["prompt_id"]))
    excluded = set(ds.responses.filter(pl.col("excluded"))["response_id"])
    for (name, seed), q in result.queries.group_by("strategy", "seed"):
        a, b = q["chosen_id"].to_list(), q["rejected_id"].to_list()
        assert len({frozenset(p) for p in zip(a, b)}) == len(q) == c.budget, name
        held = held_out_prompts(ds, seed, c.test_size)
        assert not {prompt_of[i] for i in a + b} & held, name
        assert not set(a + b) & excluded, name
        assert q["round"].to_list() == [0] * c.seed_pairs + list(np.repeat(np.arange(1, c.rounds + 1), c.batch))
        asked = q if not c.across_prompts else q.filter(pl.col("round") > 0)  # (the seed set is random)
        if not c.across_prompts or name in ("dts", "maxminlcb"):
            assert all(prompt_of[x] == prompt_of[y] for x, y in zip(asked["chosen_id"], asked["rejected_id"])), name


def test_no_strategy_repeats_a_pair_or_touches_a_test_prompt(synthetic, campaign):
    ds, _ = synthetic
    check_queries(ds, campaign)
    f = campaign.frame
    assert f.height == len(STRATEGIES) * 2 * (SMALL.rounds + 1)
    assert f["labels"].unique().sort().to_list() == [12, 20, 28, 36]
    assert f["accuracy"].is_between(0, 1).all() and (f["gain"] <= f["oracle_gain"] + 1e-12).all()
    assert f.filter(pl.col("round") > 0)["log_det"].min() > f.filter(pl.col("round") == 0)["log_det"].min() - 1e-9


def test_across_prompts_adds_as_many_cross_pairs(synthetic):
    ds, X = synthetic
    within = build_candidates(np.repeat(np.arange(13), 9))
    assert len(within) == 13 * 36
    config = replace(SMALL, across_prompts=True, seeds=(3,))
    result = run_active(ds, X, config, progress=False)
    assert result.candidates == (2 * 13 * 36,) and result.to_dict()["candidates"] == {"3": 2 * 13 * 36}
    check_queries(ds, result)
    prompt_of = dict(zip(ds.responses["response_id"], ds.responses["prompt_id"]))
    q = result.queries.filter(pl.col("strategy") == "random")
    assert any(prompt_of[a] != prompt_of[b] for a, b in zip(q["chosen_id"], q["rejected_id"]))


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("batch", [1, 5, 40])  # 40: more than the prompts (several sweeps) and than the open pairs
def test_each_rule_returns_min_batch_new_distinct_pairs(tiny, name, batch):
    picks = select(name, tiny, batch, np.random.default_rng(0))
    assert picks.dtype == np.int64 and len(picks) == min(batch, int(tiny.available.sum()))
    assert len(np.unique(picks)) == len(picks) and tiny.available[picks].all()


def logdet_after(A, X, pairs, w, batch):
    D = X[pairs[batch, 0]].astype(np.float64) - X[pairs[batch, 1]]
    return np.linalg.slogdet(A + (D * w[batch, None]).T @ D)[1]


def brute_force_greedy(A, X, pairs, w, free, k):
    """Greedy log det by np.linalg.slogdet for every candidate at every step."""
    picks = []
    for _ in range(k):
        gains = [-np.inf if j in picks else logdet_after(A, X, pairs, w, picks + [j]) for j in free]
        picks.append(int(free[int(np.argmax(gains))]))
    return picks


def fisher_weights(state):
    m = state.mean[state.candidates.pairs[:, 0]] - state.mean[state.candidates.pairs[:, 1]]
    return expit(m) * (1 - expit(m))


@pytest.mark.parametrize("name", ["dopt", "dopt_past"])
def test_dopt_equals_a_brute_force_greedy(tiny, name):
    picks = select(name, tiny, 6, np.random.default_rng(0))
    lam = tiny.model.prior_precision
    A = tiny.model.precision_ if name == "dopt_past" else lam * np.eye(4)
    expected = brute_force_greedy(A, tiny.X, tiny.candidates.pairs, fisher_weights(tiny),
                                  np.flatnonzero(tiny.available), 6)
    assert picks.tolist() == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dopt_batch_raises_log_det_more_than_random_batches(synthetic, seed):
    ds, X = synthetic
    from embrm.active._campaign import prepare_seed
    pool = prepare_seed(ds.without_excluded(), X[~ds.excluded], SMALL, seed)
    model = LaplaceBT().fit(pool.X, pool.oriented[pool.seed_set])
    available = np.ones(len(pool.candidates), bool)
    available[pool.seed_set] = False
    state = State(pool.X, pool.candidates, available, model, model.sample(4, seed=0))
    w, rng = fisher_weights(state), np.random.default_rng(seed)
    lam_I = model.prior_precision * np.eye(X.shape[1])
    for name, A in (("dopt", lam_I), ("dopt_past", model.precision_)):
        best = logdet_after(A, pool.X, pool.candidates.pairs, w, select(name, state, 10, rng))
        randoms = [logdet_after(A, pool.X, pool.candidates.pairs, w, select("random", state, 10, rng))
                   for _ in range(20)]
        assert best > max(randoms), name


def test_bald_equals_a_direct_computation(tiny):
    def entropy(p):
        return -p * np.log(p) - (1 - p) * np.log(1 - p)

    score = {}
    for j in np.flatnonzero(tiny.available):
        a, b = tiny.candidates.pairs[j]
        p = [1 / (1 + np.exp(-(tiny.X[a].astype(float) - tiny.X[b]) @ tiny.W[:, k])) for k in range(6)]
        score[j] = entropy(np.mean(p)) - np.mean([entropy(q) for q in p])
    expected = sorted(score, key=lambda j: -score[j])[:7]
    assert select("bald", tiny, 7, np.random.default_rng(0)).tolist() == expected


def test_maxminlcb_and_dts_pick_the_rule_s_pair_in_each_prompt(tiny):
    """With a batch of one prompt per sweep, each pick is the rule's pair for its prompt, computed directly."""
    cand, S = tiny.candidates, tiny.model.covariance()
    rows = cand.pools.rows
    X = tiny.X.astype(np.float64)
    picks = select("maxminlcb", tiny, 3, np.random.default_rng(0))
    assert sorted(tiny.candidates.prompt[picks].tolist()) == [0, 1, 2]
    for p in range(3):
        open_ = tiny.available[cand.pair_at[p]] & (cand.pair_at[p] >= 0)
        x = X[rows[p]]
        mu = x @ tiny.model.map_
        lcb = {(i, j): mu[i] - mu[j] - np.sqrt((x[i] - x[j]) @ S @ (x[i] - x[j]))
               for i in range(5) for j in range(5) if open_[i, j]}
        leader = max({i for i, _ in lcb}, key=lambda i: min(v for (a, _), v in lcb.items() if a == i))
        follower = min((j for a, j in lcb if a == leader), key=lambda j: lcb[leader, j])
        assert cand.pair_at[p, leader, follower] in picks.tolist()


def test_the_same_seed_gives_identical_results(synthetic, campaign):
    ds, X = synthetic
    again = run_active(ds, X, SMALL, progress=False)
    assert again.frame.drop(TIMING).equals(campaign.frame.drop(TIMING))
    assert again.queries.equals(campaign.queries) and again.prompts.equals(campaign.prompts)
    assert json.dumps(again.summary.to_dict()) == json.dumps(campaign.summary.to_dict())


def test_common_random_numbers_seed_set_and_labels(synthetic, campaign):
    """Per seed: the same seed set under every strategy, and a pair labelled by several strategies gets the same
    label from all of them."""
    q = campaign.queries
    for seed in SMALL.seeds:
        seed_sets = {name: set(zip(g["chosen_id"], g["rejected_id"]))
                     for (name,), g in q.filter((pl.col("seed") == seed) & (pl.col("round") == 0))
                     .group_by("strategy")}
        assert len(seed_sets) == len(STRATEGIES) and len({frozenset(s) for s in seed_sets.values()}) == 1
        by_pair = q.filter(pl.col("seed") == seed).with_columns(
            key=pl.concat_str(pl.min_horizontal("chosen_id", "rejected_id"), pl.lit("|"),
                              pl.max_horizontal("chosen_id", "rejected_id")))
        shared = by_pair.group_by("key").agg(pl.col("chosen_id").n_unique().alias("labels"),
                                             pl.col("strategy").n_unique().alias("askers"))
        assert (shared["labels"] == 1).all()
        assert (shared.filter(pl.col("askers") > 1).height > SMALL.seed_pairs)  # pairs beyond the seed set shared
    r0 = campaign.frame.filter(pl.col("round") == 0).drop(TIMING[0])
    assert r0.group_by("seed").agg(pl.col("accuracy").n_unique())["accuracy"].to_list() == [1, 1]


def test_the_annotator_follows_embrm_labels_rules():
    rng = np.random.default_rng(0)
    gold = np.array([0.0, 1.0, 1.0])
    pairs = np.tile([[0, 1], [1, 2]], (20_000, 1))
    u = rng.random(len(pairs))
    better = label_pairs(pairs, gold, u, LabelConfig("simulated", flip=0.0))
    assert (better[::2] == [1, 0]).all()  # the better response first
    assert abs(np.mean(better[1::2, 0] == 1) - 0.5) < 0.02  # gold tie: a fair coin
    flipped = label_pairs(pairs, gold, u, LabelConfig("simulated", flip=0.25))
    assert abs(np.mean(flipped[::2, 0] == 0) - 0.25) < 0.02
    bt = label_pairs(pairs, gold, u, LabelConfig("simulated", beta=2.0), scale=2.0)
    assert abs(np.mean(bt[::2, 0] == 1) - expit(1.0)) < 0.02
    with pytest.warns(DeprecationWarning, match="label_pairs"):  # the old name, kept for one release
        assert (annotate(pairs, gold, u, beta=2.0, scale=2.0) == bt).all()


def test_summary_markdown_plot_and_files(campaign, tmp_path):
    s = campaign.summary
    assert set(s) == set(STRATEGIES) and s["random"].accuracy_vs_random is None and s["random"].auc_vs_random is None
    assert s["random"].labels_to_target is not None  # the target is random's own final accuracy
    words = {"reproduced": "beats random", "reversed": "worse than random",
             "not reproduced (inconclusive)": "no difference from random (inconclusive)"}
    for name in STRATEGIES[1:]:
        for key, e in (("final_accuracy", s[name].accuracy_vs_random), ("auc", s[name].auc_vs_random)):
            assert e.lo <= e.estimate <= e.hi
            # the evaluation's one verdict, in the campaign's words, in the JSON and in the table
            shown = s.to_dict()[name]["vs_random"][key]
            assert shown["verdict"] == words[e.verdict()] and shown["estimate"] == e.estimate
    auc = campaign.frame.filter(pl.col("strategy") == "dopt").group_by("round").agg(
        pl.col("labels").first(), pl.col("accuracy").mean()).sort("round")
    assert np.isclose(s["dopt"].auc, np.trapezoid(auc["accuracy"], auc["labels"]) / (36 - 12))
    md = campaign.markdown()
    assert all(f"| {name} |" in md for name in STRATEGIES)
    assert ("No strategy beats random" in md) != ("Beats random" in md)
    paths = campaign.write(tmp_path / "out")
    assert json.loads(paths["summary"].read_text())["config"]["strategies"] == list(STRATEGIES)
    assert pl.read_parquet(paths["curves"]).equals(campaign.frame)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "active.png", "curves.parquet", "prompts.parquet", "queries.parquet", "summary.json"]


@pytest.mark.parametrize("kwargs, match", [
    ({"strategies": ("random", "uncertainty")}, r"unknown strategy 'uncertainty': use one or more of random, "
                                                r"disagreement, dopt, dopt_past, bald, dts, maxminlcb"),
    ({"strategies": ()}, r"strategies is empty"),
    ({"strategies": ("bald", "bald")}, r"duplicates"),
    ({"seeds": ()}, r"seeds is empty"),
    ({"seeds": (0, -1)}, r"seeds must be an integer in \[0, 4294967295\], got -1"),
    ({"batch": 0}, r"batch must be an integer in \[1, "),
    ({"rounds": 2.5}, r"rounds must be an integer"),
    ({"samples": 1}, r"samples must be an integer in \[2, "),
    ({"C": 0}, r"C must be a finite number > 0, got 0"),
    ({"test_size": 1.0}, r"test_size must be a number in \(0, 1\), got 1.0"),
    ({"flip": 1.5}, r"flip must be a number in \[0, 1\], got 1.5"),
    ({"beta": -1}, r"beta must be a finite number >= 0"),
    ({"across_prompts": "yes"}, r"across_prompts must be true or false"),
])
def test_bad_configs_are_one_line_errors(kwargs, match):
    with pytest.raises(EmbrmError, match=match) as e:
        ActiveConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_data_is_a_one_line_error(synthetic):
    ds, X = synthetic
    cases = [
        ((ds, X, replace(SMALL, rounds=100)), r"budget seed_pairs \+ rounds x batch = 12 \+ 100 x 8 = 812 exceeds "
                                              r"the 468 candidate pairs .*lower rounds, batch or seed_pairs"),
        ((replace(ds, responses=ds.responses.with_columns(scored=False)), X, SMALL), r"no gold scores"),
        ((ds, X[:-1], SMALL), r"159 embeddings for 160 responses"),
        ((ds, X, {"rounds": 2}), r"config must be an embrm.active.ActiveConfig"),
    ]
    for args, match in cases:
        with pytest.raises(EmbrmError, match=match) as e:
            run_active(*args, progress=False)
        assert "\n" not in str(e.value)


@pytest.mark.slow
@needs_data
def test_real_subset_campaign(models_subset):
    """30 prompts x 15 models of the real pool with MiniLM embeddings: every rule, two seeds."""
    ds, X = models_subset
    config = ActiveConfig(seed_pairs=10, batch=10, rounds=2, seeds=(0, 1), samples=8)
    result = run_active(ds, X, config, progress=False)
    check_queries(ds, result)
    assert set(result.candidates) == {24 * 105}
    f = result.frame
    assert f.height == len(STRATEGIES) * 2 * 3 and f["accuracy"].is_between(0, 1).all()
    assert (f["log_det"].is_finite()).all() and (f["ece"].is_between(0, 1)).all()
    assert result.prompts.group_by("strategy", "seed", "round").agg(pl.len())["len"].unique().to_list() == [6]
