"""embrm.rewards.alpacaeval_controlled_gold: AlpacaEval 2's length-controlled GLM on a pool's gold, and the check
against AlpacaEval 2's published length-controlled win rates."""

from importlib import metadata

import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR, needs_data
from scipy.special import expit
from scipy.stats import spearmanr

from embrm.core import EmbrmError
from embrm.data._registry import load_dataset
from embrm.rewards import alpacaeval_controlled_gold, baseline_of, controlled_gold

# ----------------------------------------------------------------------------- synthetic: gold drawn from the GLM

THETA = {"a": -2.0, "b": -1.0, "c": 0.0, "d": 1.0}  # quality: d best
PHI = {"a": 3.0, "b": 0.5, "c": 1.5, "d": 0.0}      # length terms: "a" is the worst but buys the most with length
LONG = {"a": 2.5, "b": 1.0, "c": 1.0, "d": 0.6}     # mean answer length, in units of the baseline's


def _pool(n_prompts=300, seed=0, baseline_col=True):
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 1, n_prompts)
    base = rng.integers(200, 2000, n_prompts).astype(float)
    rows = []
    for m in THETA:
        length = np.maximum(base * LONG[m] * np.exp(rng.normal(0, 0.4, n_prompts)), 1).round()
        rows.append(pl.DataFrame({"prompt_id": np.arange(n_prompts), "model": m, "chars": length, "base": base}))
    df = pl.concat(rows)
    delta = (df["chars"] - df["base"]).to_numpy()
    src = df["model"].to_list()
    sd = df.with_columns(d=pl.Series(delta)).group_by("model").agg(pl.col("d").std())
    sd = dict(zip(sd["model"], sd["d"]))
    t = np.tanh(delta / np.array([sd[s] for s in src]))
    z = np.array([THETA[s] for s in src]) + np.array([PHI[s] for s in src]) * t + difficulty[df["prompt_id"]]
    gold = expit(z + rng.normal(0, 0.3, len(z)))  # soft labels, a little noise on the logit
    out = df.with_columns(response=pl.Series(["x" * int(c) for c in df["chars"]]), gold=pl.Series(gold),
                          prompt_id=pl.col("prompt_id").cast(pl.Utf8))
    if baseline_col:
        out = out.with_columns(reference=pl.Series(["y" * int(c) for c in df["base"]]))
    return out, t


def test_the_fit_recovers_the_sources_quality_and_removes_their_length_slopes():
    r, t = _pool()
    fit = alpacaeval_controlled_gold(r, source="model", baseline="reference")
    assert fit.baseline == "column reference" and fit.sources == ("a", "b", "c", "d")
    assert spearmanr(fit.theta, [THETA[m] for m in fit.sources])[0] == pytest.approx(1.0)
    assert spearmanr(fit.phi, [PHI[m] for m in fit.sources])[0] > 0.7
    # raw gold ranks "a" above "b" (it buys gold with length); the controlled gold ranks by quality
    means = r.with_columns(lc=pl.Series(fit.gold)).group_by("model").agg(pl.col("gold").mean(), pl.col("lc").mean())
    raw = dict(zip(means["model"], means["gold"]))
    lc = dict(zip(means["model"], means["lc"]))
    assert raw["a"] > raw["b"]
    assert lc["a"] < lc["b"] < lc["c"] < lc["d"]
    assert spearmanr(fit.lc_winrate, [THETA[m] for m in fit.sources])[0] == pytest.approx(1.0)
    # removing the length term removes each source's slope of gold on tanh(standardised length difference)
    for m in ("a", "c"):
        own = (r["model"] == m).to_numpy()
        before = np.polyfit(t[own], r["gold"].to_numpy()[own], 1)[0]
        after = np.polyfit(t[own], fit.gold[own], 1)[0]
        assert before > 0.05 and abs(after) < 0.25 * before


def test_answers_keep_their_own_differences_and_unscored_rows_are_nan():
    r, _ = _pool(n_prompts=60)
    r = r.with_columns(gold=pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("gold")))
    fit = alpacaeval_controlled_gold(r, source="model", baseline="reference")
    scored = r["gold"].is_not_null().to_numpy()
    assert np.isnan(fit.gold[~scored]).all() and np.isfinite(fit.gold[scored]).all()
    assert ((fit.gold[scored] >= 0) & (fit.gold[scored] <= 1)).all()
    # a source with little length term keeps its answers' own order; every prompt's answers still differ
    one = (r["model"] == "d").to_numpy() & scored
    assert spearmanr(fit.gold[one], r["gold"].to_numpy()[one])[0] > 0.9
    spread = r.with_columns(lc=pl.Series(fit.gold)).filter(pl.col("gold").is_not_null()).group_by("prompt_id").agg(
        pl.col("lc").std())
    assert (spread["lc"] > 0).all()
    assert fit.n_rows == int(scored.sum())


def test_one_policy_gets_one_length_term_and_the_median_baseline_says_so():
    r, _ = _pool(n_prompts=80, baseline_col=False)
    fit = alpacaeval_controlled_gold(r)
    assert fit.sources == ("all",) and len(fit.phi) == 1 and fit.source is None
    assert fit.baseline == "prompt median" and "prompt median" in fit.description


def test_a_baseline_source_is_not_fitted_and_keeps_its_gold():
    r, _ = _pool(n_prompts=60, baseline_col=False)
    base = r.filter(pl.col("model") == "a").with_columns(model=pl.lit("ref"), response=pl.col("response"),
                                                         gold=pl.lit(0.5))
    r = pl.concat([r, base])
    fit = alpacaeval_controlled_gold(r, source="model", baseline="ref")
    assert "ref" not in fit.sources and fit.baseline == "source ref"
    own = (r["model"] == "ref").to_numpy()
    assert np.allclose(fit.gold[own], 0.5)
    assert fit.phi[fit.sources.index("a")] == 0.0  # "a" answers exactly as long as the baseline: no length term


# ----------------------------------------------------------------------------- bad inputs

def _error(fn) -> str:
    with pytest.raises(EmbrmError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_are_one_line_errors():
    r, _ = _pool(n_prompts=20)
    none = r.with_columns(gold=pl.lit(None, pl.Float64))
    assert "no scored rows" in _error(lambda: alpacaeval_controlled_gold(none, source="model"))
    assert "no scored rows" in _error(lambda: alpacaeval_controlled_gold(r, np.zeros(len(r), bool)))
    flat = r.with_columns(response=pl.lit("same length"))
    assert "does not vary" in _error(lambda: alpacaeval_controlled_gold(flat, source="model"))
    assert "[0, 1]" in _error(lambda: alpacaeval_controlled_gold(r.with_columns(gold=pl.col("gold") * 3)))
    assert "not in the responses" in _error(lambda: alpacaeval_controlled_gold(r, source="author"))
    assert "neither a column nor a value" in _error(lambda: alpacaeval_controlled_gold(r, source="model",
                                                                                      baseline="gpt9"))
    assert "no source column" in _error(lambda: alpacaeval_controlled_gold(r, baseline="gpt9"))
    assert "boolean array" in _error(lambda: alpacaeval_controlled_gold(r, np.ones(3, bool)))
    assert "baseline_length" in _error(lambda: alpacaeval_controlled_gold(r, baseline_length=np.ones(2)))
    assert "lacks a 'gold'" in _error(lambda: alpacaeval_controlled_gold(r.drop("gold")))
    assert "lam_length" in _error(lambda: alpacaeval_controlled_gold(r, lam_length=0))
    only_base = r.filter(pl.col("model") == "a")
    assert "besides the baseline" in _error(lambda: alpacaeval_controlled_gold(only_base, source="model",
                                                                              baseline="a"))


# ----------------------------------------------------------------------------- THE CHECK: AlpacaEval 2's leaderboard

LEADERBOARD = "leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"


def _leaderboard() -> pl.DataFrame:
    """AlpacaEval 2's published leaderboard (weighted GPT-4-turbo annotator): a data file of the alpaca-eval package
    (`make install` puts it in, without its dependencies), found through the package's metadata: importing
    alpaca_eval would need those dependencies."""
    path = metadata.distribution("alpaca-eval").locate_file(f"alpaca_eval/{LEADERBOARD}")
    return pl.read_csv(path).rename({"": "model"})


@needs_data  # under a second: not marked slow
def test_the_alpacaeval_style_gold_ranks_the_models_like_alpacaeval_2s_length_controlled_win_rate():
    """Per-model means over ALL rows of alpaca-eval-models (the probes included: every model the leaderboard lists
    is compared; 57 of the pool's 58 models are on it, text_davinci_003 is not), fitted on all of them with the
    baseline's (gpt4_1106_preview's) own answers as the length reference."""
    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    r = ds.responses
    assert baseline_of(ds) == "gpt4_1106_preview"
    glm = alpacaeval_controlled_gold(r, source="model", baseline=baseline_of(ds))
    loglinear = controlled_gold(r, None, source="model")
    means = (r.with_columns(glm=pl.Series(glm.gold), loglinear=pl.Series(loglinear.gold))
             .group_by("model").agg(pl.col("gold", "glm", "loglinear").mean())
             .join(_leaderboard(), on="model", how="inner"))
    assert means.height == 57
    published = means["length_controlled_winrate"]
    rho = {g: float(spearmanr(means[g], published)[0]) for g in ("gold", "loglinear", "glm")}
    rho_wr = {g: float(spearmanr(means[g], means["win_rate"])[0]) for g in ("gold", "loglinear", "glm")}
    print(f"\nSpearman vs AlpacaEval 2's published LC win rate (57 models): raw {rho['gold']:.4f}, log-linear LC "
          f"{rho['loglinear']:.4f}, AlpacaEval-style LC {rho['glm']:.4f}")
    print(f"Spearman vs the published raw win rate: raw {rho_wr['gold']:.4f}, log-linear LC "
          f"{rho_wr['loglinear']:.4f}, AlpacaEval-style LC {rho_wr['glm']:.4f}")
    # measured 0.979 (the 400-prompt subset caps it: raw gold reaches only 0.989 to the published raw win rate). A
    # re-implementation of alpaca_eval's own procedure (per-model L1-CV fits, difficulty from a joint L1-CV fit on the
    # pool, no gamed-baseline rows: the pool has none) measured 0.976, so 0.98 is not required here (module doc)
    assert rho["glm"] >= 0.975
    assert rho["gold"] < rho["glm"] and rho["loglinear"] < rho["glm"]
