"""Exact Best-of-n simulation over candidate pools: every n = 1..n_max, every prompt, every aggregation at once.

The estimator (Gao et al. 2022; Coste et al. 2023). A prompt has a pool of N scored candidates. Best-of-n draws a
uniformly random n-subset of the pool and keeps the candidate with the highest PROXY score. Sort the pool by proxy
ascending; the candidate at rank i (1-based) is the pick with probability

    w_N(i, n) = C(i - 1, n - 1) / C(N, n)          (zero for i < n; each column sums to 1)

so E[gold of the pick] = sum_i w_N(i, n) gold_(i), where gold_(i) is the gold score of the candidate at proxy rank
i (gold travels WITH its candidate: sorting the proxy alone and indexing the unsorted gold is the bug in Coste et
al.'s released code). The same weights applied to the proxy give the proxy curve, and applied to the candidate's
gold percentile within its pool give the expected percentile of the pick. The estimate is exact (no sampling) and
unbiased for a policy whose samples the pool represents.

Ties in proxy: the pick among tied best candidates is uniformly random (equivalently: ties are broken by a uniformly
random order). Under that rule the exact expectation equals the formula with each tied block's gold (and
percentile) replaced by the block's mean, which is what is computed: the result does not depend on the sort's
tie order.

Pools of unequal size: prompt p contributes to n only if n <= N_p; every per-n average is over the prompts that
contribute (``BonCurves.n_prompts[n - 1]`` says how many). With unequal pools the set of prompts changes with n, so
the random/oracle references are averaged over the same prompts at each n.

Unscored candidates: rows whose gold is NaN (polars null -> NaN via ``to_numpy()``) are dropped from the pool
automatically (they cannot be scored, and keeping them would change N); a ``mask`` drops further rows. The pool
size N_p is the number of remaining rows of the prompt. Proxy scores must be finite on the remaining rows.

Computation: rows are grouped by prompt into a (P, N_max) matrix (a zero-copy reshape when every pool has the same
size and the table is already grouped; otherwise one gather with padding), sorted along rows with one argsort per
aggregation, and the sorted gold/percentile/proxy columns are summed over the prompts of each pool size; because
the estimator is linear, the prompt-averaged curve is then (sums over prompts) @ W_N: one small float64 matmul per
distinct pool size (W_N built once from a log-factorial table, float64). There is no Python loop over n or over
prompts; the only loops are over aggregations and distinct pool sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
from scipy.special import gammaln

from embrm.errors import EmbrmError
from embrm.pools import avg_ranks, group_pools, score_columns, tie_average

__all__ = ["BonCurves", "bon_curves", "bon_weights", "curves_frame", "expected_best_of_n", "fit_gao", "kl_bon"]


# ----------------------------------------------------------------------------- closed forms

def kl_bon(n):
    """KL(Best-of-n || base policy) = log n - (n - 1) / n (Gao et al.'s analytic bound; 0 at n = 1)."""
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1):
        raise EmbrmError("kl_bon: n must be >= 1")
    return np.log(n) - (n - 1.0) / n


def fit_gao(d, r) -> tuple[float, float]:
    """Least-squares fit of Gao et al.'s Best-of-n form ``R(d) = d * (alpha - beta * d)``, d = sqrt(KL).

    ``r`` is the gold reward GAIN over the base policy (curve minus its value at n = 1, so R(0) = 0). The model is
    linear in (alpha, beta): solves ``[d, -d^2] @ (alpha, beta) = r``. NaN points are ignored. Returns
    ``(alpha, beta)``; the fitted curve peaks at ``d* = alpha / (2 beta)`` when beta > 0.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    r = np.asarray(r, dtype=np.float64).ravel()
    if d.shape != r.shape:
        raise EmbrmError(f"fit_gao: d has {d.size} points, r has {r.size}: pass one r per d")
    ok = np.isfinite(d) & np.isfinite(r)
    d, r = d[ok], r[ok]
    a = np.stack([d, -d * d], axis=1)
    if np.linalg.matrix_rank(a) < 2:
        raise EmbrmError("fit_gao: needs at least two distinct nonzero d (e.g. n = 1..8)")
    (alpha, beta), *_ = np.linalg.lstsq(a, r, rcond=None)
    return float(alpha), float(beta)


@lru_cache(maxsize=4096)
def _log_factorial(m: int) -> np.ndarray:
    return gammaln(np.arange(m + 1, dtype=np.float64) + 1.0)


@lru_cache(maxsize=256)
def _weights_cached(pool: int, n_max: int) -> np.ndarray:
    lf = _log_factorial(pool)
    i = np.arange(1, pool + 1)[:, None]
    n = np.arange(1, n_max + 1)[None, :]
    ok = i >= n
    ii, nn = np.broadcast_arrays(i, n)
    ii, nn = ii[ok], nn[ok]
    w = np.zeros((pool, n_max))
    # log C(i-1, n-1) - log C(N, n)
    w[ok] = np.exp(lf[ii - 1] - lf[nn - 1] - lf[ii - nn] - (lf[pool] - lf[nn] - lf[pool - nn]))
    w.setflags(write=False)
    return w


def bon_weights(pool: int, n_max: int | None = None) -> np.ndarray:
    """The (pool, n_max) float64 matrix ``W[i-1, n-1] = C(i-1, n-1) / C(pool, n)``: probability that the candidate at
    proxy rank i (ascending, 1-based) of a pool of ``pool`` is the Best-of-n pick. Columns sum to 1; n_max <= pool.
    Read-only (cached)."""
    pool = int(pool)
    n_max = pool if n_max is None else int(n_max)
    if pool < 1 or not 1 <= n_max <= pool:
        raise EmbrmError(f"bon_weights: need 1 <= n_max <= pool, got pool={pool}, n_max={n_max}")
    return _weights_cached(pool, n_max)


# ----------------------------------------------------------------------------- input handling

def _keep_rows(gold: np.ndarray, mask) -> np.ndarray | None:
    keep = ~np.isnan(gold)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != gold.shape:
            raise EmbrmError(f"mask: expected a boolean array of {gold.shape[0]} rows, got {m.dtype} {m.shape}")
        keep &= m
    return None if keep.all() else keep


# ----------------------------------------------------------------------------- results

@dataclass
class BonCurves:
    """Best-of-n curves for n = 1..n_max (index n - 1), one row per aggregation.

    gold, proxy, percentile: (A, n_max) float64, averaged over the prompts whose pool has >= n candidates.
    percentile: expected gold percentile of the pick within its pool, 0..100 (mid-rank: (avg_rank - 1)/(N - 1);
    a random pick averages exactly 50; a pool of one is 50).
    random (pool mean), oracle (pool max): (n_max,) over the same prompts as each n.
    gain: (A, n_max) normalised gain (gold - random) / (oracle - random): 0 = random pick, 1 = oracle.
    per_prompt_gold: (A, P, n_max) float32 expected gold per prompt (NaN where n > N_p) if requested.
    prompts / pool_size: (P,) prompt keys and their scored pool sizes, in the order per_prompt_gold uses.
    """

    aggregations: tuple[str, ...]
    n: np.ndarray
    n_prompts: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray
    percentile: np.ndarray
    random: np.ndarray
    oracle: np.ndarray
    prompts: np.ndarray
    pool_size: np.ndarray
    per_prompt_gold: np.ndarray | None = None

    @property
    def kl(self) -> np.ndarray:
        return kl_bon(self.n)

    @property
    def d(self) -> np.ndarray:
        return np.sqrt(self.kl)

    @property
    def gain(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.gold - self.random) / (self.oracle - self.random)

    def final_gain(self) -> dict[str, float]:
        """Normalised gain at n = n_max per aggregation."""
        return {a: float(g) for a, g in zip(self.aggregations, self.gain[:, -1])}

    def best_n(self) -> dict[str, int]:
        """The n maximising expected gold per aggregation (the over-optimisation peak when it is < n_max)."""
        return {a: int(self.n[np.nanargmax(g)]) for a, g in zip(self.aggregations, self.gold)}

    def frame(self) -> pl.DataFrame:
        return curves_frame(self)

    def __getitem__(self, agg: str) -> dict[str, np.ndarray]:
        if agg not in self.aggregations:
            raise EmbrmError(f"no aggregation {agg!r} in these curves: use one of {', '.join(self.aggregations)}")
        j = self.aggregations.index(agg)
        return {"n": self.n, "kl": self.kl, "gold": self.gold[j], "proxy": self.proxy[j],
                "percentile": self.percentile[j], "gain": self.gain[j]}

    def __repr__(self) -> str:
        return (f"BonCurves({len(self.aggregations)} aggregations {list(self.aggregations)}, n = 1..{len(self.n)}, "
                f"{len(self.prompts)} prompts)")


def curves_frame(curves: BonCurves) -> pl.DataFrame:
    """Tidy table, one row per (aggregation, n): agg, n, kl, d, gold, proxy, percentile, random, oracle, gain,
    n_prompts."""
    a, m = len(curves.aggregations), len(curves.n)
    kl = curves.kl
    return pl.DataFrame({
        "agg": np.repeat(np.array(curves.aggregations, dtype=object), m).astype(str),
        "n": np.tile(curves.n, a).astype(np.int64),
        "kl": np.tile(kl, a),
        "d": np.tile(np.sqrt(kl), a),
        "gold": curves.gold.ravel(),
        "proxy": curves.proxy.ravel(),
        "percentile": curves.percentile.ravel(),
        "random": np.tile(curves.random, a),
        "oracle": np.tile(curves.oracle, a),
        "gain": curves.gain.ravel(),
        "n_prompts": np.tile(curves.n_prompts, a).astype(np.int64),
    })


# ----------------------------------------------------------------------------- the estimator

def bon_curves(prompt_index, proxy, gold, n_max: int | None = None, *, names=None, mask=None,
               per_prompt: bool = False, dtype=np.float32) -> BonCurves:
    """Exact Best-of-n curves for n = 1..n_max, all prompts and all proxies (aggregations) in one pass.

    prompt_index: (n,) prompt key per row (ints or strings; e.g. ``responses["prompt_id"]``).
    proxy: (n,) scores, (n, A) for A aggregations, or a dict {name: (n,)} (e.g. ``aggregate_all(...)``).
    gold: (n,) gold scores; NaN/null rows are dropped from their pools (see the module docstring).
    n_max: largest n (default: the largest pool). A prompt contributes to n only if n <= its pool size.
    mask: optional (n,) bool, False drops the row too.
    per_prompt: also return ``per_prompt_gold`` (A, P, n_max) float32 (one float32 matmul per pool size).
    dtype: float type the sorted values are gathered in (float32: ~1e-6 relative agreement with float64; sums over
    prompts and the weights are float64 either way).
    """
    g = gold.to_numpy() if isinstance(gold, pl.Series) else np.asarray(gold)
    g = g.astype(np.float64, copy=False) if g.dtype != np.float32 else g
    if g.ndim != 1:
        raise EmbrmError(f"gold: expected (n,) scores, got shape {g.shape}")
    n_rows = g.shape[0]
    names, cols, _ = score_columns(proxy, names, n_rows)
    keep = _keep_rows(g, mask)
    pools = group_pools(prompt_index, keep, n_rows=n_rows, order="appearance")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise EmbrmError(f"dtype: use float32 or float64, got {dtype}")
    width, P = pools.width, len(pools.sizes)
    n_max = width if n_max is None else int(n_max)
    if not 1 <= n_max <= width:
        raise EmbrmError(f"n_max = {n_max}: must be between 1 and the largest scored pool ({width})")
    gm = pools.matrix(g.astype(dtype, copy=False), 0)
    if not np.all(np.isfinite(gm)):
        raise EmbrmError("gold: contains +-inf: scores must be finite (NaN marks unscored rows)")
    valid = pools.sorted_valid
    ss = pools.sizes[pools.porder].astype(np.float64)

    # Gold percentile of every candidate within its pool (mid-rank; ties averaged), computed once.
    gsort = gm if valid is None else np.where(valid, gm, np.inf)
    ranks = avg_ranks(gsort, valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(ss[:, None] > 1, 100.0 * (ranks - 1.0) / (ss[:, None] - 1.0), 50.0)
    # gold and percentile side by side, viewed as one wider element so one gather moves both
    packed = np.empty(gm.shape + (2,), dtype)
    packed[:, :, 0] = gm
    packed[:, :, 1] = pct
    if valid is not None:
        packed[~valid] = 0
    wide = packed.view(np.float64 if dtype == np.float32 else np.complex128)[:, :, 0]

    # Per-prompt references, then averaged over the prompts contributing at each n.
    pool_mean = packed[:, :, 0].sum(axis=1, dtype=np.float64) / ss
    pool_max = np.where(valid, gm, -np.inf).max(axis=1) if valid is not None else gm.max(axis=1)
    count = np.zeros(n_max)
    rand = np.zeros(n_max)
    orac = np.zeros(n_max)
    for lo, hi, size in pools.blocks:
        m = min(size, n_max)
        count[:m] += hi - lo
        rand[:m] += pool_mean[lo:hi].sum()
        orac[:m] += pool_max[lo:hi].sum(dtype=np.float64)

    A = len(cols)
    sums = np.zeros((A, 3, n_max))  # channels: gold, percentile, proxy
    ppg = np.full((A, P, n_max), np.nan, np.float32) if per_prompt else None
    prow = np.empty(P, np.int64)
    prow[pools.porder] = np.arange(P)  # matrix row of each prompt
    for j, (name, col) in enumerate(zip(names, cols)):
        c = np.asarray(col, dtype=dtype)
        pm = pools.matrix(c, np.inf)
        real = pm if valid is None else pm[valid]
        if not np.all(np.isfinite(real)):
            raise EmbrmError(f"proxy {name!r}: contains NaN/inf on scored rows: aggregate finite member scores")
        pm = pm + dtype.type(0)  # -0.0 -> +0.0 so equal scores compare equal (a copy when pm is a view)
        order = np.argsort(pm, axis=1)
        psorted = np.take_along_axis(pm, order, axis=1)
        vals = np.take_along_axis(wide, order, axis=1).view(dtype).reshape(P, width, 2)
        tie_average(psorted, vals, valid)  # padding sorts last (+inf), so `valid` also marks sorted real cells
        for lo, hi, size in pools.blocks:
            m = min(size, n_max)
            w = bon_weights(size, m)
            s = np.empty((3, size))
            s[0] = vals[lo:hi, :size, 0].sum(axis=0, dtype=np.float64)
            s[1] = vals[lo:hi, :size, 1].sum(axis=0, dtype=np.float64)
            s[2] = psorted[lo:hi, :size].sum(axis=0, dtype=np.float64)
            sums[j, :, :m] += s @ w
            if per_prompt:
                ppg[j, pools.porder[lo:hi], :m] = np.ascontiguousarray(vals[lo:hi, :size, 0]) @ w.astype(np.float32)
    with np.errstate(invalid="ignore"):
        curves = sums / count
    return BonCurves(
        aggregations=tuple(names), n=np.arange(1, n_max + 1), n_prompts=count.astype(np.int64),
        gold=curves[:, 0], proxy=curves[:, 2], percentile=curves[:, 1],
        random=rand / count, oracle=orac / count,
        prompts=pools.keys, pool_size=pools.sizes, per_prompt_gold=ppg,
    )


def expected_best_of_n(proxy, gold, n: int) -> float:
    """Expected gold of Best-of-n from ONE pool (scalar convenience over ``bon_curves``)."""
    p = np.asarray(proxy, dtype=np.float64)
    return float(bon_curves(np.zeros(p.shape[0], np.int64), p, gold, n_max=int(n), dtype=np.float64).gold[0, -1])
