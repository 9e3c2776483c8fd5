"""Policy-side over-optimisation on pools (embrm.methods._policy): KL-regularised optimum, DPO / RPO."""

import json

import numpy as np
import polars as pl
import pytest
import torch
from realdata import needs_data

from embrm.core._errors import EmbrmError
from embrm.data._labels import pair_indices, simulate_pairs
from embrm.evaluation._pools import group_pools
from embrm.methods._policy import fit_gao_rl, kl_optimum_curves, policy_loss, tilted_policy, train_policy


def unequal_pools(seed=0, P=30):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 10, P)
    pi = np.repeat(np.arange(P), sizes)
    return pi, rng.standard_normal(pi.size), rng.standard_normal(pi.size), sizes


def test_kl_optimum_limits_and_monotone_kl():
    pi, reward, gold, sizes = unequal_pools()
    kc = kl_optimum_curves(pi, reward, gold, np.geomspace(1e-4, 1e4, 41))
    pools = group_pools(pi)
    gp, rp = pools.gather(gold), pools.gather(reward, -np.inf)
    # beta -> inf: pi_ref (KL 0, gold = pool mean); beta -> 0: the argmax (KL = log N_p, gold of the argmax)
    assert kc.kl[-1] < 1e-6 and np.isclose(kc.gold[-1], (gp.sum(1) / sizes).mean(), atol=1e-4)
    np.testing.assert_allclose(kc.kl_prompt[0], np.log(sizes), atol=1e-6)
    np.testing.assert_allclose(kc.gold_prompt[0], gp[np.arange(len(sizes)), rp.argmax(1)], atol=1e-6)
    assert (np.diff(kc.kl) <= 1e-12).all() and kc.kl[0] > kc.kl[20] > kc.kl[-1]
    assert np.isclose(kc.random, (gp.sum(1) / sizes).mean()) and kc.oracle >= kc.gold.max()


def test_exact_expectation_matches_monte_carlo_samples():
    pi, reward, gold, sizes = unequal_pools(seed=3, P=40)
    pools = group_pools(pi)
    probs, kl = tilted_policy(pools.gather(reward), pools.valid, [0.7])
    kc = kl_optimum_curves(pi, reward, gold, [0.7])
    rng = np.random.default_rng(0)
    S = 20_000  # inverse-CDF sampling, all prompts at once
    u = rng.random((S, len(sizes), 1))
    pick = np.minimum((u > np.cumsum(probs[0], axis=1)[None]).sum(axis=2), sizes - 1)
    g = pools.gather(gold)[np.arange(len(sizes)), pick]                     # (S, P)
    assert abs(g.mean() - kc.gold[0]) < 4 * g.mean(axis=1).std() / np.sqrt(S) + 1e-9
    logratio = np.log(probs[0][np.arange(len(sizes)), pick] * sizes)       # log pi / pi_ref at the samples
    assert abs(logratio.mean() - kl.mean()) < 4 * logratio.mean(axis=1).std() / np.sqrt(S)


def test_gao_rl_fit_recovers_known_parameters():
    d = np.linspace(0.05, 2.0, 30)
    alpha, beta = fit_gao_rl(np.r_[0.0, d], np.r_[0.0, d * (0.8 - 0.3 * np.log(d))])
    assert np.isclose(alpha, 0.8) and np.isclose(beta, 0.3)
    with pytest.raises(EmbrmError, match="two distinct"):
        fit_gao_rl([0.0, 1.0], [0.0, 1.0])


def test_policy_loss_matches_its_definition_and_the_analytic_gradient():
    rng = np.random.default_rng(0)
    phi = torch.tensor(rng.standard_normal((2, 4, 3)))
    valid = torch.tensor([[True] * 4, [True, True, True, False]])           # the second pool has 3 candidates
    pairs = torch.tensor([[0, 1, 3], [1, 2, 0], [0, 0, 2]])
    theta = torch.tensor(rng.standard_normal(3), requires_grad=True)
    beta, w = 0.5, 0.3
    total, dpo, nll = policy_loss(theta, phi, valid, pairs, beta=beta, rpo_weight=w)
    p, c, r = pairs.T
    th = theta.detach()
    s = phi @ th
    # the definition: log pi_theta from a softmax over each pool, pi_ref uniform over the pool (1/4, 1/3)
    logp = torch.log_softmax(s.masked_fill(~valid, -torch.inf), dim=1)
    ratio = logp + torch.log(valid.sum(1, keepdim=True).double())
    margin = beta * (ratio[p, c] - ratio[p, r])
    assert torch.isclose(dpo, -torch.nn.functional.logsigmoid(margin).mean())
    assert torch.isclose(nll, -logp[p, c].mean()) and torch.isclose(total, dpo + w * nll)
    assert policy_loss(theta, phi, valid, pairs, beta=beta)[2] is None      # DPO alone needs no log-partition
    total.backward()
    pi = logp.exp()
    e_phi = (pi[..., None] * phi).sum(1)                                   # E_pi[phi] per pool
    grad = (-beta * torch.sigmoid(-margin)[:, None] * (phi[p, c] - phi[p, r])).mean(0) \
        + w * (e_phi[p] - phi[p, c]).mean(0)
    torch.testing.assert_close(theta.grad, grad)


def hackable_policy_pool(P=150, N=16, d=8, seed=0):
    """Features x = (q, h, noise...); gold = q + h - 2 relu(h - 0.5)^2; the annotator prefers larger q + h
    (a hackable proxy: it keeps rewarding h past gold's peak)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P * N, d)).astype(np.float32)
    q, h = X[:, 0].astype(float), X[:, 1].astype(float)
    pid = np.repeat(np.arange(P), N)
    responses = pl.DataFrame({"prompt_id": [f"p{i:03d}" for i in pid],
                              "response_id": [f"p{i:03d}:{j}" for i, j in zip(pid, np.tile(np.arange(N), P))],
                              "gold": q + h - 2.0 * np.maximum(h - 0.5, 0) ** 2})
    train = pid < 100
    labelled = responses.with_columns(gold=pl.Series(q + h))
    train_ids = np.unique(responses["prompt_id"].to_numpy()[train])
    pairs = simulate_pairs(labelled, 2000, beta=10.0, prompt_ids=train_ids, seed=0)
    return X, responses, pid, train, pair_indices(pairs, responses)


def test_dpo_overoptimises_and_rpo_keeps_kl_lower():
    X, responses, pid, train, pairs = hackable_policy_pool()
    tp, ep = group_pools(pid, train), group_pools(pid, ~train)
    gold = responses["gold"].to_numpy()
    runs = {w: train_policy(X, tp, pairs, ep, gold, beta=0.1, rpo_weight=w, epochs=20, lr=0.05, batch_size=256,
                            seed=0).history
            for w in (0.0, 0.1)}
    dpo, rpo = runs[0.0], runs[0.1]
    kl = dpo["kl"].to_numpy()
    assert kl[0] == 0 and (np.diff(kl[1:]) > 0).mean() > 0.8 and kl[-1] > 2 * kl[2]   # KL keeps growing
    g = dpo["gold"].to_numpy()
    assert 0 < int(np.argmax(g)) < len(g) - 1 and g[-1] < g.max() - 0.1                # gold peaks, then falls
    assert rpo["kl"][-1] < 0.6 * kl[-1] and rpo["gold"][-1] > g[-1]                    # the SFT term mitigates
    assert dpo["dpo_loss"][-1] < dpo["dpo_loss"][1] and dpo["nll"][-1] > rpo["nll"][-1] + 1  # chosen NLL grows


def test_bad_input_is_a_one_line_error():
    X, responses, pid, train, pairs = hackable_policy_pool(P=4, N=3)
    with pytest.raises(EmbrmError, match="betas"):
        kl_optimum_curves(pid, responses["gold"], responses["gold"], [0.0, 1.0])
    tp = group_pools(pid, pid < 2)
    across = np.array([[0, 3]])  # rows from two different prompts
    with pytest.raises(EmbrmError, match="one pool"):
        train_policy(X, tp, across, tp, responses["gold"].to_numpy(), epochs=1)


def test_policy_cli_writes_outputs(tmp_path):
    from synthdata import pool_file_with_cache
    from typer.testing import CliRunner

    from embrm.cli import app

    path, cache = pool_file_with_cache(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["policy", str(path), "--betas", "0.01,0.1,1,10", "--epochs", "3",
                                   "--n-pairs", "300", "--rpo-weight", "0.2", "--cache-dir", str(cache),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "kl_optimum" in res.output and "Gao RL fit" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rpo_weight"] == 0.2 and {"kl_optimum", "bon", "dpo", "rpo"} <= set(summary)
    curves = pl.read_parquet(out / "curves.parquet")
    assert curves.filter(pl.col("curve") == "dpo").height == 4 and (out / "policy.png").exists()
    bad = CliRunner().invoke(app, ["policy", str(path), "--betas", "x", "--cache-dir", str(cache)])
    assert bad.exit_code == 2 and "--betas" in bad.output


@pytest.mark.slow
@needs_data
def test_real_pool_policy_study(models_subset):
    from embrm.methods._policy import policy_study

    ds, X = models_subset
    summary, frame = policy_study(ds, X, seed=0, epochs=6, n_pairs=2000, k=2)
    ko = frame.filter(pl.col("curve") == "kl_optimum").sort("param")
    assert np.isclose(ko["gold"][-1], summary.random, atol=1e-3) and ko["kl"][-1] < 1e-4   # beta = 1e3
    assert ko["kl"][0] > 2.5                                                                 # ~log 14-15
    dpo = frame.filter(pl.col("curve") == "dpo").sort("param")
    assert dpo["kl"][0] == 0 and dpo["kl"][-1] > dpo["kl"][1] > 0
    assert summary.curve("rpo").end_kl < summary.curve("dpo").end_kl
