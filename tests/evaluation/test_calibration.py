import json
import math

import numpy as np
import pytest

from embrm.core._errors import EmbrmError
from embrm.evaluation._calibration import (
    Reliability,
    cross_fitted_temperature,
    fit_temperature,
    plot_reliability,
    pooled_reliability,
    reliability,
)
from embrm.evaluation._heldout import FitMetrics, PromptAccuracy
from embrm.evaluation._metrics import expected_calibration_error

PNG = b"\x89PNG\r\n\x1a\n"


def sig(x):
    return 1 / (1 + math.exp(-x))


def old_ece(scores, pairs, n_bins=10):
    """embrm.evaluation._metrics.expected_calibration_error before it called reliability (kept to check bit-equality)."""
    m = scores[pairs[:, 0]] - scores[pairs[:, 1]]
    conf = 1.0 / (1.0 + np.exp(-np.abs(m)))
    correct = (m > 0) + 0.5 * (m == 0)
    b = np.minimum(((conf - 0.5) * 2 * n_bins).astype(np.int64), n_bins - 1)
    acc = np.bincount(b, correct, n_bins)
    cf = np.bincount(b, conf, n_bins)
    return float(np.abs(acc - cf).sum() / len(m))


def synthetic_margins(n, t_true, seed):
    """Margins m = z * T_true whose label holds with probability sigmoid(z) (sign flipped when it does not)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    holds = rng.random(n) < 1 / (1 + np.exp(-z))
    return np.where(holds, z, -z) * t_true


def test_reliability_hand_computed():
    r = reliability([2.0, -1.0, 0.0, 0.5], n_bins=2)
    # bin [0.5, 0.75): -1 (wrong), 0 (tie: 0.5 / 0.5), 0.5 (right); bin [0.75, 1]: 2 (right)
    gap0 = abs(1.5 - (sig(1) + 0.5 + sig(0.5)))
    gap1 = abs(1 - sig(2))
    assert r.n_pairs == 4 and r.bin_count == [3, 1] and r.temperature == 1.0
    assert r.ece == pytest.approx((gap0 + gap1) / 4, abs=1e-15)
    assert r.mce == pytest.approx(max(gap0 / 3, gap1), abs=1e-15)
    assert r.brier == pytest.approx(np.mean([(1 - sig(m)) ** 2 for m in (2, -1, 0, 0.5)]), abs=1e-15)
    assert r.log_loss == pytest.approx(np.mean([-math.log(sig(m)) for m in (2, -1, 0, 0.5)]), abs=1e-15)
    assert r.bin_accuracy == pytest.approx([0.5, 1.0])
    assert r.bin_confidence == pytest.approx([(sig(1) + 0.5 + sig(0.5)) / 3, sig(2)])


def test_reliability_temperature_empty_bins_and_json():
    r = reliability([4.0, -4.0], n_bins=10, temperature=2.0)
    assert r.bin_count == [0] * 7 + [2, 0, 0] and r.temperature == 2.0  # confidence sigmoid(4 / 2) = 0.881: bin 7
    assert r.bin_confidence[:7] == [None] * 7 and r.bin_accuracy[7] == 0.5 and r.bin_confidence[9] is None
    assert r.mce == pytest.approx(abs(0.5 - sig(2)))  # the empty bins count for nothing
    assert r.brier == pytest.approx(((1 - sig(2)) ** 2 + (1 - sig(-2)) ** 2) / 2)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["bin_count"] == r.bin_count and "nan" not in json.dumps(d).lower()


def test_metrics_ece_is_reliability_bit_for_bit():
    rng = np.random.default_rng(3)
    for n_bins in (1, 7, 10):
        scores = rng.normal(0, 2, 500)
        scores[:50] = np.round(scores[:50])  # ties
        pairs = rng.integers(0, 500, (3000, 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        got = expected_calibration_error(scores, pairs, n_bins)
        assert got == old_ece(scores, pairs, n_bins)
        assert got == reliability(scores[pairs[:, 0]] - scores[pairs[:, 1]], n_bins).ece


@pytest.mark.parametrize("t_true", [0.5, 3.0])
def test_fit_temperature_recovers_t(t_true):
    m = synthetic_margins(20_000, t_true, seed=int(10 * t_true))
    t = fit_temperature(m)
    assert abs(t / t_true - 1) < 0.05, t
    assert reliability(m, temperature=t).log_loss <= reliability(m).log_loss + 1e-12
    assert fit_temperature(np.zeros(5)) == 1.0


def test_cross_fitted_temperature_leaves_a_fold_out():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(60)], 50)
    m = synthetic_margins(len(groups), 2.0, seed=1)
    cal, temps = cross_fitted_temperature(m, groups, folds=2, seed=0)
    assert len(temps) == 2 and all(abs(t / 2 - 1) < 0.1 for t in temps)
    t_of_pair = m / cal
    fold0 = np.isclose(t_of_pair, temps[0], rtol=0, atol=1e-12)
    assert fold0.sum() == 1500 and np.allclose(t_of_pair[~fold0], temps[1])
    assert all(len(set(np.asarray(fold0)[groups == g])) == 1 for g in np.unique(groups))  # whole prompts
    m2 = m.copy()  # change fold 0's labels: its own calibrated margins keep their T, fold 1's T moves
    flip = fold0 & (rng.random(len(m)) < 0.5)
    m2[flip] = -m2[flip] * 3
    cal2, temps2 = cross_fitted_temperature(m2, groups, folds=2, seed=0)
    assert temps2[0] == temps[0] and temps2[1] != temps[1]
    np.testing.assert_array_equal(cal2[fold0], m2[fold0] / temps[0])
    _, temps3 = cross_fitted_temperature(m[:100], groups[:100], folds=5)  # 2 prompts: at most 2 folds
    assert len(temps3) == 2


def test_plot_reliability_png(tmp_path):
    m = synthetic_margins(5000, 3.0, seed=2)
    curves = {"raw": reliability(m), "scaled": reliability(m, temperature=fit_temperature(m))}
    p = plot_reliability(curves, tmp_path / "sub" / "rel.png", title="test")
    data = p.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000


@pytest.mark.parametrize("call, match", [
    (lambda: fit_temperature([]), "at least one pair"),
    (lambda: fit_temperature([1.0, np.nan]), "non-finite"),
    (lambda: fit_temperature([np.inf]), "non-finite"),
    (lambda: reliability([1.0, np.nan]), "NaN"),
    (lambda: reliability(np.zeros((2, 2))), "1-D"),
    (lambda: reliability([1.0], n_bins=0), "n_bins"),
    (lambda: reliability([1.0], temperature=0), "temperature"),
    (lambda: cross_fitted_temperature([1.0, 2.0], ["a", "a"]), "at least 2 prompts"),
    (lambda: cross_fitted_temperature([1.0, 2.0], ["a"]), "one prompt id per pair"),
    (lambda: cross_fitted_temperature([1.0, 2.0], ["a", "b"], folds=1), "folds"),
    (lambda: plot_reliability({}, "x.png"), "Reliability"),
])
def test_errors_are_one_line(call, match):
    with pytest.raises(EmbrmError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_fit_metrics_keep_their_reliability_and_per_prompt_records_typed_through_json():
    r = reliability([2.0, -1.0, 0.5])
    m = FitMetrics("gold order", 3, 1, 2 / 3, [2 / 3], 0.5, r.ece, 0.5, reliability=r,
                   per_prompt=PromptAccuracy(["p"], [3], [2.0]))
    back = FitMetrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert isinstance(back.reliability, Reliability) and isinstance(back.per_prompt, PromptAccuracy)
    assert back == m and back.reliability.bin_count == r.bin_count


def test_pooled_reliability_equals_one_run_over_all_pairs():
    rng = np.random.default_rng(4)
    margins = rng.normal(0.5, 2.0, 3000)
    whole = reliability(margins)
    pooled = pooled_reliability([reliability(part).to_dict() for part in np.array_split(margins, 3)])
    assert pooled.bin_count == whole.bin_count
    for key in ("ece", "mce", "brier", "log_loss"):
        assert np.isclose(getattr(pooled, key), getattr(whole, key), rtol=1e-10, atol=1e-12)
    assert np.allclose(np.array(pooled.bin_accuracy, float), np.array(whole.bin_accuracy, float), equal_nan=True)
