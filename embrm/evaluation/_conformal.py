"""A split-conformal lower bound on a response's gold (relative to its prompt), as a Best-of-n aggregation.

An ensemble gives K standardised member scores per response. For each row:

    mu    = the members' mean, centred within its prompt, / its std over the reference rows
    sigma = the members' population std, floored at the 5th percentile of the positive spreads on the reference
            rows (1.0 if there are none: with K = 1 the bound ranks like the mean)
    y     = gold, centred within its prompt (scored rows), / its std over the reference rows

Nonconformity s = (mu - y) / sigma (locally weighted split conformal: Lei, G'Sell, Rinaldo, Tibshirani &
Wasserman 2018, "Distribution-free predictive inference for regression", JASA; Angelopoulos & Bates 2021, "A
Gentle Introduction to Conformal Prediction and Distribution-Free Uncertainty Quantification"). With n calibration
rows and alpha = 1 - coverage, q = the ceil((n + 1)(1 - alpha))-th smallest s, and the lower bound

    L = mu - q * sigma   satisfies   P(y >= L) >= 1 - alpha   for a row exchangeable with the calibration rows,

whatever the members are: a poor spread model only makes the bound looser. The bound is CROSS-FITTED by prompt:
the evaluated prompts are split into random folds and a fold's rows get the q of the other folds' rows, so no
prompt's gold shapes its own bound. Centring within prompt uses the prompt's evaluated or reference rows; the
scales (std of mu and of y, the sigma floor) come from the reference rows (the training prompts), so they do not
depend on the evaluated gold either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from embrm.core import EmbrmError

SIGMA_FLOOR_PERCENTILE = 5.0


@dataclass
class ConformalResult:
    """A cross-fitted conformal lower bound; ``bound`` is per row (NaN outside the evaluated rows) and stays out of
    ``to_dict``. A fold's q bounds new rows as (centred mean) / mu_scale - q * max(spread, sigma_floor), the mean
    and gold centred within prompt; y = centred gold / gold_scale."""

    bound: np.ndarray | None = field(repr=False)  # None when read back from a stored result
    coverage: float  # the target, 1 - alpha
    empirical_coverage: float  # share of evaluated scored rows with y >= bound (each judged out of its own fold)
    quantiles: list[float]  # q per fold
    n_calibration: list[int]  # calibration rows per fold (the other folds' scored evaluated rows)
    folds: int
    mu_scale: float
    gold_scale: float
    sigma_floor: float

    def to_dict(self, bound: bool = False) -> dict:
        """JSON-able fields; the per-row bound only when asked (it is an array)."""
        d = asdict(self)
        if not bound:
            del d["bound"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConformalResult:
        """The result of to_dict() (a job's stored result); the per-row bound only when it was stored."""
        return cls(**{"bound": None, **d})


def _inputs(scores, gold, prompt_ids, evaluated, reference):
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise EmbrmError(f"scores must be a non-empty (n_responses, K) array of member scores; got shape {s.shape}")
    n = s.shape[0]
    g = np.asarray(gold, dtype=np.float64)
    p = np.asarray(prompt_ids)
    for name, a in (("gold", g), ("prompt_ids", p)):
        if a.shape != (n,):
            raise EmbrmError(f"{name} must hold one value per response ({n} rows, like scores); got shape {a.shape}")
    return s, g, p, _mask("evaluated", evaluated, n), _mask("reference", reference, n)


def _mask(name: str, a, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != bool or a.shape != (n,):
        raise EmbrmError(f"{name}: expected a boolean array of {n} rows, got {a.dtype} {a.shape}")
    return a


def _centred(values: np.ndarray, code: np.ndarray, rows: np.ndarray, apply: np.ndarray | None = None) -> np.ndarray:
    """values minus their prompt's mean over ``rows``, on ``apply`` rows (default: rows); NaN elsewhere."""
    n_prompts = int(code.max()) + 1
    total = np.bincount(code[rows], values[rows], n_prompts)
    count = np.bincount(code[rows], minlength=n_prompts)
    mean = total / np.maximum(count, 1)
    return np.where(rows if apply is None else apply, values - mean[code], np.nan)


def _scale(centred: np.ndarray, rows: np.ndarray, what: str) -> float:
    sd = float(np.std(centred[rows])) if rows.any() else 0.0
    if not sd > 0:
        raise EmbrmError(f"{what} does not vary within prompts on the reference rows: pass reference rows (the "
                         f"training prompts' usable responses) with several scored responses per prompt")
    return sd


def _prompt_folds(code: np.ndarray, evaluated: np.ndarray, scored: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each prompt (-1: not evaluated). Prompts with evaluated gold are dealt round-robin in random order, so
    every fold has one and every fold's complement can calibrate; the others are dealt the same way."""
    n_prompts = int(code.max()) + 1
    with_gold = np.bincount(code[evaluated & scored], minlength=n_prompts) > 0
    is_eval = np.bincount(code[evaluated], minlength=n_prompts) > 0
    if with_gold.sum() < folds:
        raise EmbrmError(f"cross-fitting into {folds} folds needs at least {folds} evaluated prompts with gold; got "
                         f"{int(with_gold.sum())}: lower folds or evaluate more prompts")
    rng = np.random.default_rng(seed)
    fold = np.full(n_prompts, -1, dtype=np.int64)
    for group in (np.flatnonzero(with_gold), np.flatnonzero(is_eval & ~with_gold)):  # two groups, not prompts
        fold[rng.permutation(group)] = np.arange(len(group)) % folds
    return fold


def _quantile(s: np.ndarray, alpha: float, coverage: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest nonconformity score (split-conformal rank)."""
    n = len(s)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # tolerance: (n + 1) * 0.9 may round just above an integer
    if k > n:
        raise EmbrmError(f"coverage {coverage} needs at least {math.ceil(1 / alpha - 1e-9) - 1} calibration "
                         f"responses per fold, got {n}: lower coverage or folds, or evaluate more prompts")
    return float(np.partition(s, k - 1)[k - 1])


def conformal_lower_bound(scores, gold, prompt_ids, evaluated, reference, *, coverage: float = 0.9,
                          folds: int = 2, seed: int = 0, also=None) -> ConformalResult:
    """Cross-fitted split-conformal lower bound L on each evaluated row's standardised within-prompt gold, with
    P(y >= L) >= coverage (see the module doc). scores: (n, K) standardised member scores; gold: (n,) (NaN =
    unscored, never used); prompt_ids: (n,) labels; evaluated: (n,) bool rows to bound (held-out prompts' usable
    responses); reference: (n,) bool rows for the scales (training prompts' usable responses; none: evaluated);
    also: (n,) bool rows of the evaluated prompts that get a bound with their prompt's fold but never centre nor
    calibrate (a dataset's excluded responses, put back in a second pool)."""
    s, g, p, evaluated, reference = _inputs(scores, gold, prompt_ids, evaluated, reference)
    also = np.zeros(len(s), bool) if also is None else _mask("also", also, len(s)) & ~evaluated
    if not 0.0 < float(coverage) < 1.0:
        raise EmbrmError(f"coverage must be in (0, 1), got {coverage}: e.g. 0.9 for a 90 % lower bound")
    if int(folds) != folds or folds < 2:
        raise EmbrmError(f"folds must be an integer >= 2 (cross-fitting keeps a prompt out of its own "
                         f"calibration), got {folds}")
    coverage, folds, alpha = float(coverage), int(folds), 1.0 - float(coverage)
    ref = reference if reference.any() else evaluated
    used = evaluated | ref
    if not np.isfinite(s[used | also]).all():
        raise EmbrmError("scores hold NaN/inf on evaluated or reference rows: drop those rows from the masks")
    s = np.where((used | also)[:, None], s, 0.0)  # rows outside the masks are never read
    code = np.unique(p, return_inverse=True)[1].ravel()
    scored = np.isfinite(g)

    mu_c = _centred(s.mean(axis=1), code, used, used | also)
    mu_scale = _scale(mu_c, ref, "the members' mean")
    y_c = _centred(np.where(scored, g, 0.0), code, used & scored)
    gold_scale = _scale(y_c, ref & scored, "gold")
    mu, y = mu_c / mu_scale, y_c / gold_scale
    spread = s.std(axis=1)
    positive = spread[ref & (spread > 0)]
    sigma_floor = float(np.percentile(positive, SIGMA_FLOOR_PERCENTILE)) if positive.size else 1.0
    sigma = np.maximum(spread, sigma_floor)
    nonconformity = (mu - y) / sigma

    fold = _prompt_folds(code, evaluated, scored, folds, seed)[code]
    calibrating = evaluated & scored
    bound = np.full(len(s), np.nan)
    quantiles, n_cal = [], []
    for f in range(folds):
        cal = calibrating & (fold != f)
        q = _quantile(nonconformity[cal], alpha, coverage)
        rows = (evaluated | also) & (fold == f)
        bound[rows] = mu[rows] - q * sigma[rows]
        quantiles.append(q)
        n_cal.append(int(cal.sum()))
    return ConformalResult(bound=bound, coverage=coverage,
                           empirical_coverage=float(np.mean(y[calibrating] >= bound[calibrating])),
                           quantiles=quantiles, n_calibration=n_cal, folds=folds, mu_scale=mu_scale,
                           gold_scale=gold_scale, sigma_floor=sigma_floor)
