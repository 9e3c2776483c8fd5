"""The Laplace (Bayesian linear BT) head: its posterior equals a direct computation, and its draws act as members."""

import numpy as np
import pytest
from scipy.optimize import minimize
from synthdata import synthetic_pairs

from embrm.core._errors import EmbrmError
from embrm.pipeline._protocol import Learner
from embrm.rewards._ensemble import fit_ensemble
from embrm.rewards.heads import LaplaceBT, LinearBT


@pytest.fixture(scope="module")
def noisy():
    """Pairs labelled by a BT annotator (so the MAP is finite and the curvature weights differ per pair)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    w = rng.standard_normal(8)
    a, b = rng.integers(0, 300, 900), rng.integers(0, 300, 900)
    a, b = a[a != b], b[a != b]
    a_wins = rng.random(len(a)) < 1 / (1 + np.exp(-(X[a] - X[b]).astype(float) @ w))
    return X, np.where(a_wins[:, None], np.stack([a, b], 1), np.stack([b, a], 1)).astype(np.int64)


def direct_posterior(X, pairs, C):
    """MAP by a generic optimiser on the BT log-posterior, and the Hessian summed pair by pair."""
    D = X[pairs[:, 0]].astype(np.float64) - X[pairs[:, 1]]
    lam = 1 / (2 * C)

    def f(w):
        z = D @ w
        return np.logaddexp(0, -z).sum() + lam / 2 * w @ w, -D.T @ (1 / (1 + np.exp(z))) + lam * w

    w = minimize(f, np.zeros(D.shape[1]), jac=True, method="BFGS", options={"gtol": 1e-10}).x
    return w, direct_posterior_at(X, pairs, C, w)


def direct_posterior_at(X, pairs, C, w):
    """The BT log-posterior's Hessian at w, one outer product per pair."""
    H = np.eye(X.shape[1]) / (2 * C)
    for d in X[pairs[:, 0]].astype(np.float64) - X[pairs[:, 1]]:
        p = 1 / (1 + np.exp(-d @ w))
        H += p * (1 - p) * np.outer(d, d)
    return H


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_the_posterior_equals_a_direct_computation(noisy, C):
    X, pairs = noisy
    head = LaplaceBT(C=C).fit(X, pairs)
    w, H = direct_posterior(X, pairs, C)
    assert np.allclose(head.map_, w, atol=1e-6)
    assert np.allclose(head.precision_, H, rtol=1e-5)  # the two optima agree to ~1e-7
    H = direct_posterior_at(X, pairs, C, head.map_)
    assert np.allclose(head.precision_, H, rtol=1e-10, atol=1e-10)
    S = np.linalg.inv(H)
    assert np.allclose(head.covariance(), S, rtol=1e-8, atol=1e-10)
    assert np.isclose(head.log_det_precision(), np.linalg.slogdet(H)[1])
    x = X[:7].astype(np.float64)
    assert np.allclose(head.predict_std(X[:7]), np.sqrt(np.einsum("ij,jk,ik->i", x, S, x)))
    mean, var = head.pair_moments(X, pairs[:9])
    D = X[pairs[:9, 0]].astype(np.float64) - X[pairs[:9, 1]]
    assert np.allclose(mean, D @ head.map_) and np.allclose(var, np.einsum("ij,jk,ik->i", D, S, D))


def test_its_mode_is_linear_bt_with_the_same_c(noisy):
    X, pairs = noisy
    lin = LinearBT(C=0.3, max_iter=10_000).fit(X, pairs)
    assert np.allclose(LaplaceBT(C=0.3).fit(X, pairs).coef_, lin.coef_, atol=2e-3)


def test_draws_follow_the_posterior_and_warm_starts_converge_at_once(noisy):
    X, pairs = noisy
    head = LaplaceBT(C=1.0).fit(X, pairs)
    draws = head.sample(40_000, seed=1)
    assert np.allclose(draws.mean(1), head.map_, atol=0.01)
    assert np.allclose(np.cov(draws), head.covariance(), atol=3e-3 * np.abs(head.covariance()).max() + 1e-4)
    again = LaplaceBT(C=1.0).fit(X, pairs, init=head.map_)
    assert again.n_iter_ <= 1 and np.allclose(again.map_, head.map_, atol=1e-8)
    more = np.concatenate([pairs, pairs[:50]])
    assert LaplaceBT(C=1.0).fit(X, more, init=head.map_).n_iter_ < head.n_iter_


def test_posterior_draws_are_the_ensemble_members():
    X, pairs, pp = synthetic_pairs(400, 12, 800, 0, prompt_size=8)
    ens = fit_ensemble(X, pairs, head="laplace", mode="posterior", k=6, pair_prompt_ids=pp, seed=2, C=0.5)
    W = np.stack([m.coef_ for m in ens.members], 1)
    assert np.array_equal(ens.predict(X), (X @ W).astype(np.float32))
    assert np.allclose(W, ens.posterior.sample(6, 2), atol=1e-6)  # seeded: the same draws again
    assert len(set(map(tuple, W.T.round(6)))) == 6
    assert all(len(s["train"]) == len(pairs) and len(s["val"]) == 0 for s in ens.splits)
    std = ens.epistemic_std(X[:5])
    assert std.shape == (5,) and (std > 0).all()


def test_learner_and_mode_rules():
    assert Learner("laplace").mode == "posterior" and Learner("laplace").name == "laplace"
    assert Learner("linear").mode == "independent"
    with pytest.raises(EmbrmError, match="head laplace .*mode = posterior"):
        Learner("laplace", "bootstrap")
    with pytest.raises(EmbrmError, match="mode posterior needs head = laplace"):
        Learner("linear", "posterior")
    with pytest.raises(EmbrmError, match="odin .*needs head = linear or mlp"):
        Learner("laplace", length_control="odin")
    X, pairs, _ = synthetic_pairs(100, 4, 200, 0)
    with pytest.raises(EmbrmError, match="use head='laplace' with mode='posterior'"):
        fit_ensemble(X, pairs, head="laplace", mode="independent")
    with pytest.raises(EmbrmError, match="init has 3 weights for 4-d"):
        LaplaceBT().fit(X, pairs, init=np.zeros(3))
