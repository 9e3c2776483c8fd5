"""Length as a confounder of rewards and of gold: measured, and removed.

Reward models and LLM judges both tend to prefer longer answers, so a proxy reward can look aligned with gold just
because both follow length, and a Best-of-n pick can gain "gold" by picking verbose answers. The tools here all use
one length feature, ``length_feature`` = log1p(characters of the response) (via ``metrics.length_reward``):

    length_feature(responses)               (n,) float64 log1p(character length)
    length_correlation(scores, length, pid) mean within-prompt Spearman of each score column with length: how much a
                                            reward follows length inside a prompt's pool (``per_prompt_spearman``
                                            with length in the place of gold)
    LengthCorrection.fit(...).apply(...)    post-hoc length correction of reward scores: per score column, the
                                            least-squares slope of score on length, fitted on TRAINING rows only,
                                            then ``score - slope * length``. scope="prompt" fits the slope within
                                            prompts (prompt fixed effects), so prompts that are both long and
                                            high-scoring do not bias it; scope="global" is plain OLS with an
                                            intercept. Afterwards the corrected scores of the fitted rows have zero
                                            (within-prompt) linear correlation with length. Cf. "Post-hoc reward
                                            calibration: a case study on length bias" (Huang et al. 2024,
                                            arXiv 2409.17407) and ArmoRM's decorrelation of its reward objectives
                                            from verbosity (Wang et al. 2024, "Interpretable preferences via
                                            multi-objective reward modeling and mixture-of-experts").
    controlled_gold(responses, rows, src)   length-controlled gold, in the spirit of AlpacaEval's length-controlled
                                            win rate (Dubois et al. 2024, arXiv 2404.04475): fit gold ~ prompt fixed
                                            effects (+ source fixed effects, e.g. the answering model) + effect *
                                            length, then remove only the length term. With the source in the fit, a
                                            model that writes longer AND better keeps its quality; without it, its
                                            quality is partly charged to length.

``controlled_gold`` scales to ~10^6 rows and 10^5 prompts: by the Frisch-Waugh-Lovell theorem the length effect
is the slope of fully demeaned gold on fully demeaned length, and demeaning by two sets of fixed effects is done
by alternating projections (source means, then prompt means, repeated to convergence; group sums as one sparse
indicator product).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from embrm.core import EmbrmError
from embrm.evaluation import length_reward, per_prompt_spearman

__all__ = ["ControlledGold", "LengthCorrection", "controlled_gold", "length_correlation", "length_feature"]

SCOPES = ("prompt", "global")
MAX_SWEEPS = 1000  # alternating-projection sweeps of controlled_gold (a balanced panel needs one or two, a random
# unbalanced one of 10^6 rows, 10^5 prompts and 50 sources about fifteen)


def length_feature(responses: pl.DataFrame) -> np.ndarray:
    """(n,) float64 log1p(character length of `response`): the one length feature every length tool uses."""
    return np.log1p(length_reward(responses).astype(np.float64))


def length_correlation(scores, length, prompt_ids, mask=None):
    """Mean within-prompt Spearman of each score column with length (``metrics.per_prompt_spearman`` with length as
    gold; prompts with < 3 rows or constant values have no rho). scores: (n,) -> float, (n, A) -> (A,) array,
    {name: (n,)} -> {name: float}."""
    rho = per_prompt_spearman(scores, np.asarray(length, dtype=np.float64), prompt_ids, mask=mask)
    if isinstance(scores, dict):
        return {str(k): float(r) for k, r in zip(scores, np.atleast_1d(rho))}
    return rho


# ----------------------------------------------------------------------------- grouping helpers

class _Groups:
    """Rows grouped by a label: codes (n,) (dense ranks of the labels), counts (G,), and a sparse (G, n) indicator
    whose product with (n,) or (n, C) values gives every group's sums, all columns at once."""

    def __init__(self, labels):
        import scipy.sparse as sp
        if not isinstance(labels, pl.Series):
            labels = pl.Series(np.asarray(labels).ravel())
        if labels.dtype == pl.Object:
            labels = labels.cast(pl.Utf8)
        self.codes = labels.rank("dense").to_numpy().astype(np.int64) - 1
        n = len(self.codes)
        G = int(self.codes.max()) + 1 if n else 0
        self.counts = np.bincount(self.codes, minlength=G).astype(np.float64)
        self.indicator = sp.csr_matrix((np.ones(n), (self.codes, np.arange(n))), shape=(G, n))

    def __len__(self) -> int:
        return len(self.counts)

    def means(self, v: np.ndarray) -> np.ndarray:
        sums = self.indicator @ v
        return sums / (self.counts[:, None] if v.ndim == 2 else self.counts)

    def demean(self, v: np.ndarray) -> np.ndarray:
        return v - self.means(v)[self.codes]


def _vector(values, n: int, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (n,):
        raise EmbrmError(f"{name}: expected {n} values (one per response), got shape {v.shape}")
    return v


def _rows_mask(rows, n: int) -> np.ndarray:
    r = np.asarray(rows)
    if r.dtype != bool or r.shape != (n,):
        raise EmbrmError(f"rows: expected a boolean array of {n} rows (e.g. ds.usable), got {r.dtype} {r.shape}")
    return r


def _no_variance(ss: float, scale: float, n: int) -> bool:
    """A sum of squares that is rounding noise next to values of size `scale`."""
    return not ss > (1e-12 * max(scale, 1e-300)) ** 2 * n


# ----------------------------------------------------------------------------- reward scores

@dataclass(frozen=True)
class LengthCorrection:
    """Per score column, the least-squares slope of score on the length feature (fitted on training rows);
    ``apply`` subtracts ``slope * length``. scope "prompt": within-prompt slope (prompt fixed effects); "global":
    OLS with an intercept. A column, or a design, without variance gets slope 0."""

    scope: str
    slopes: tuple[float, ...]

    @classmethod
    def fit(cls, scores, length, prompt_ids, rows, scope: str = "prompt") -> LengthCorrection:
        if scope not in SCOPES:
            raise EmbrmError(f"length correction scope {scope!r} is unknown: use one of {', '.join(SCOPES)}")
        S = np.asarray(scores, dtype=np.float64)
        if S.ndim == 1:
            S = S[:, None]
        if S.ndim != 2:
            raise EmbrmError(f"scores: expected (n,) or (n, K) scores, got shape {S.shape}")
        n = S.shape[0]
        x = _vector(length, n, "length")
        pid = np.asarray(prompt_ids)
        if pid.shape != (n,):
            raise EmbrmError(f"prompt_ids: expected {n} prompt ids (one per response), got shape {pid.shape}")
        keep = _rows_mask(rows, n)
        if not keep.any():
            raise EmbrmError("length correction: no rows to fit on: pass the training responses as rows")
        x, Y = x[keep], S[keep]
        if not (np.isfinite(x).all() and np.isfinite(Y).all()):
            raise EmbrmError("length correction: scores or length hold NaN/inf on the fitted rows: score them first")
        if scope == "prompt":
            g = _Groups(pid[keep])
            xd, Yd = g.demean(x), g.demean(Y)
        else:
            xd, Yd = x - x.mean(), Y - Y.mean(axis=0)
        sxx = float(xd @ xd)
        slopes = np.zeros(Y.shape[1])
        if not _no_variance(sxx, float(np.abs(x).max()), len(x)):
            flat = ~(np.einsum("ij,ij->j", Yd, Yd) > (1e-12 * np.maximum(np.abs(Y).max(axis=0), 1e-300)) ** 2 * len(x))
            slopes = np.where(flat, 0.0, (xd @ Yd) / sxx)
        return cls(scope, tuple(float(b) for b in slopes))

    def apply(self, scores, length) -> np.ndarray:
        """scores - length * slopes, float32, in the shape of scores ((n, K), or (n,) when K = 1)."""
        S = np.asarray(scores, dtype=np.float64)
        K = len(self.slopes)
        if not (S.ndim == 2 and S.shape[1] == K) and not (S.ndim == 1 and K == 1):
            raise EmbrmError(f"scores: this correction was fitted on {K} score column(s), got shape {S.shape}")
        x = _vector(length, S.shape[0], "length")
        b = np.asarray(self.slopes)
        out = S - x[:, None] * b if S.ndim == 2 else S - x * b[0]
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        return {"scope": self.scope, "slopes": list(self.slopes)}

    @classmethod
    def from_dict(cls, d) -> LengthCorrection:
        if not isinstance(d, dict) or set(d) != {"scope", "slopes"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise EmbrmError(f"length correction: expected {{'scope', 'slopes'}}, got {got}: the saved file is damaged")
        if d["scope"] not in SCOPES:
            raise EmbrmError(f"length correction: scope {d['scope']!r} is not one of {', '.join(SCOPES)}: the saved "
                             f"file is damaged")
        s = d["slopes"]
        ok = isinstance(s, list) and len(s) > 0 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in s)
        if not ok:
            raise EmbrmError("length correction: slopes must be a non-empty list of finite numbers: the saved file "
                             "is damaged")
        return cls(d["scope"], tuple(float(v) for v in s))


# ----------------------------------------------------------------------------- gold

def _finite_or_none(v: float):
    return float(v) if math.isfinite(v) else None


@dataclass
class ControlledGold:
    """Length-controlled gold (see controlled_gold).

    effect      gold per unit of length_feature (log1p characters), other fixed effects held
    stderr      cluster-robust standard error of effect, clustered by prompt (CR1: G/(G-1) * (N-1)/(N-k), k = 1 +
                the source levels beyond the first; prompt effects are nested in the clusters and not counted);
                NaN with fewer than 2 prompts
    n_rows      fitted rows; n_prompts: their distinct prompts
    source      the column used for source fixed effects, or None
    r2_within   share of the within-prompt gold variance that the model (source effects + length) explains
    gold        (n,) float64: gold - effect * (length - mean length over the fitted rows) on scored rows; NaN on
                unscored rows
    """

    effect: float
    stderr: float
    n_rows: int
    n_prompts: int
    source: str | None
    r2_within: float
    gold: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-able summary (no per-row array; NaN written as None)."""
        return {"effect": self.effect, "stderr": _finite_or_none(self.stderr), "n_rows": self.n_rows,
                "n_prompts": self.n_prompts, "source": self.source, "r2_within": _finite_or_none(self.r2_within)}


def _absorb(V: np.ndarray, prompts: _Groups, sources: _Groups | None) -> np.ndarray:
    """V (n, C) with the prompt (and source) fixed effects projected out: alternating projections to convergence."""
    V = prompts.demean(V)
    if sources is None:
        return V
    tol = 1e-13 * max(float(np.abs(V).max()), 1e-300)
    for _ in range(MAX_SWEEPS):
        ms = sources.means(V)
        V = V - ms[sources.codes]
        mp = prompts.means(V)
        V = V - mp[prompts.codes]
        if max(float(np.abs(ms).max()), float(np.abs(mp).max())) <= tol:
            break
    return V


def controlled_gold(responses: pl.DataFrame, rows: np.ndarray | None = None, source: str | None = None
                    ) -> ControlledGold:
    """Fit gold ~ prompt fixed effects (+ fixed effects of the `source` column, e.g. "model") + effect *
    length_feature by least squares over `rows` (a boolean mask, default: the scored rows; unscored rows in it are
    left out), then remove only the length term. Deterministic; scales to ~10^6 rows (see the module doc)."""
    for col in ("prompt_id", "response", "gold"):
        if col not in responses.columns:
            raise EmbrmError(f"responses table lacks a {col!r} column: load it with embrm.data._dataset")
    n = len(responses)
    gold = responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    scored = np.isfinite(gold)
    keep = scored if rows is None else _rows_mask(rows, n) & scored
    if keep.sum() < 2:
        raise EmbrmError(f"controlled gold: only {int(keep.sum())} scored row(s) to fit on: need at least 2")
    if source is not None and source not in responses.columns:
        raise EmbrmError(f"controlled gold: source column {source!r} is not in the responses (columns: "
                         f"{', '.join(responses.columns)})")
    x = length_feature(responses)
    fitted = pl.Series(keep)
    prompts = _Groups(responses["prompt_id"].cast(pl.Utf8).fill_null("").filter(fitted))
    sources = None
    if source is not None:
        sources = _Groups(responses[source].cast(pl.Utf8).fill_null("").filter(fitted))
    V = np.stack([x[keep], gold[keep]], axis=1)
    within = prompts.demean(V)  # within-prompt length and gold
    scale = float(np.abs(V[:, 0]).max())
    if _no_variance(float(within[:, 0] @ within[:, 0]), scale, len(V)):
        raise EmbrmError("controlled gold: length does not vary within any prompt: the length effect is not "
                         "identified")
    R = _absorb(V, prompts, sources)
    xt, yt = R[:, 0], R[:, 1]
    sxx = float(xt @ xt)
    if _no_variance(sxx, scale, len(V)) or sxx < 1e-9 * float(within[:, 0] @ within[:, 0]):
        raise EmbrmError(f"controlled gold: within prompts, length is fully explained by {source!r}: the length "
                         f"effect is not identified (drop source)")
    effect = float(xt @ yt) / sxx
    e = yt - effect * xt
    N, G = len(V), len(prompts)
    k = 1 + (len(sources) - 1 if sources is not None else 0)
    if G >= 2 and N > k:
        u = np.bincount(prompts.codes, xt * e, minlength=G)
        stderr = math.sqrt(float(u @ u) * G / (G - 1) * (N - 1) / (N - k)) / sxx
    else:
        stderr = float("nan")
    ssw = float(within[:, 1] @ within[:, 1])
    r2 = 1.0 - float(e @ e) / ssw if ssw > 0 else float("nan")
    controlled = np.where(scored, gold - effect * (x - x[keep].mean()), np.nan)
    return ControlledGold(effect, stderr, int(N), int(G), source, r2, controlled)
