"""Aggregate K ensemble members' scores into one proxy reward per response.

All functions take member scores as an ``(n_responses, K)`` float array (float32 per the contract; float64 is kept
as float64) and return ``(n_responses,)`` arrays of the same float dtype.

Standardise first (``standardize``): Bradley-Terry rewards are defined only up to a shift (and members trained
separately land on different scales), so each member is z-scored with a mean/std fitted on REFERENCE rows; pass
the training responses' scores as ``reference`` so that held-out pools are scored on the training scale.

Aggregations (R_1..R_K = one response's member scores):

    mean      (1/K) sum_k R_k
    min       min_k R_k                                   worst-case optimisation (WCO, Coste et al.)
    median    median_k R_k                                (mean of the two middle values for even K)
    uwo       mean - lam * var,  var = POPULATION variance (ddof=0)   (Coste et al.; lam=0.5 default;
              lam=0 gives exactly the mean -- the anchors' code turned lam=0 into 1)
    lcb       mean - beta * std, std = POPULATION std (ddof=0)        (lower confidence bound)
    softmin   -t * log( (1/K) sum_k exp(-R_k / t) )       t = temperature > 0; -> min as t -> 0, -> mean as t -> inf
    single    R_member                                    one member alone (the no-ensemble baseline)

Implementation: the (n, K) matrix is processed in row chunks that are transposed to (K, chunk) in cache, so every
statistic is an element-wise operation over K contiguous rows (no per-row Python work, no (n, K) temporaries);
the median uses a Batcher odd-even merge sorting network over the K rows.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from embrm.core import EmbrmError, Number, check_value

AGGREGATIONS: tuple[str, ...] = ("mean", "min", "median", "uwo", "lcb", "softmin", "single")
# The aggregations' parameters, for every entry point (option, study key, served request, Python API). Standardised
# member scores are O(1); beyond 1e6 (or a temperature below 1e-6) the float32 arithmetic overflows to inf/NaN, and
# such a weight means nothing anyway: refused where the value enters, not after scoring.
AGGREGATION_RULES = {
    "lam": Number(-1e6, 1e6),  # uwo: any finite weight (0 = the mean; < 0 rewards disagreement)
    "lcb_beta": Number(-1e6, 1e6),
    "temperature": Number(1e-6, 1e6),  # soft-min divides by it
}

_NETWORK_MAX_K = 64  # above this the median falls back to np.median (rare: ensembles are ~5-20 members)


# ----------------------------------------------------------------------------- validation

def _check_scores(scores, name: str = "scores") -> np.ndarray:
    a = np.asarray(scores)
    if a.ndim != 2:
        raise EmbrmError(f"{name}: expected an (n_responses, K) array of member scores, got shape {a.shape}; "
                         "reshape a single member with scores[:, None]")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    elif a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    if a.shape[1] == 0:
        raise EmbrmError(f"{name}: has no members (K = 0 columns)")
    return a


def _check_methods(methods) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    bad = [m for m in methods if m not in AGGREGATIONS]
    if bad:
        raise EmbrmError(f"unknown aggregation {bad[0]!r}: use one of {', '.join(AGGREGATIONS)}")
    if not methods:
        raise EmbrmError(f"no aggregation given: use one or more of {', '.join(AGGREGATIONS)}")
    return methods


def _column_moments(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population variance (float64) in one pass over cache-sized transposed row chunks,
    merging chunks with Chan et al.'s pairwise update (stable, no (m, K) temporaries)."""
    m, k = a.shape
    chunk = max(1024, (1 << 17) // k)
    block = np.empty((k, min(chunk, m)), a.dtype)
    n_tot, mean, m2 = 0, np.zeros(k), np.zeros(k)
    for lo in range(0, m, chunk):
        t = block[:, : min(m, lo + chunk) - lo]
        t[...] = a[lo:lo + chunk].T
        nb = t.shape[1]
        mb = t.sum(axis=1, dtype=np.float64) / nb
        d = t - mb[:, None].astype(a.dtype)
        d *= d
        m2b = d.sum(axis=1, dtype=np.float64)
        delta = mb - mean
        tot = n_tot + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (n_tot * nb / tot)
        n_tot = tot
    return mean, m2 / n_tot


# ----------------------------------------------------------------------------- standardisation

def standardize(scores, reference=None) -> np.ndarray:
    """Z-score each member (column): ``(scores - mean_ref) / std_ref``.

    ``reference``: where the per-member mean and std (population, ddof=0) are fitted.
      - ``None``: on ``scores`` itself;
      - an ``(m, K)`` array: e.g. the members' scores on the TRAINING responses (recommended for held-out pools);
      - a boolean mask of length n, or an integer index array: those rows of ``scores``.
    A member whose reference std is 0 (constant) is only centred (divided by 1).
    Returns a new array of the input's float dtype (float32 stays float32).
    """
    s = _check_scores(scores)
    if reference is None:
        ref = s
    else:
        r = np.asarray(reference)
        if r.ndim == 1 and (r.dtype == bool or np.issubdtype(r.dtype, np.integer)):
            if r.dtype == bool and r.shape[0] != s.shape[0]:
                raise EmbrmError(f"reference: boolean mask has {r.shape[0]} entries for {s.shape[0]} rows of scores")
            ref = s[r]
        else:
            ref = _check_scores(r, "reference")
        if ref.shape[1] != s.shape[1]:
            raise EmbrmError(f"reference: has {ref.shape[1]} members, scores have {s.shape[1]}: "
                             "pass the same ensemble's scores on the reference rows")
    if ref.shape[0] == 0:
        raise EmbrmError("reference: no rows to fit the standardisation on")
    mu, var = _column_moments(ref)
    std = np.sqrt(var)
    std[~(std > 0)] = 1.0
    out = s - mu.astype(s.dtype)
    out *= (1.0 / std).astype(s.dtype)
    return out


# ----------------------------------------------------------------------------- sorting network

@lru_cache(maxsize=None)
def _batcher_pairs(k: int) -> tuple[tuple[int, int], ...]:
    """Comparators of Batcher's odd-even merge sort for any k (ascending after applying them in order)."""
    pairs = []
    p = 1
    while p < k:
        step = p
        while step >= 1:
            for j in range(step % p, k - step, 2 * step):
                for i in range(min(step, k - j - step)):
                    if (i + j) // (2 * p) == (i + j + step) // (2 * p):
                        pairs.append((i + j, i + j + step))
            step //= 2
        p *= 2
    return tuple(pairs)


def _sorted_rows(t: np.ndarray) -> list[np.ndarray]:
    """Sort the K rows of a (K, c) block element-wise (column-wise sort) with a sorting network."""
    rows = [t[i].copy() for i in range(t.shape[0])]
    tmp = np.empty_like(rows[0])
    for i, j in _batcher_pairs(t.shape[0]):
        a, b = rows[i], rows[j]
        np.minimum(a, b, out=tmp)
        np.maximum(a, b, out=b)
        rows[i], tmp = tmp, a
    return rows


# ----------------------------------------------------------------------------- aggregation

def aggregate_all(scores, methods=AGGREGATIONS, *, lam: float = 0.5, beta: float = 1.0,
                  temperature: float = 1.0, member: int = 0) -> dict[str, np.ndarray]:
    """Several aggregations of ``(n, K)`` member scores in one pass: ``{method: (n,) array}``.

    Shared statistics (mean, variance, the sorted members) are computed once. See the module docstring for the
    formulas; ``lam`` (uwo), ``beta`` (lcb), ``temperature`` (softmin) and ``member`` (single) are their parameters.
    Variance and std are population statistics (ddof=0). Standardise the scores first (``standardize``).
    """
    s = _check_scores(scores)
    methods = _check_methods(methods)
    n, k = s.shape
    for name, v in (("lam", lam), ("lcb_beta", beta), ("temperature", temperature)):
        check_value(name, v, AGGREGATION_RULES[name])
    if "single" in methods and not (-k <= int(member) < k):
        raise EmbrmError(f"member = {member}: the ensemble has {k} members (use 0..{k - 1})")
    member = int(member) % k
    dt = s.dtype
    out = {m: np.empty(n, dt) for m in methods}
    need_mean = any(m in methods for m in ("mean", "uwo", "lcb"))
    need_var = any(m in methods for m in ("uwo", "lcb"))
    need_sorted = "median" in methods and k <= _NETWORK_MAX_K
    need_min = "min" in methods or "softmin" in methods

    if "median" in methods and not need_sorted:
        out["median"][:] = np.median(s, axis=1)
    chunk = max(1024, (1 << 17) // k)  # a (K, chunk) block ~ 0.5 MB: stays in cache
    block = np.empty((k, min(chunk, n)), dt)
    lam_, beta_, t_ = dt.type(lam), dt.type(beta), dt.type(temperature)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        t = block[:, : hi - lo]
        t[...] = s[lo:hi].T
        sl = slice(lo, hi)
        if need_mean:
            mean = t.sum(axis=0)
            mean /= k
            if "mean" in out:
                out["mean"][sl] = mean
            if need_var:
                d = t - mean
                d *= d
                var = d.sum(axis=0)
                var /= k
                if "uwo" in out:
                    # lam = 0 must give exactly the mean (no `lam or 1` anywhere)
                    out["uwo"][sl] = mean - lam_ * var
                if "lcb" in out:
                    out["lcb"][sl] = mean - beta_ * np.sqrt(var)
        if need_sorted:
            rows = _sorted_rows(t)
            mn = rows[0]
            med = rows[k // 2] if k % 2 else (rows[k // 2 - 1] + rows[k // 2]) * dt.type(0.5)
            out["median"][sl] = med
        elif need_min:
            mn = t.min(axis=0)
        if "min" in out:
            out["min"][sl] = mn
        if "softmin" in out:
            # -t log mean exp(-R/t) = min - t log mean exp(-(R - min)/t): every exponent <= 0 (stable)
            e = t - mn
            e *= -1 / t_
            np.exp(e, out=e)
            acc = e.sum(axis=0)
            acc /= k
            out["softmin"][sl] = mn - t_ * np.log(acc)
        if "single" in out:
            out["single"][sl] = t[member]
    return out


def aggregate(scores, method: str, *, lam: float = 0.5, beta: float = 1.0, temperature: float = 1.0,
              member: int = 0) -> np.ndarray:
    """One aggregation of ``(n, K)`` member scores -> ``(n,)``. Methods: ``AGGREGATIONS``.

    ``uwo = mean - lam * var`` and ``lcb = mean - beta * std`` use POPULATION variance/std (ddof=0);
    ``lam=0`` gives the plain mean. See ``aggregate_all`` and the module docstring.
    """
    _check_methods((method,))
    return aggregate_all(scores, (method,), lam=lam, beta=beta, temperature=temperature, member=member)[method]
