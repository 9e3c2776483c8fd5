import json

import numpy as np
import pytest

from embrm.core._errors import EmbrmError
from embrm.evaluation._conformal import ConformalResult, conformal_lower_bound

P_REF, P_EVAL, R, K = 100, 400, 20, 5


def pools(seed, *, k=K, misspecified=False, p_ref=P_REF, p_eval=P_EVAL):
    """Exchangeable pools: member scores with mean mu and spread sigma per response, gold = mu + sigma * eps plus a
    prompt effect (misspecified: the members' spread is unrelated to the noise). First p_ref prompts: reference."""
    rng = np.random.default_rng(seed)
    prompt = np.repeat(np.arange(p_ref + p_eval), R)
    n = len(prompt)
    mu, sigma = rng.normal(size=n), rng.uniform(0.2, 1.5, n)
    dev = rng.normal(size=(n, k))
    if k > 1:
        dev = (dev - dev.mean(1, keepdims=True)) / dev.std(1, keepdims=True)
    spread = rng.uniform(0.2, 1.5, n) if misspecified else sigma
    scores = mu[:, None] + spread[:, None] * dev * (k > 1)
    gold = mu + sigma * rng.normal(size=n) + rng.normal(size=p_ref + p_eval)[prompt]
    reference = prompt < p_ref
    return scores, gold, prompt.astype(str), ~reference, reference


def fresh_coverage(res: ConformalResult, seed: int, misspecified=False) -> np.ndarray:
    """Coverage of each fold's quantile on new pools from the same law, scaled with the result's scales."""
    scores, gold, prompt, _, _ = pools(seed, misspecified=misspecified, p_ref=0)
    code = np.unique(prompt, return_inverse=True)[1]

    def centred(v):
        return v - (np.bincount(code, v) / np.bincount(code))[code]

    mu, y = centred(scores.mean(1)) / res.mu_scale, centred(gold) / res.gold_scale
    sigma = np.maximum(scores.std(1), res.sigma_floor)
    return np.array([np.mean(y >= mu - q * sigma) for q in res.quantiles])


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_coverage_on_held_out_and_fresh_pools(coverage):
    scores, gold, prompt, evaluated, reference = pools(0)
    res = conformal_lower_bound(scores, gold, prompt, evaluated, reference, coverage=coverage, seed=1)
    assert abs(res.empirical_coverage - coverage) < 0.02, res.empirical_coverage
    assert np.all(np.abs(fresh_coverage(res, seed=100) - coverage) < 0.02), fresh_coverage(res, seed=100)
    assert np.isfinite(res.bound[evaluated]).all() and np.isnan(res.bound[reference]).all()
    assert res.folds == 2 and sum(res.n_calibration) == evaluated.sum() and res.coverage == coverage
    d = res.to_dict()
    assert "bound" not in d and json.loads(json.dumps(d))["quantiles"] == res.quantiles


def test_misspecified_spread_still_covers():
    scores, gold, prompt, evaluated, reference = pools(1, misspecified=True)
    for coverage in (0.8, 0.9):
        res = conformal_lower_bound(scores, gold, prompt, evaluated, reference, coverage=coverage, folds=3)
        assert res.empirical_coverage >= coverage - 0.02, res.empirical_coverage
        assert np.all(fresh_coverage(res, seed=7, misspecified=True) >= coverage - 0.02)


def test_single_member_ranks_like_the_mean():
    scores, gold, prompt, evaluated, reference = pools(2, k=1)
    res = conformal_lower_bound(scores, gold, prompt, evaluated, reference)
    assert res.sigma_floor == 1.0
    b = res.bound[evaluated].reshape(P_EVAL, R)
    s = scores[evaluated, 0].reshape(P_EVAL, R)
    np.testing.assert_array_equal(np.argsort(b, axis=1), np.argsort(s, axis=1))


def test_a_prompt_never_calibrates_itself():
    scores, gold, prompt, evaluated, reference = pools(3, p_eval=60)
    res = conformal_lower_bound(scores, gold, prompt, evaluated, reference, folds=3)
    rng = np.random.default_rng(0)
    for p in ("150", "101", "120"):
        rows = prompt == p
        gold2 = gold.copy()
        gold2[rows] = 10 * rng.normal(size=R)
        res2 = conformal_lower_bound(scores, gold2, prompt, evaluated, reference, folds=3)
        np.testing.assert_array_equal(res2.bound[rows], res.bound[rows])
        assert not np.array_equal(res2.bound, res.bound)  # the other folds' quantiles did move


def test_unscored_rows_and_no_reference():
    scores, gold, prompt, evaluated, reference = pools(4, p_eval=50)
    gold[::7] = np.nan  # unscored: bounded, never calibrating
    res = conformal_lower_bound(scores, gold, prompt, evaluated, reference)
    assert np.isfinite(res.bound[evaluated]).all()
    assert sum(res.n_calibration) == (evaluated & np.isfinite(gold)).sum()
    alone = conformal_lower_bound(scores, gold, prompt, evaluated, np.zeros_like(evaluated))  # scales: evaluated
    assert np.isfinite(alone.bound[evaluated]).all() and alone.gold_scale != res.gold_scale


def _bad(**changes):
    scores, gold, prompt, evaluated, reference = pools(5, p_ref=5, p_eval=6)
    args = dict(scores=scores, gold=gold, prompt_ids=prompt, evaluated=evaluated, reference=reference)
    kw = {k: changes.pop(k) for k in ("coverage", "folds") if k in changes}
    args.update(changes)
    return lambda: conformal_lower_bound(*args.values(), **kw)


@pytest.mark.parametrize("call, match", [
    (_bad(coverage=0.0), r"coverage must be in \(0, 1\)"),
    (_bad(coverage=1.0), r"coverage must be in \(0, 1\)"),
    (_bad(folds=1), "folds must be an integer >= 2"),
    (_bad(folds=2.5), "folds must be an integer >= 2"),
    (_bad(folds=7), "needs at least 7 evaluated prompts with gold; got 6"),
    (_bad(coverage=0.99), "needs at least 99 calibration responses per fold, got"),
    (_bad(scores=np.zeros(220)), r"\(n_responses, K\)"),
    (_bad(gold=np.zeros(5)), "gold must hold one value per response"),
    (_bad(prompt_ids=np.zeros(5)), "prompt_ids must hold one value per response"),
    (_bad(evaluated=np.ones(220)), "evaluated: expected a boolean array"),
    (_bad(reference=np.ones(3, bool)), "reference: expected a boolean array"),
    (_bad(scores=np.full((220, 3), np.nan)), "NaN/inf"),
    (_bad(gold=np.where(np.arange(220) < 100, 1.0, np.arange(220.0))), "gold does not vary within prompts"),
])
def test_errors_are_one_line(call, match):
    with pytest.raises(EmbrmError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_rows_put_back_get_their_prompts_bound_without_moving_anyone_elses():
    """Excluded responses put back in a pool (`also`) are bounded with their prompt's fold; they neither centre nor
    calibrate, so every other row's bound is unchanged."""
    rng = np.random.default_rng(5)
    n_prompts, size = 60, 8
    prompts = np.repeat(np.arange(n_prompts), size)
    scores = rng.standard_normal((len(prompts), 4))
    gold = scores.mean(1) + rng.standard_normal(len(prompts))
    train = prompts < 30
    extra = ~train & (np.arange(len(prompts)) % size == 0)
    evaluated = ~train & ~extra
    plain = conformal_lower_bound(scores, gold, prompts, evaluated, train, seed=1)
    both = conformal_lower_bound(scores, gold, prompts, evaluated, train, seed=1, also=extra)
    assert np.array_equal(plain.bound[evaluated], both.bound[evaluated])
    assert np.isnan(plain.bound[extra]).all() and np.isfinite(both.bound[extra]).all()
    assert both.quantiles == plain.quantiles


def test_too_few_held_out_prompts_leave_the_bound_out_and_say_why():
    """An experiment whose held-out prompts cannot calibrate the bound keeps every other proxy and records why."""
    import embrm
    from embrm.pipeline._steps import run_experiment

    ds, X = embrm.overopt_dataset(12, 6, dim=8, seed=0)  # 20 % of 12 prompts: 2 held out, 12 responses
    result = run_experiment(ds, X, embrm.Protocol(embrm.Learner("linear"), coverage=0.95, k=2), progress=False)
    assert result.evaluation.conformal is None and "calibration responses" in result.evaluation.conformal_error
    assert "conformal" not in result.evaluation.bon["pool"].proxies and "min" in result.evaluation.bon["pool"].proxies
