"""The fast paths of a continuous policy's loop give the numbers of the plain formulas: the reward of new samples
(standardisation folded into the members' weights) against ensemble.predict + aggregate_all, the transforms against
transform_rewards, and the Gaussian log-density's analytic gradient against autograd through the density."""

import numpy as np
import pytest
import torch

from embrm.core import EmbrmError, take_rows
from embrm.data import overopt_dataset
from embrm.evaluation import AGGREGATIONS, aggregate_all, rows_of
from embrm.pipeline import LabelConfig, Learner, Protocol, fit
from embrm.rl import GaussianPolicy, PromptReward, SampleReward, transform_rewards

LEARNERS = {"linear": Learner("linear"), "laplace": Learner("laplace"),
            "mlp": Learner("mlp", params={"hidden": [16, 8], "epochs": 3}),
            "mlp-features": Learner("mlp", mode="features", params={"hidden": [16, 8], "epochs": 3}),
            "lgbm": Learner("lgbm", params={"n_estimators": 5})}


@pytest.fixture(scope="module")
def data():
    ds, X = overopt_dataset(n_prompts=20, n_candidates=30, dim=6, seed=0)
    x = (2 * np.random.default_rng(1).standard_normal((3000, 6))).astype(np.float32)
    return ds, X, x


@pytest.fixture(scope="module", params=list(LEARNERS))
def fitted(request, data):
    ds, X, _ = data
    model = fit(ds, X, Protocol(LEARNERS[request.param], LabelConfig("simulated", 10.0, None, 200), k=3),
                progress=False)
    return model, rows_of(ds.responses, model.split.train) & ds.usable


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_sample_reward_is_the_aggregation_of_the_standardised_members(data, fitted, agg):
    ds, X, x = data
    model, reference = fitted
    params = model.protocol.aggregation_params()
    sr = SampleReward(model.ensemble, model.scores, reference, take_rows(X, np.flatnonzero(reference)), agg,
                      params=params)
    z = (model.ensemble.predict(x).astype(np.float64) - sr.mu) / sr.sd
    want = (aggregate_all(z, (agg,), **params)[agg] - sr.scale[0]) / sr.scale[1]
    got = sr(x)
    assert got.dtype == np.float64 and got.shape == (len(x),)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.array_equal(sr.float32(x), got.astype(np.float32))


def test_a_diverged_policy_is_refused_in_one_line(data, fitted):
    ds, X, x = data
    model, reference = fitted
    sr = SampleReward(model.ensemble, model.scores, reference, take_rows(X, np.flatnonzero(reference)), "mean")
    bad = x.copy()
    bad[7] = np.nan
    with pytest.raises(EmbrmError) as e:
        sr(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("transform", ["none", "sigmoid", "cdf"])
def test_prompt_reward_transforms_against_its_reference(data, transform):
    ds, X, _ = data
    model = fit(ds, X, Protocol(Learner("linear"), LabelConfig("simulated", 10.0, None, 200), k=3), progress=False)
    reference = rows_of(ds.responses, model.split.train) & ds.usable
    sr = SampleReward(model.ensemble, model.scores, reference, take_rows(X, np.flatnonzero(reference)), "mean")
    rng = np.random.default_rng(2)
    ref_x = rng.standard_normal((4, 50, 6)).astype(np.float32)
    x = (1.5 * rng.standard_normal((4, 9, 6))).astype(np.float32)
    proxy, reward = PromptReward(sr, transform, ref_x)(x, parts=True)
    ref = sr(ref_x.reshape(-1, 6)).reshape(4, 50)
    assert np.allclose(proxy, sr(x.reshape(-1, 6)).reshape(4, 9), atol=1e-6)
    want = transform_rewards(transform, proxy.astype(np.float64), ref, np.full(ref.shape, 1 / 50))
    assert np.allclose(reward, want, atol=1e-6)


def test_gaussian_log_density_gradient_is_autograds():
    rng = np.random.default_rng(0)
    policy = GaussianPolicy(rng.standard_normal((5, 4)).astype(np.float32), None, None)
    with torch.no_grad():
        policy.m += 0.3 * torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
        policy.log_s += 0.2 * torch.randn(5, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))

    def grads(logp):
        policy.m.grad = policy.log_s.grad = None
        (logp * weights).sum().backward()
        return policy.m.grad.clone(), policy.log_s.grad.clone()

    x, logp = policy.sample(7, torch.Generator().manual_seed(0))
    z = (x - policy.m[:, None, :]) * (-policy.log_s).exp()[:, None, None]
    plain = -0.5 * (z * z).sum(dim=2) - 4 * policy.log_s[:, None]
    assert torch.allclose(logp, plain, atol=1e-5) and torch.allclose(policy.log_prob(x), plain, atol=1e-5)
    want = grads(plain)
    for got in (grads(logp), grads(policy.log_prob(x))):
        assert all(torch.allclose(g, w, atol=1e-4) for g, w in zip(got, want))
