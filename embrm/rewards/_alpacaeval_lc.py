"""AlpacaEval 2's length-controlled gold: the GLM of Dubois et al. 2024 ("Length-Controlled AlpacaEval: A Simple Way
to Debias Automatic Evaluators", arXiv 2404.04475), fitted on a pool's gold and with its length term set to 0.

The gold of a pool like AlpacaEval's is a judge's probability that an answer beats a baseline's answer to the same
prompt. AlpacaEval 2 models it, per answering model m and prompt i, as

    logit P(answer of m beats the baseline on i) = theta_m + phi_m * tanh(delta_mi / sd_m) + difficulty_i

delta_mi = characters of the answer - characters of the baseline's answer, sd_m its standard deviation over m's
answers (not centred: delta = 0 stays 0), theta_m the source's quality, phi_m its own length term and difficulty_i
the prompt's difficulty (alpaca_eval: a fixed difficulty times a per-model coefficient). Its length-controlled win
rate of m is the model's prediction with the length term at 0 (equal lengths), averaged over prompts:
mean_i sigmoid(theta_m + difficulty_i).

How this fit differs from alpaca_eval's own (alpaca_eval/metrics/glm_winrate.py, read, not imported):
  - alpaca_eval (public repo tatsu-lab/alpaca_eval; GLM length_controlled_v1) fits each model alone on the formula
    "np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline.astype(float) - 1": no free
    intercept, the not_gamed_baseline column is the model's theta, and all three coefficients (theta, the length
    term, a per-model coefficient on the instruction difficulty) carry an L1 penalty (liblinear, fit_intercept=False)
    whose C 5-fold GroupKFold CV picks from LogisticRegressionCV's default grid logspace(-4, 4, 10), scored by the
    soft-label log loss. std_delta_len is (baseline chars - model chars) / its std over that model's own rows. The
    instruction difficulty is not fitted per model: it is a fixed, precomputed per-instruction value (df_gamed.csv on
    the tatsu-lab/alpaca_eval HF dataset), made once by a joint L1-CV fit over the leaderboard's models with
    per-model intercepts and length terms and one dummy per instruction (notebooks/instruction_difficulty.ipynb).
    "Regularize to baseline" (lambda 0.2) adds the annotations of the gamed baselines gpt4_1106_preview_verbose /
    _concise at weight 0.1 each, with not_gamed_baseline = 0: they share the model's length and difficulty
    coefficients with an intercept of 0. The LC win rate is the mean predicted probability at std_delta_len = 0.
    Here all sources are fitted together, vectorised (one L-BFGS over every parameter): the difficulty is a
    per-prompt intercept fitted with them (L2, `lam_difficulty`, coefficient 1 for every source), and each source's
    phi_m is a shared phi plus an L2-penalised deviation (`lam_length`): a source's length term is pulled towards
    the pool's, a stand-in for alpaca_eval's pull towards the gamed baseline's (embrm's pools hold no gamed-baseline
    answers). Gold is a soft label in [0, 1]: the loss is the cross-entropy against it (alpaca_eval duplicates each
    row with weights y and 1 - y: the same loss).
  - Measured on alpaca-eval-models (57 leaderboard models, Spearman to the published LC win rate): this fit 0.979; a
    re-implementation of alpaca_eval's own procedure on the same pool (difficulty from its joint L1-CV fit on the
    pool, per-model L1-CV fits, no gamed-baseline rows) 0.976 (0.920 to the published raw win rate); raw gold 0.960.
  - The baseline's answer length per prompt comes from, in order: a column of the baseline's texts (`baseline`
    names a column, e.g. alpaca-eval-bon16's reference_output_gpt35), the answers of the source `baseline` names
    (alpaca-eval-models' gpt4_1106_preview; its own rows are not fitted: their gold is the judge's 0.5 against
    itself, and their length term is 0 by construction), else the prompt's median answer length. The result's
    `baseline` says which. Measured on alpaca-eval-models, the baseline's own answers and the median rank the 57
    leaderboard models alike (Spearman to the published LC win rate 0.979 vs 0.980); the first is AlpacaEval's.

Per answer, the controlled gold is the answer's own gold with its fitted length effect removed on the probability
scale, clip(gold - (p_hat - p_hat_lc), 0, 1) with p_hat the GLM's prediction and p_hat_lc the same with the length
term at 0: a Best-of-n over one prompt's answers still sees the answers' own differences, and since the fit leaves
every source's mean residual at 0 (its unpenalised theta), a source's mean controlled gold is its GLM
length-controlled win rate up to the clipping. (Removing the length term on the logit scale instead barely moves
the judge's near-0 / near-1 probabilities: on alpaca-eval-models the per-model means then rank like raw gold.)

    alpacaeval_controlled_gold(responses, rows=None, source="model", baseline="gpt4_1106_preview")
    baseline_of(ds)     the registered pools' baseline (a column of texts, or a source), when present in the pool
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from embrm.core import EmbrmError

__all__ = ["KNOWN_BASELINES", "AlpacaEvalGold", "alpacaeval_controlled_gold", "baseline_of"]

# What the registered pools' gold was judged against: a column of the baseline's texts, or the baseline source's name
# (a fact of the data; embrm.data's registry has no field for it yet).
KNOWN_BASELINES = {"alpaca-eval-bon16": "reference_output_gpt35", "alpaca-eval-models": "gpt4_1106_preview"}
LAM_LENGTH = 1.0  # L2 on each source's deviation from the shared length term (logit units: a unit-normal prior)
LAM_DIFFICULTY = 1.0  # L2 on the per-prompt difficulty
MAX_ITER = 5000


def baseline_of(ds) -> str | None:
    """The baseline a registered pool's gold was judged against (KNOWN_BASELINES), when the pool holds it: a column
    of baseline texts, or a value of the answer-source column; else None (the prompt's median answer length)."""
    name = getattr(ds.spec, "source", None) or ds.name
    b = KNOWN_BASELINES.get(name)
    if b is None:
        return None
    r = ds.responses
    if b in r.columns:
        return b
    if ds.answer_source and (r[ds.answer_source].cast(pl.Utf8) == b).any():
        return b
    return None


@dataclass(frozen=True)
class AlpacaEvalGold:
    """The AlpacaEval-style length-controlled gold of a pool (see the module doc).

    gold         (n,) float64 aligned with the responses: the controlled gold; the gold itself on the baseline
                 source's rows; NaN on unscored rows and rows of a source or prompt without fitted rows
    sources      the answer sources fitted (("all",) without a source column); per source, aligned:
    theta        quality term (logit)
    phi          length term, per unit of tanh(delta / length_sd)
    length_sd    standard deviation of delta (characters) over the source's fitted rows
    lc_winrate   GLM length-controlled win rate: mean over the fitted prompts of sigmoid(theta + difficulty)
    win_rate     mean gold over the source's fitted rows
    phi_shared   the shared length term the sources' phi are pulled towards
    n_rows, n_prompts   fitted rows and their prompts
    source       the source column, or None
    baseline     where the baseline's length came from: "column X", "source X" or "prompt median"
    description  one line saying all that
    """

    gold: np.ndarray = field(repr=False)
    sources: tuple[str, ...]
    theta: tuple[float, ...]
    phi: tuple[float, ...]
    length_sd: tuple[float, ...]
    lc_winrate: tuple[float, ...]
    win_rate: tuple[float, ...]
    phi_shared: float
    n_rows: int
    n_prompts: int
    source: str | None
    baseline: str
    description: str

    def to_dict(self) -> dict:
        """JSON-able summary (no per-row array)."""
        return {"phi_shared": self.phi_shared, "n_rows": self.n_rows, "n_prompts": self.n_prompts,
                "source": self.source, "baseline": self.baseline, "description": self.description,
                "n_sources": len(self.sources)}

    def terms(self) -> pl.DataFrame:
        """One row per fitted source: theta, phi, length_sd, win_rate, lc_winrate."""
        return pl.DataFrame({"source": list(self.sources), "theta": list(self.theta), "phi": list(self.phi),
                             "length_sd": list(self.length_sd), "win_rate": list(self.win_rate),
                             "lc_winrate": list(self.lc_winrate)})


def _codes(values: pl.Series) -> tuple[np.ndarray, list[str]]:
    s = values.cast(pl.Utf8).fill_null("")
    levels = s.unique().sort()
    return s.replace_strict(levels, pl.int_range(len(levels), eager=True)).to_numpy().astype(np.int64), \
        levels.to_list()


def _baseline_lengths(responses: pl.DataFrame, lengths: np.ndarray, pc: np.ndarray, P: int, source: str | None,
                      baseline: str | None, baseline_length) -> tuple[np.ndarray, str, np.ndarray]:
    """(n,) the baseline's answer length per row, what it came from, and (n,) bool: rows that ARE the baseline."""
    n = len(responses)
    is_base = np.zeros(n, bool)
    if baseline_length is not None:
        if baseline is not None:
            raise EmbrmError("alpacaeval gold: give baseline or baseline_length, not both")
        bl = np.asarray(baseline_length, dtype=np.float64)
        if bl.shape != (n,) or not np.isfinite(bl).all() or (bl < 0).any():
            raise EmbrmError(f"baseline_length: expected {n} finite lengths >= 0 (one per response), got shape "
                             f"{bl.shape}")
        return bl, "given lengths", is_base
    if baseline is not None and baseline in responses.columns:
        col = responses[baseline]
        if col.dtype != pl.Utf8 or col.null_count():
            raise EmbrmError(f"alpacaeval gold: baseline column {baseline!r} must hold the baseline's answer text on "
                             f"every row (got {col.dtype}, {col.null_count()} nulls)")
        return col.str.len_chars().to_numpy().astype(np.float64), f"column {baseline}", is_base
    per_prompt = pl.DataFrame({"p": pc, "chars": lengths}).group_by("p").agg(pl.col("chars").median())
    median = np.full(P, np.nan)
    median[per_prompt["p"].to_numpy()] = per_prompt["chars"].to_numpy()
    if baseline is None:
        return median[pc], "prompt median", is_base
    if source is None:
        raise EmbrmError(f"alpacaeval gold: baseline {baseline!r} is not a column of the responses, and no source "
                         f"column is given to find it in (columns: {', '.join(responses.columns)})")
    is_base = (responses[source].cast(pl.Utf8) == baseline).fill_null(False).to_numpy()
    if not is_base.any():
        raise EmbrmError(f"alpacaeval gold: baseline {baseline!r} is neither a column nor a value of {source!r}")
    own = np.full(P, np.nan)
    own[pc[is_base]] = lengths[is_base]
    missing = np.isnan(own)
    bl = np.where(missing, median, own)[pc]
    where = f"source {baseline}" + (f" ({int(missing.sum())} prompts without its answer: their median)"
                                    if missing.any() else "")
    return bl, where, is_base


def alpacaeval_controlled_gold(responses: pl.DataFrame, rows: np.ndarray | None = None, source: str | None = None,
                               baseline: str | None = None, baseline_length=None, *, lam_length: float = LAM_LENGTH,
                               lam_difficulty: float = LAM_DIFFICULTY) -> AlpacaEvalGold:
    """Fit the AlpacaEval-style GLM (module doc) on the gold of `rows` (a boolean mask, default: the scored rows)
    and remove its length term. `source`: the column naming each answer's author (one shared theta and phi without
    it); `baseline`: a column of the baseline's texts or a value of `source` naming the baseline; `baseline_length`:
    (n,) lengths instead; neither: each prompt's median answer length."""
    for col in ("prompt_id", "response", "gold"):
        if col not in responses.columns:
            raise EmbrmError(f"responses table lacks a {col!r} column: load it with embrm.data._dataset")
    if source is not None and source not in responses.columns:
        raise EmbrmError(f"alpacaeval gold: source column {source!r} is not in the responses (columns: "
                         f"{', '.join(responses.columns)})")
    for name, lam in (("lam_length", lam_length), ("lam_difficulty", lam_difficulty)):
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
            raise EmbrmError(f"alpacaeval gold: {name} must be a number > 0, got {lam!r}")
    n = len(responses)
    gold = responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    scored = np.isfinite(gold)
    if (scored & ((gold < 0) | (gold > 1))).any():
        raise EmbrmError("alpacaeval gold: gold must be a probability in [0, 1] (a judge's win probability against "
                         "a baseline); use controlled_gold for other scales")
    if rows is not None:
        r = np.asarray(rows)
        if r.dtype != bool or r.shape != (n,):
            raise EmbrmError(f"rows: expected a boolean array of {n} rows (e.g. ds.usable), got {r.dtype} {r.shape}")
        keep = r & scored
    else:
        keep = scored.copy()
    lengths = responses["response"].cast(pl.Utf8).fill_null("").str.len_chars().to_numpy().astype(np.float64)
    pc, prompts = _codes(responses["prompt_id"])
    P = len(prompts)
    bl, where, is_base = _baseline_lengths(responses, lengths, pc, P, source, baseline, baseline_length)
    fit = keep & ~is_base
    if not fit.any():
        raise EmbrmError(f"alpacaeval gold: no scored rows to fit on{' besides the baseline' if is_base.any() else ''}")
    if source is not None:
        sc, levels = _codes(responses[source])
    else:
        sc, levels = np.zeros(n, np.int64), ["all"]
    M = len(levels)
    delta = lengths - bl
    s, p, y, d = sc[fit], pc[fit], gold[fit], delta[fit]
    cnt = np.bincount(s, minlength=M).astype(np.float64)
    mu = np.bincount(s, d, M) / np.maximum(cnt, 1)
    sd = np.sqrt(np.bincount(s, (d - mu[s]) ** 2, M) / np.maximum(cnt - 1, 1))
    scale = max(float(np.abs(d).max()), 1.0)
    flat = ~(sd > 1e-9 * scale) | (cnt < 2)
    if flat[cnt > 0].all():
        raise EmbrmError("alpacaeval gold: the answers' length difference to the baseline does not vary within any "
                         "source: the length term is not identified")
    sd = np.where(flat, 0.0, sd)
    t_all = np.where(sd[sc] > 0, np.tanh(delta / np.where(sd[sc] > 0, sd[sc], 1.0)), 0.0)
    t = t_all[fit]
    fitted_src, fitted_prompt = cnt > 0, np.bincount(p, minlength=P) > 0

    from scipy.optimize import minimize
    from scipy.special import expit

    def loss(w):  # cross-entropy against soft labels + L2 on the length deviations and the difficulties
        th, ph0, dph, g = w[:M], w[M], w[M + 1:2 * M + 1], w[2 * M + 1:]
        z = th[s] + (ph0 + dph[s]) * t + g[p]
        e = expit(z) - y
        value = float(np.sum(np.logaddexp(0.0, z) - y * z)) + 0.5 * (lam_difficulty * g @ g + lam_length * dph @ dph)
        grad = np.concatenate([np.bincount(s, e, M), [e @ t], np.bincount(s, e * t, M) + lam_length * dph,
                               np.bincount(p, e, P) + lam_difficulty * g])
        return value, grad

    res = minimize(loss, np.zeros(2 * M + 1 + P), jac=True, method="L-BFGS-B",
                   options={"maxiter": MAX_ITER, "gtol": 1e-8})
    w = res.x
    if not np.isfinite(w).all():
        raise EmbrmError(f"alpacaeval gold: the GLM fit did not converge ({res.message})")
    theta, phi = w[:M], w[M] + w[M + 1:2 * M + 1]
    phi = np.where(flat, 0.0, phi)
    difficulty = w[2 * M + 1:]
    z_lc = theta[sc] + difficulty[pc]
    p_hat = expit(z_lc + phi[sc] * t_all)
    controlled = np.clip(gold - (p_hat - expit(z_lc)), 0.0, 1.0)
    ok = scored & fitted_src[sc] & fitted_prompt[pc]
    controlled = np.where(is_base & scored, gold, np.where(ok, controlled, np.nan))
    dp = difficulty[fitted_prompt]
    lc = expit(theta[:, None] + dp[None, :]).mean(axis=1)
    win = np.bincount(s, y, M) / np.maximum(cnt, 1)
    idx = np.flatnonzero(fitted_src)
    n_prompts = int(fitted_prompt.sum())
    desc = (f"AlpacaEval-style GLM (Dubois et al. 2024): logit gold ~ source + source's length term on "
            f"tanh((chars - baseline chars) / sd) + prompt difficulty, fitted on {int(fit.sum())} responses of "
            f"{n_prompts} prompts and {len(idx)} source(s); baseline length: {where}; length term removed")
    return AlpacaEvalGold(controlled, tuple(levels[i] for i in idx), tuple(float(theta[i]) for i in idx),
                          tuple(float(phi[i]) for i in idx), tuple(float(sd[i]) for i in idx),
                          tuple(float(lc[i]) for i in idx), tuple(float(win[i]) for i in idx), float(w[M]),
                          int(fit.sum()), n_prompts, source, where, desc)
