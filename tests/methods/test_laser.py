import json

import numpy as np
import polars as pl
import pytest
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core._errors import EmbrmError
from embrm.methods._laser import arm_reward_matrix, laser_study, linucb_select, prompt_contexts


def two_cluster_bandit(P=800, d=8, seed=0):
    """Arm 0 pays on cluster A, arm 1 on cluster B, arm 2 a small constant everywhere (the best single arm is
    0 or 1, each right on about half of the prompts)."""
    rng = np.random.default_rng(seed)
    cl = rng.integers(0, 2, P)
    C = rng.normal(0, 0.3, (P, d)) / np.sqrt(d)
    C[:, 0] += np.where(cl == 0, 0.5, -0.5)
    C[:, -1] = 1.0  # bias feature
    R = np.stack([np.where(cl == 0, 0.3, -0.2), np.where(cl == 1, 0.3, -0.2), np.full(P, 0.05)], 1)
    return C, R + rng.normal(0, 0.05, R.shape), cl


def test_linucb_learns_the_right_arm_per_cluster():
    C, R, cl = two_cluster_bandit()
    res = linucb_select(C, R, alpha=0.1, seed=0)
    late = slice(-200, None)
    assert np.mean(res.choices[late] == cl[res.order[late]]) > 0.95  # the cluster's own arm, on new prompts
    first, last = res.quarter_regret()
    assert last < 0.1 * first  # per-round regret vs the oracle arm shrinks: sublinear cumulative regret
    assert res.regret_vs_best_arm[-1] < -100  # switching per prompt beats every single arm by far
    assert res.regret_vs_oracle[-1] < 0.1 * (R.max(1) - R[:, res.best_arm]).sum()
    assert res.counts.sum() == len(C) and res.best_arm in (0, 1)


def test_linucb_statistics_are_the_ridge_least_squares_solution():
    rng = np.random.default_rng(1)
    P, d, M, lam = 120, 4, 3, 2.0
    C = rng.standard_normal((P, d))
    R = C @ rng.standard_normal((d, M)) + 0.3 * rng.standard_normal((P, M))
    res = linucb_select(C, R, alpha=0.5, seed=3, lam=lam)
    Co, Ro = C[res.order], R[res.order]
    for k in range(M):
        mine = res.choices == k
        Ck, rk = Co[mine], Ro[mine, k]
        A = lam * np.eye(d) + Ck.T @ Ck
        np.testing.assert_allclose(res.A_inv[k], np.linalg.inv(A), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(res.b[k], Ck.T @ rk, rtol=1e-10, atol=1e-10)
        # theta = argmin ||Ck theta - rk||^2 + lam ||theta||^2, solved as an augmented least-squares problem
        aug = np.vstack([Ck, np.sqrt(lam) * np.eye(d)])
        theta, *_ = np.linalg.lstsq(aug, np.r_[rk, np.zeros(d)], rcond=None)
        np.testing.assert_allclose(res.theta[k], theta, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.rewards, Ro[np.arange(P), res.choices])


def test_every_choice_maximises_the_ucb_of_its_history():
    """Replay: at each round the played arm maximises c.theta_k + alpha sqrt(c^T A_k^-1 c), with theta_k and A_k
    re-solved directly from the arm's previous rounds."""
    rng = np.random.default_rng(2)
    P, d, M, alpha = 60, 3, 3, 0.7
    C, R = rng.standard_normal((P, d)), rng.standard_normal((P, M))
    res = linucb_select(C, R, alpha=alpha, seed=5, warmup=2)
    assert res.choices[:2 * M].tolist() == [0, 1, 2, 0, 1, 2]  # warm-up: every arm in turn
    Co, Ro = C[res.order], R[res.order]
    for t in range(2 * M, P):
        ucb = np.empty(M)
        for k in range(M):
            past = np.flatnonzero(res.choices[:t] == k)
            A = np.eye(d) + Co[past].T @ Co[past]
            theta = np.linalg.solve(A, Co[past].T @ Ro[past, k])
            c = Co[t]
            ucb[k] = c @ theta + alpha * np.sqrt(c @ np.linalg.solve(A, c))
        assert ucb[res.choices[t]] >= ucb.max() - 1e-9


def test_warmup_prevents_lock_in_when_every_arm_pays():
    """All arms have positive reward and arm 2 is best: with no warm-up and a small alpha the first arm tried
    keeps winning (its estimate beats the untried arms' bare bonus); one warm-up round per arm fixes that."""
    rng = np.random.default_rng(0)
    P = 300
    C = np.c_[rng.normal(0, 0.2, (P, 3)), np.ones(P)]
    R = np.array([0.5, 0.6, 0.9]) + rng.normal(0, 0.02, (P, 3))
    cold = linucb_select(C, R, alpha=0.1, seed=0, warmup=0)
    warm = linucb_select(C, R, alpha=0.1, seed=0, warmup=1)
    assert cold.counts.max() > P - 5 and cold.counts.argmax() != 2
    assert warm.counts[2] > P - 20


def test_seeded_and_greedy_differs():
    C, R, _ = two_cluster_bandit(P=200)
    a, b = linucb_select(C, R, seed=4), linucb_select(C, R, seed=4)
    assert np.array_equal(a.choices, b.choices) and np.array_equal(a.order, b.order)
    assert not np.array_equal(linucb_select(C, R, seed=5).order, a.order)
    greedy = linucb_select(C, R, alpha=0.0, seed=4)
    assert greedy.alpha == 0.0 and greedy.counts.sum() == 200


def test_arm_reward_matrix_is_the_exact_best_of_n():
    # prompt "a", worked by hand: proxy (.1,.5,.3,.9), gold (1,2,0,-1), n=2 -> 1/6
    prompt = np.array(["a"] * 4 + ["b"] * 3)
    gold = np.array([1, 2, 0, -1, 5, 1, np.nan])
    S = np.array([[.1, 0], [.5, 1], [.3, 2], [.9, 3], [3, 0], [1, 1], [9, 9]])
    out = arm_reward_matrix(prompt, S, gold, n=2)
    assert out["prompts"].tolist() == ["a", "b"]
    np.testing.assert_allclose(out["bon"][0, 0], 1 / 6, rtol=1e-6)  # bon's per-prompt values are float32
    np.testing.assert_allclose(out["bon"][1], [5, 1], rtol=1e-6)  # the unscored row never enters the pool of "b"
    full = arm_reward_matrix(prompt, S, gold)  # n = each prompt's whole scored pool: the argmax pick
    np.testing.assert_allclose(full["bon"], [[-1, -1], [5, 1]], rtol=1e-6)
    np.testing.assert_allclose(full["mean"], [0.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(full["max"], [2, 5], rtol=1e-6)
    np.testing.assert_array_equal(full["pool_size"], [4, 2])


def test_prompt_contexts_mean_pca_and_bias():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 6)).astype(np.float32)
    pid = np.repeat(np.array(["p2", "p0", "p1", "p3", "p4"]), 6)
    keys, raw = prompt_contexts(pid, X, dim=None, bias=False)
    assert keys.tolist() == ["p0", "p1", "p2", "p3", "p4"]
    np.testing.assert_allclose(raw[0], X[6:12].mean(0), rtol=1e-5)
    _, Z = prompt_contexts(pid, X, dim=3)
    assert Z.shape == (5, 4) and np.all(Z[:, -1] == 1)
    np.testing.assert_allclose((Z[:, :3] ** 2).sum(0), np.full(3, 5 / 3 * (5 - 1) / 5), rtol=1e-4)


def clustered_pool(P=400, N=8, dim=12, seed=0):
    """Responses whose prompt embedding reveals a cluster; arm 0 tracks gold in cluster A, arm 1 in cluster B,
    each is noise elsewhere."""
    rng = np.random.default_rng(seed)
    cl = rng.integers(0, 2, P)
    centre = np.where(cl[:, None] == 0, 1.0, -1.0) * np.eye(dim)[0] * 3 + rng.normal(0, 0.5, (P, dim))
    p = np.repeat(np.arange(P), N)
    X = (centre[p] + rng.normal(0, 1, (P * N, dim))).astype(np.float32)
    gold = rng.normal(0, 1, P * N)
    noise = rng.normal(0, 1, (P * N, 2))
    good = np.stack([cl[p] == 0, cl[p] == 1], 1)
    S = np.where(good, gold[:, None] + 0.3 * noise, noise)
    df = pl.DataFrame({"prompt_id": [f"q{i:03d}" for i in p], "gold": gold})
    return df, X, S, cl


def test_laser_study_beats_single_arms_and_the_ensemble():
    df, X, S, _ = clustered_pool()
    summary, trace = laser_study(df, X, S, ["a", "b"], alpha=0.1, seed=0, dim=4)
    g = {s.name: s.mean_gold_last_half for s in summary.selections}
    assert g["laser"] > max(g["arm:a"], g["arm:b"], g["ensemble"]) + 0.2
    assert g["laser"] > 0.9 * g["oracle_arm"] and g["random"] < g["arm:a"] < g["oracle_arm"]
    r = summary.regret
    assert r.per_round_vs_oracle_last_quarter < 0.3 * r.per_round_vs_oracle_first_quarter
    assert r.vs_best_arm < 0
    assert trace.height == summary.n_rounds == 400
    np.testing.assert_allclose(trace["gold"].mean(), summary.selection("laser").mean_gold)
    played = {s.name: s.rounds_played for s in summary.selections if s.rounds_played is not None}
    assert played == {"arm:a": (trace["arm"] == "a").sum(), "arm:b": (trace["arm"] == "b").sum()}
    d = json.loads(json.dumps(summary.to_dict()))  # JSON-able at the boundary, the same numbers
    assert d["mean_gold_last_half"] == g and d["choices"] == {"a": played["arm:a"], "b": played["arm:b"]}


def test_laser_study_rejects_bad_input():
    df, X, S, _ = clustered_pool(P=20)
    with pytest.raises(EmbrmError, match="scores must be"):
        laser_study(df, X, S[:, :1], ["a", "b"])
    with pytest.raises(EmbrmError, match="distinct"):
        laser_study(df, X, S, ["a", "a"])
    with pytest.raises(EmbrmError, match="alpha"):
        linucb_select(np.ones((3, 2)), np.ones((3, 2)), alpha=-1)
    with pytest.raises(EmbrmError, match="arm_rewards"):
        linucb_select(np.ones((3, 2)), np.ones((4, 2)))


# ----------------------------------------------------------------------------- real data + CLI

@pytest.mark.slow
@needs_data
def test_cli_laser_on_a_real_pool(renamed_pool, tmp_path):
    out = tmp_path / "run"
    common = [str(renamed_pool / "pool.toml"), "--cache-dir", str(renamed_pool / "cache"), "--dtype", "float32"]
    res = CliRunner().invoke(app, ["laser", *common, "--arms", "bt,length", "--arms", "noisy", "--n-pairs", "800",
                                   "--dim", "4", "--out", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["arms"] == ["bt", "length", "noisy"] and summary["n_rounds"] == 6
    g = summary["mean_gold"]
    assert g["random"] <= g["oracle_arm"] <= g["oracle_response"]
    assert min(g[f"arm:{a}"] for a in summary["arms"]) <= g["laser"] <= g["oracle_arm"] + 1e-12
    assert {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k != "command"} == summary
    trace = pl.read_parquet(out / "trace.parquet")
    assert trace.height == 6 and (out / "laser.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["laser", *common, "--arms", "bt,nonsense"])
    assert bad.exit_code == 2 and "unknown arm" in bad.output
