import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR
from scipy.stats import spearmanr

from embrm.core._errors import EmbrmError
from embrm.evaluation._metrics import (
    bt_log_loss,
    expected_calibration_error,
    length_reward,
    pairwise_accuracy,
    per_prompt_spearman,
    random_reward,
)


def test_pairwise_accuracy_and_ties():
    s = np.array([3.0, 1.0, 1.0, 0.0])
    pairs = np.array([[0, 1], [1, 2], [3, 0], [1, 3]])
    assert pairwise_accuracy(s, pairs) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert bt_log_loss(np.zeros(4), pairs) == pytest.approx(np.log(2))
    m = s[pairs[:, 0]] - s[pairs[:, 1]]
    assert bt_log_loss(s, pairs) == pytest.approx(np.mean(np.log1p(np.exp(-m))))
    assert np.isfinite(bt_log_loss(np.array([1e4, -1e4]), np.array([[1, 0]])))
    with pytest.raises(EmbrmError, match="1-D"):
        pairwise_accuracy(np.zeros((4, 2)), pairs)
    with pytest.raises(EmbrmError, match="outside"):
        pairwise_accuracy(s, np.array([[0, 9]]))


def test_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(0)
    n = 40_000
    r = rng.normal(0, 1.5, 2 * n)
    a, b = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)
    a_wins = rng.random(n) < 1 / (1 + np.exp(-(r[a] - r[b])))
    pairs = np.where(a_wins[:, None], np.stack([a, b], 1), np.stack([b, a], 1))
    assert expected_calibration_error(r, pairs) < 0.015
    assert expected_calibration_error(5 * r, pairs) > 0.1


def test_per_prompt_spearman_matches_scipy():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), rng.integers(1, 9, 40))
    n = len(groups)
    gold = np.round(rng.standard_normal(n), 1)  # ties
    scores = np.round(gold + rng.standard_normal(n), 1)
    gold[rng.random(n) < 0.1] = np.nan
    expected = []
    for g in np.unique(groups):
        m = (groups == g) & np.isfinite(gold)
        if m.sum() >= 3 and np.ptp(gold[m]) > 0 and np.ptp(scores[m]) > 0:
            expected.append(spearmanr(scores[m], gold[m]).statistic)
    got, per = per_prompt_spearman(scores, gold, groups.astype(str), return_per_prompt=True)
    assert got == pytest.approx(np.mean(expected), abs=1e-12)
    assert len(per) == len(expected)


def test_per_prompt_spearman_by_prompt_columns_and_mask():
    rng = np.random.default_rng(0)
    sizes = [2, 5, 7, 6]
    pid = np.repeat(np.arange(4), sizes)
    gold = rng.integers(0, 3, len(pid)).astype(float)  # ties
    proxy = gold + rng.standard_normal(len(pid))
    gold[-1] = np.nan  # unscored: dropped
    keys, rho = per_prompt_spearman(proxy, gold, pid, by_prompt=True)
    assert list(keys) == [0, 1, 2, 3] and np.isnan(rho[0])
    starts = np.cumsum([0] + sizes)
    for p in (1, 2, 3):
        sl = slice(starts[p], starts[p + 1] - (p == 3))
        assert rho[p] == pytest.approx(spearmanr(proxy[sl], gold[sl]).statistic)
    _, rho2 = per_prompt_spearman(np.stack([proxy, -proxy], 1), gold, pid, by_prompt=True)
    np.testing.assert_allclose(rho2[1:, 1], -rho[1:])
    _, rho3 = per_prompt_spearman({"a": proxy}, np.nan_to_num(gold), pid, mask=np.isfinite(gold), by_prompt=True)
    np.testing.assert_array_equal(rho3[:, 0], rho)
    assert per_prompt_spearman(proxy, gold, pid) == pytest.approx(np.nanmean(rho), abs=1e-15)


def test_baselines():
    df = pl.DataFrame({"response": ["a", "abcd", "", "ab"]})
    assert length_reward(df).tolist() == [1, 4, 0, 2]
    assert length_reward(["xyz"]).dtype == np.float32
    r = random_reward(10_000, seed=0)
    pairs = np.stack([np.arange(0, 10_000, 2), np.arange(1, 10_000, 2)], 1)
    assert abs(pairwise_accuracy(r, pairs) - 0.5) < 0.03
    assert np.array_equal(r, random_reward(10_000, seed=0))


@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "alpaca_eval_models" / "responses.parquet").exists(),
                    reason=f"real data not found at {DATA_DIR} (set EMBRM_DATA_DIR)")
def test_real_alpaca_eval_models_length_baseline():
    from embrm.data._dataset import load_pool
    from embrm.data._labels import pair_indices, simulate_pairs, split_prompts

    ds = load_pool(DATA_DIR / "alpaca_eval_models" / "responses.parquet", prompt_col="instruction",
                   response_col="output", gold_col="gold_winprob_vs_gpt4turbo", response_key="model")
    resp = ds.responses
    train, test = split_prompts(resp["prompt_id"], test_size=0.2, seed=0)
    assert len(train) == 320 and len(test) == 80
    pairs = simulate_pairs(resp, 20_000, seed=0, prompt_ids=train)  # noiseless: chosen has the higher gold
    assert set(pairs["prompt_id"]) <= set(train)
    idx = pair_indices(pairs, resp)
    length = length_reward(resp)
    acc = pairwise_accuracy(length, idx)
    assert 0.64 < acc < 0.76, acc  # length alone orders ~70 % of within-prompt pairs by gold
    rho = per_prompt_spearman(length, resp["gold"].to_numpy(), resp["prompt_id"].to_numpy())
    assert 0.5 < rho < 0.65, rho  # README: within-prompt Spearman(length, gold) ~0.57
    noisy = simulate_pairs(resp, 20_000, flip=0.25, seed=0, prompt_ids=train)
    assert abs((1 - noisy["label_correct"].mean()) - 0.25) < 0.015
