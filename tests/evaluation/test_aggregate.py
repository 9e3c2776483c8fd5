import numpy as np
import pytest
from scipy.special import logsumexp

from embrm.core._errors import EmbrmError
from embrm.evaluation._aggregate import AGGREGATIONS, _batcher_pairs, aggregate, aggregate_all, standardize


@pytest.fixture
def scores():
    return np.random.default_rng(0).standard_normal((3000, 7)).astype(np.float32) * 2 + 1


def test_formulas_match_reference(scores):
    x = scores.astype(np.float64)
    out = aggregate_all(scores, lam=0.7, beta=1.3, temperature=0.5, member=3)
    assert set(out) == set(AGGREGATIONS)
    ref = {
        "mean": x.mean(1), "min": x.min(1), "median": np.median(x, 1),
        "uwo": x.mean(1) - 0.7 * x.var(1, ddof=0), "lcb": x.mean(1) - 1.3 * x.std(1, ddof=0),
        "softmin": -0.5 * (logsumexp(-x / 0.5, axis=1) - np.log(x.shape[1])), "single": x[:, 3],
    }
    for m in AGGREGATIONS:
        assert out[m].shape == (3000,) and out[m].dtype == np.float32
        np.testing.assert_allclose(out[m], ref[m], atol=2e-5, err_msg=m)
        np.testing.assert_array_equal(aggregate(scores, m, lam=0.7, beta=1.3, temperature=0.5, member=3), out[m])


@pytest.mark.parametrize("k", range(1, 19))
def test_median_network_any_k(k):
    x = np.random.default_rng(k).standard_normal((257, k))
    x[:, 0] = x[:, -1]  # ties
    np.testing.assert_allclose(aggregate(x, "median"), np.median(x, 1), atol=1e-12)
    np.testing.assert_array_equal(aggregate(x, "min"), x.min(1))


def test_batcher_network_size():
    assert len(_batcher_pairs(16)) == 63  # Batcher's odd-even merge sort for 16 inputs


def test_uwo_lambda_zero_is_mean_not_one(scores):
    # the anchors' bug: `lam or 1` turned lambda = 0 into 1
    np.testing.assert_array_equal(aggregate(scores, "uwo", lam=0.0), aggregate(scores, "mean"))
    assert not np.allclose(aggregate(scores, "uwo", lam=0.0), aggregate(scores, "uwo", lam=1.0))
    np.testing.assert_allclose(aggregate(scores, "lcb", beta=0.0), aggregate(scores, "mean"), atol=0)


def test_uwo_uses_population_variance():
    x = np.array([[0.0, 2.0]])  # population var 1, sample var 2
    assert aggregate(x, "uwo", lam=1.0)[0] == pytest.approx(0.0)
    assert aggregate(x, "lcb", beta=1.0)[0] == pytest.approx(0.0)


def test_softmin_limits_and_stability():
    x = np.array([[1000.0, 1001.0, 1003.0], [-1000.0, 0.0, 1000.0]])
    assert np.all(np.isfinite(aggregate(x, "softmin", temperature=1.0)))
    np.testing.assert_allclose(aggregate(x, "softmin", temperature=1e-3), x.min(1), atol=0.01)
    np.testing.assert_allclose(aggregate(x[:1], "softmin", temperature=1e6), x[:1].mean(1), atol=1e-3)


def test_float64_stays_float64(scores):
    assert aggregate(scores.astype(np.float64), "mean").dtype == np.float64


def test_unknown_method_and_bad_params(scores):
    with pytest.raises(EmbrmError, match="unknown aggregation 'avg': use one of mean, min, median"):
        aggregate(scores, "avg")
    with pytest.raises(EmbrmError, match="temperature"):
        aggregate(scores, "softmin", temperature=0)
    with pytest.raises(EmbrmError, match="member = 7"):
        aggregate(scores, "single", member=7)
    with pytest.raises(EmbrmError, match="n_responses, K"):
        aggregate(scores[:, 0], "mean")


def test_standardize_reference_rows(scores):
    z = standardize(scores)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)
    train = np.zeros(len(scores), bool)
    train[:1000] = True
    z1 = standardize(scores, train)
    z2 = standardize(scores, scores[:1000])
    z3 = standardize(scores, np.arange(1000))
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(z1, z3)
    np.testing.assert_allclose(z1[:1000].mean(0), 0, atol=1e-5)
    assert z1.dtype == np.float32
    const = np.ones((10, 2), np.float32)
    np.testing.assert_array_equal(standardize(const), 0)
    with pytest.raises(EmbrmError, match="reference: has 3 members"):
        standardize(scores, scores[:, :3])
    # a shift of one member (BT rewards are shift-free) changes nothing after standardisation
    shifted = scores.copy()
    shifted[:, 2] += 50
    np.testing.assert_allclose(aggregate_all(standardize(shifted))["mean"],
                               aggregate_all(standardize(scores))["mean"], atol=1e-4)
