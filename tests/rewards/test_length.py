"""Length as a confounder: on synthetic data where the answer is planted, the length correction of reward scores
and the length-controlled gold recover it; on the real 58-model pool the judge's length effect is positive."""

import json
import math

import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR, needs_data

from embrm.core._errors import EmbrmError
from embrm.data._registry import load_dataset
from embrm.evaluation._metrics import length_reward, per_prompt_spearman
from embrm.rewards._length import LengthCorrection, controlled_gold, length_correlation, length_feature


def within_pearson(a, b, prompt_ids, rows):
    """Pearson correlation of a and b after demeaning both by prompt (over rows)."""
    df = pl.DataFrame({"p": prompt_ids[rows], "a": a[rows], "b": b[rows]})
    d = df.with_columns((pl.col(c) - pl.col(c).mean().over("p")) for c in ("a", "b"))
    return float(np.corrcoef(d["a"].to_numpy(), d["b"].to_numpy())[0, 1])


def score_data(n_prompts=2000, per=8, b=0.7, seed=0):
    """Scores = quality + b * length + a prompt offset that grows with the prompt's typical length (so a global
    slope is biased upwards); quality is independent of length within prompts."""
    rng = np.random.default_rng(seed)
    pid = np.repeat([f"p{i}" for i in range(n_prompts)], per)
    prompt_len = np.repeat(rng.normal(6.0, 1.0, n_prompts), per)
    length = prompt_len + rng.normal(0.0, 0.6, len(pid))
    quality = rng.normal(0.0, 0.5, len(pid))
    offset = 2.0 * prompt_len  # long prompts' answers score higher for reasons other than their length
    train = np.repeat(rng.random(n_prompts) < 0.5, per)
    return pid, length, quality, quality + b * length + offset, train


def test_prompt_scope_recovers_the_planted_slope_and_decorrelates_held_out_scores():
    b = 0.7
    pid, length, quality, scores, train = score_data(b=b)
    S = np.stack([scores, 2 * scores, np.full(len(pid), 3.0)], axis=1)  # a second column, and a constant one
    corr = LengthCorrection.fit(S, length, pid, train, scope="prompt")
    assert corr.scope == "prompt" and len(corr.slopes) == 3
    assert corr.slopes[0] == pytest.approx(b, rel=0.05) and corr.slopes[1] == pytest.approx(2 * b, rel=0.05)
    assert corr.slopes[2] == 0.0  # no variance: no slope
    out = corr.apply(S, length)
    assert out.dtype == np.float32 and out.shape == S.shape
    held = ~train
    before = length_correlation(scores, length, pid, mask=held)
    after = length_correlation(out[:, 0], length, pid, mask=held)
    assert before > 0.5 and abs(after) < 0.05
    # quality's order within prompts is kept
    assert per_prompt_spearman(out[:, 0], quality, pid, mask=held) > 0.95
    # on the fitted rows the corrected scores have zero within-prompt linear correlation with length
    assert abs(within_pearson(out[:, 0].astype(np.float64), length, pid, train)) < 1e-5


def test_global_scope_is_biased_by_prompt_offsets_that_follow_length():
    b = 0.7
    pid, length, _, scores, train = score_data(b=b)
    glob = LengthCorrection.fit(scores, length, pid, train, scope="global")
    prom = LengthCorrection.fit(scores, length, pid, train, scope="prompt")
    assert glob.slopes[0] > 1.5 * b  # the prompt offsets load onto the global slope
    assert prom.slopes[0] == pytest.approx(b, rel=0.05)
    held = ~train
    assert length_correlation(glob.apply(scores, length), length, pid, mask=held) < -0.3  # over-corrected


def test_global_scope_matches_ols_with_an_intercept():
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    y = 1.5 + 0.4 * x + rng.normal(size=200)
    fit = LengthCorrection.fit(y, x, np.zeros(200).astype(str), np.ones(200, bool), scope="global")
    assert fit.slopes[0] == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-10)


def test_slopes_come_from_the_fitted_rows_only():
    pid, length, _, scores, train = score_data()
    a = LengthCorrection.fit(scores, length, pid, train)
    other = scores.copy()
    other[~train] = np.random.default_rng(9).normal(size=int((~train).sum())) * 100
    length2 = length.copy()
    length2[~train] = 0.0
    b = LengthCorrection.fit(other, length2, pid, train)
    assert a == b


def test_no_length_variance_gives_zero_slopes():
    pid = np.repeat(["a", "b"], 3)
    length = np.repeat([1.0, 2.0], 3)  # constant within each prompt
    fit = LengthCorrection.fit(np.arange(6.0), length, pid, np.ones(6, bool), scope="prompt")
    assert fit.slopes == (0.0,)


def test_correction_round_trips_through_json():
    pid, length, _, scores, train = score_data(n_prompts=50)
    corr = LengthCorrection.fit(np.stack([scores, -scores], 1), length, pid, train)
    back = LengthCorrection.from_dict(json.loads(json.dumps(corr.to_dict())))
    assert back == corr


@pytest.mark.parametrize("damaged", [
    None, [], {"scope": "prompt"}, {"scope": "nope", "slopes": [1.0]}, {"scope": "prompt", "slopes": []},
    {"scope": "prompt", "slopes": ["1"]}, {"scope": "prompt", "slopes": [float("nan")]},
    {"scope": "prompt", "slopes": [True]}, {"scope": "global", "slopes": [1.0], "extra": 1},
])
def test_from_dict_refuses_damage(damaged):
    with pytest.raises(EmbrmError) as e:
        LengthCorrection.from_dict(damaged)
    assert "\n" not in str(e.value)


def test_bad_correction_inputs_raise_one_line_errors():
    pid, length, _, scores, train = score_data(n_prompts=20)
    cases = [
        lambda: LengthCorrection.fit(scores, length, pid, train, scope="both"),
        lambda: LengthCorrection.fit(scores, length, pid, np.zeros(len(pid), bool)),
        lambda: LengthCorrection.fit(scores, length, pid, train.astype(int)),
        lambda: LengthCorrection.fit(scores, length[:-1], pid, train),
        lambda: LengthCorrection.fit(scores, length, pid[:-1], train),
        lambda: LengthCorrection.fit(np.where(train, np.nan, scores), length, pid, train),
        lambda: LengthCorrection("prompt", (1.0, 2.0)).apply(scores, length),
        lambda: LengthCorrection("prompt", (1.0,)).apply(scores, length[:-1]),
    ]
    for case in cases:
        with pytest.raises(EmbrmError) as e:
            case()
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- length-controlled gold

def gold_table(n_prompts=3000, n_models=8, gamma=0.3, seed=0):
    """Each prompt answered by every model; some models write longer and better: model quality grows with the
    model's typical length, so a fit without model effects charges quality to length."""
    rng = np.random.default_rng(seed)
    model_len = np.linspace(4.5, 7.0, n_models)  # log-characters
    model_q = 0.8 * (model_len - model_len.mean())  # the long writers are better
    p = np.repeat(np.arange(n_prompts), n_models)
    m = np.tile(np.arange(n_models), n_prompts)
    x = model_len[m] + rng.normal(0, 0.5, n_prompts)[p] + rng.normal(0, 0.4, len(p))
    chars = np.maximum(np.rint(np.expm1(x)), 1).astype(int)
    text = ["a" * c for c in chars]
    feat = np.log1p(chars.astype(np.float64))
    gold = rng.normal(0, 1, n_prompts)[p] + model_q[m] + gamma * feat + rng.normal(0, 0.2, len(p))
    gold[rng.random(len(p)) < 0.05] = np.nan  # some unscored answers
    df = pl.DataFrame({"prompt_id": [f"q{i}" for i in p], "response_id": [f"q{i}:{j}" for i, j in zip(p, m)],
                       "prompt": [f"question {i}" for i in p], "response": text,
                       "gold": pl.Series(gold).fill_nan(None), "model": [f"m{j}" for j in m]})
    df = df.with_columns(scored=pl.col("gold").is_not_null(), excluded=pl.lit(False))
    return df, model_q[m]


def test_length_feature_is_log1p_characters():
    df = pl.DataFrame({"response": ["", "abc", "é" * 10]})
    assert np.allclose(length_feature(df), np.log1p([0, 3, 10])) and length_feature(df).dtype == np.float64


def test_controlled_gold_with_source_recovers_the_planted_effect():
    gamma = 0.3
    df, model_effect = gold_table(gamma=gamma)
    scored = df["scored"].to_numpy()
    with_src = controlled_gold(df, scored, source="model")
    without = controlled_gold(df, scored)
    assert with_src.effect == pytest.approx(gamma, rel=0.03)
    assert without.effect > 1.5 * gamma  # the long models' quality is charged to length
    assert 0 < with_src.stderr < 0.02 and with_src.source == "model" and without.source is None
    assert with_src.n_rows == int(scored.sum()) and with_src.n_prompts == 3000
    assert 0 < with_src.r2_within <= 1
    g = with_src.gold
    assert g.dtype == np.float64 and np.isnan(g[~scored]).all() and np.isfinite(g[scored]).all()
    # with the source effect removed too, what is left does not follow length within prompts
    feat, pid = length_feature(df), df["prompt_id"].to_numpy()
    raw = df["gold"].to_numpy()
    assert length_correlation(raw - model_effect, feat, pid) > 0.3
    assert abs(length_correlation(g - model_effect, feat, pid)) < 0.05
    # only the length term is removed, centred on the fitted rows' mean length
    fitted_mean = feat[scored].mean()
    assert np.allclose(g[scored], raw[scored] - with_src.effect * (feat[scored] - fitted_mean))
    d = with_src.to_dict()
    assert "gold" not in d and json.loads(json.dumps(d))["effect"] == pytest.approx(with_src.effect)


def test_controlled_gold_matches_dense_least_squares_and_is_deterministic():
    df, _ = gold_table(n_prompts=40, n_models=5, seed=4)
    # an unbalanced panel: drop a third of the rows
    df = df.filter(pl.Series(np.random.default_rng(1).random(len(df)) > 0.33))
    fit = controlled_gold(df, source="model")
    keep = df["scored"].to_numpy()
    sub = df.filter(pl.Series(keep))
    D = np.concatenate([sub.to_dummies("prompt_id").select(pl.selectors.starts_with("prompt_id_")).to_numpy(),
                        sub.to_dummies("model").select(pl.selectors.starts_with("model_")).to_numpy()[:, 1:],
                        length_feature(sub)[:, None]], axis=1).astype(np.float64)
    beta = np.linalg.lstsq(D, sub["gold"].to_numpy(), rcond=None)[0]
    assert fit.effect == pytest.approx(beta[-1], rel=1e-8)
    again = controlled_gold(df, source="model")
    assert again.effect == fit.effect and np.array_equal(again.gold, fit.gold, equal_nan=True)


def test_controlled_gold_fits_only_the_given_rows():
    df, _ = gold_table(n_prompts=100, n_models=5, seed=2)
    rows = df["scored"].to_numpy() & (np.arange(len(df)) % 2 == 0)
    a = controlled_gold(df, rows, source="model")
    changed = df.with_columns(gold=pl.when(pl.Series(rows)).then(pl.col("gold")).otherwise(pl.col("gold") * 7))
    b = controlled_gold(changed, rows, source="model")
    assert a.effect == b.effect and a.n_rows == int(rows.sum())


def test_controlled_gold_refuses_what_it_cannot_fit():
    df, _ = gold_table(n_prompts=10, n_models=3)
    one = np.zeros(len(df), bool)
    one[0] = True
    same_len = df.with_columns(response=pl.lit("same length"))
    model_len = df.with_columns(response=pl.Series(["x" * (1 + int(m[1:])) for m in df["model"]]))  # = the model
    cases = [
        lambda: controlled_gold(df, one),
        lambda: controlled_gold(df.with_columns(gold=pl.lit(None, dtype=pl.Float64))),
        lambda: controlled_gold(same_len),
        lambda: controlled_gold(model_len, source="model"),
        lambda: controlled_gold(df, source="no_such_column"),
        lambda: controlled_gold(df, np.ones(len(df))),
        lambda: controlled_gold(df.drop("gold")),
    ]
    for case in cases:
        with pytest.raises(EmbrmError) as e:
            case()
        assert "\n" not in str(e.value)
    assert controlled_gold(model_len).effect is not None  # without the source, length is identified


def test_length_correlation_is_per_prompt_spearman_of_length():
    pid, length, quality, scores, _ = score_data(n_prompts=60)
    mask = np.arange(len(pid)) % 3 != 0
    assert length_correlation(scores, length, pid) == per_prompt_spearman(scores, length, pid)
    both = np.stack([scores, quality], 1)
    assert np.array_equal(length_correlation(both, length, pid, mask=mask),
                          per_prompt_spearman(both, length, pid, mask=mask))
    as_dict = length_correlation({"s": scores, "q": quality}, length, pid)
    assert set(as_dict) == {"s", "q"} and as_dict["q"] == per_prompt_spearman(quality, length, pid)
    assert all(isinstance(v, float) for v in as_dict.values())


# ----------------------------------------------------------------------------- the real pool

@pytest.mark.slow
@needs_data
def test_the_real_judge_likes_length_once_models_are_held_fixed():
    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    fit = controlled_gold(ds.responses, ds.usable, source="model")
    assert math.isfinite(fit.effect) and fit.effect > 0 and math.isfinite(fit.stderr)
    assert fit.n_rows == int(ds.usable.sum())
    assert np.isnan(fit.gold[~ds.responses["scored"].to_numpy()]).all()
    assert len(length_reward(ds.responses)) == len(fit.gold)
