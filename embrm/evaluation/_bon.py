"""Exact Best-of-n simulation over candidate pools: a chosen set of n (every n, or a log-spaced grid), every
prompt, every aggregation at once.

The estimator (Gao et al. 2022; Coste et al. 2023). A prompt has a pool of N scored candidates. Best-of-n draws a
uniformly random n-subset of the pool and keeps the candidate with the highest PROXY score. Sort the pool by proxy
ascending; the candidate at rank i (1-based) is the pick with probability

    w_N(i, n) = C(i - 1, n - 1) / C(N, n)          (zero for i < n; each column sums to 1)

so E[gold of the pick] = sum_i w_N(i, n) gold_(i), where gold_(i) is the gold score of the candidate at proxy rank
i (gold travels WITH its candidate: sorting the proxy alone and indexing the unsorted gold is the bug in Coste et
al.'s released code). The same weights applied to the proxy give the proxy curve, and applied to the candidate's
gold percentile within its pool give the expected percentile of the pick. The estimate is exact (no sampling) and
unbiased for a policy whose samples the pool represents.

Which n (``n_grid``). Every n = 1..n_max needs an (N, n_max) weight matrix, N^2 memory at the default n_max = N:
fine for the real pools (11-58 candidates) and for N up to ``ALL_N_LIMIT``, absurd at N = 60,000 (29 GB). Above
that the default is a log-spaced grid of about ``GRID_POINTS`` values of n (``log_grid``: 1, 2, 3, ... dense at
small n, always n_max); each grid value is exact, from the same weights restricted to its column, and the cost is
N x (grid size) per pool size. ``BonCurves.n`` is the grid actually used and every per-n array is indexed by grid
POSITION (``BonCurves.all_n`` says whether the grid is every n = 1..n_max, where position = n - 1).

Ties in proxy: the pick among tied best candidates is uniformly random (equivalently: ties are broken by a uniformly
random order). Under that rule the exact expectation equals the formula with each tied block's gold (and
percentile) replaced by the block's mean, which is what is computed: the result does not depend on the sort's
tie order.

Pools of unequal size: prompt p contributes to n only if n <= N_p; every per-n average is over the prompts that
contribute (``BonCurves.n_prompts[k]`` says how many at grid position k). With unequal pools the set of prompts
changes with n, so the random/oracle references are averaged over the same prompts at each n.

Unscored candidates: rows whose gold is NaN (polars null -> NaN via ``to_numpy()``) are dropped from the pool
automatically (they cannot be scored, and keeping them would change N); a ``mask`` drops further rows. The pool
size N_p is the number of remaining rows of the prompt. Proxy scores must be finite on the remaining rows.

Computation: prompts are ordered by pool size (``Pools.porder``) and processed in CHUNKS of consecutive rows whose
working set ((rows, width) float matrices of the chunk: gold, percentile, proxy, argsort indices, gathered values,
plus the weight matrices the chunk needs) stays under ``CHUNK_BYTES``, so peak memory does not grow with the number
of prompts. A chunk's (rows, width) matrix is a zero-copy slice when every pool has the same size and the table is
already grouped, otherwise one gather with padding (width = the chunk's largest pool). Each chunk is sorted along
rows with one argsort per aggregation, and the sorted gold/percentile/proxy columns are summed over the chunk's
prompts of each pool size; because the estimator is linear, the prompt-averaged curve is (sums over prompts) @ W,
accumulated across chunks: one small float64 matmul per (chunk, pool size), W = the grid's columns of W_N (built
from a log-factorial table, float64, cached within a byte budget). There is no Python loop over n, prompts or
candidates; the only loops are over chunks, aggregations and distinct pool sizes.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from embrm.core import EmbrmError
from embrm.evaluation._pools import Pools, avg_ranks, group_pools, score_columns, tie_average

__all__ = ["ALL_N_LIMIT", "GRID_POINTS", "BonCurves", "PromptBon", "bon_curves", "bon_weight_tensor", "bon_weights",
           "curves_frame", "expected_best_of_n", "fit_gao", "fit_gao_rl", "kl_bon", "kl_bon_exact", "log_grid", "per_prompt_bon", "pick_means"]

# Largest scored pool for which the default n_grid is every n = 1..n_max (above: ``log_grid``). All-n needs an
# (N, N) float64 weight matrix per distinct pool size (8 MB at 1,024, 128 MB at 4,096, 29 GB at 60,000) and gives
# per-n arrays of N columns. Measured at ~2M cells x 6 aggregations on this 2-core Xeon (bon_scale.json,
# sweeps.all_n_limit, repeated runs): all-n costs 0.9-1.5x the log grid's time from N = 256 to 4,096 (the sorts
# dominate; the matmuls are one per aggregation and pool size), so the limit is set by memory: 1,024 keeps every
# all-n weight matrix <= 8 MB (100 x 8,000 all-n: 0.5 GB of weights). The real pools (11-58 candidates) and the
# 10,000 x 500 benchmark stay all-n.
ALL_N_LIMIT = 1024
# Points of the default log grid before deduplication (the rounded small n collapse: 85 distinct n at 12,500).
GRID_POINTS = 100
# n_grid="all" is refused when one pool's weight matrix would exceed this many float64 cells (1.6 GB).
ALL_N_MAX_CELLS = 200_000_000
# Working-set budget of one chunk of prompts' (rows, width) matrices (``_cell_bytes`` per cell). Measured
# (bon_scale.json, sweeps.chunk_budget, and repeated runs): on 10,000 x 500 and 200 x 12,500, 32 MB is the fastest
# or within noise of it, 128-512 MB 10-40% slower (their arrays outgrow the caches and glibc's 32 MB mmap threshold,
# so every chunk page-faults fresh memory), 8 MB about equal; on 30 x 60,000 (8 prompts a chunk at 32 MB) the
# budgets differ by less than the run-to-run noise. Peak memory no longer grows with the number of prompts.
CHUNK_BYTES = 32 << 20
# Budget of the weight matrices one chunk holds (one per distinct pool size in it; a 60,000 x 85 grid is 41 MB).
CHUNK_WEIGHT_BYTES = 128 << 20
# Threads sorting aggregations in parallel within a chunk (numpy's argsort, gathers and sums release the GIL).
# Measured on this 2-core machine (bon_scale.json, sweeps.threads, and repeated runs): 2 threads 1.5-1.9x faster
# than 1 on 10,000 x 500 and 200 x 12,500; 1.0-2.0x (noisy) on 30 x 60,000. Results do not depend on it.
SORT_THREADS = min(2, os.cpu_count() or 1)
# Byte budget of the weight-matrix cache (least recently used evicted): e.g. three 60,000-candidate log grids,
# or thousands of the real pools' tiny matrices.
WEIGHT_CACHE_BYTES = 128 << 20


# ----------------------------------------------------------------------------- closed forms

def kl_bon(n):
    """KL(Best-of-n || base policy) = log n - (n - 1) / n (Gao et al.'s analytic bound; 0 at n = 1)."""
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1):
        raise EmbrmError("kl_bon: n must be >= 1")
    return np.log(n) - (n - 1.0) / n


def kl_bon_exact(sizes, n) -> np.ndarray:
    """Exact KL(Best-of-n || uniform reference) averaged over pools of ``sizes`` (P,) candidates, per n (G,).

    Best-of-n over a finite pool picks the candidate of proxy rank i (distinct proxy scores) with probability
    w_N(i, n) (``bon_weights``), so KL = sum_i w log(N w) exactly. The usual axis ``kl_bon`` = log n - (n - 1) / n
    is the formula for n i.i.d. draws from a continuous policy, and only an upper bound even there (Beirami et al.
    2024, arXiv:2401.01879); over a finite pool drawn without replacement it is not the KL at all: at n = N the
    pick is the argmax, KL = log N, above log N - (N - 1) / N. Ties in the proxy would lower the exact value (the
    pick spreads over a tied block). A pool contributes to n when n <= N_p,
    as in ``bon_curves``; n with no such pool is NaN."""
    sizes = np.asarray(sizes, np.int64).ravel()
    grid = np.atleast_1d(np.asarray(n, np.int64))
    if sizes.size == 0 or (sizes < 1).any() or (grid < 1).any():
        raise EmbrmError("kl_bon_exact: pool sizes and n must be >= 1")
    total, count = np.zeros(grid.size), np.zeros(grid.size)
    for size, c in zip(*np.unique(sizes, return_counts=True)):
        cols = grid[grid <= size]
        if cols.size == 0:
            continue
        w = _weights(int(size), np.unique(cols))
        safe = np.where(w > 0, w, 1.0)
        kl = (w * np.log(size * safe)).sum(axis=0)
        at = np.searchsorted(np.unique(cols), grid[grid <= size])
        total[grid <= size] += c * kl[at]
        count[grid <= size] += c
    with np.errstate(invalid="ignore"):
        return np.maximum(total / np.where(count > 0, count, np.nan), 0.0)


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


def fit_gao_rl(d, r) -> tuple[float, float]:
    """Least-squares fit of Gao et al.'s RL form R(d) = d (alpha - beta log d) to the gold GAIN r over pi_ref
    (R(0) = 0), d = sqrt(KL); points with d <= 0 or NaN are ignored. Returns (alpha, beta); the fitted curve peaks
    at d* = exp(alpha / beta - 1) when beta > 0."""
    d = np.asarray(d, np.float64).ravel()
    r = np.asarray(r, np.float64).ravel()
    if d.shape != r.shape:
        raise EmbrmError(f"fit_gao_rl: d has {d.size} points, r has {r.size}: pass one r per d")
    ok = np.isfinite(d) & np.isfinite(r) & (d > 0)
    a = np.stack([d[ok], -d[ok] * np.log(d[ok])], axis=1)
    if ok.sum() < 2 or np.linalg.matrix_rank(a) < 2:
        raise EmbrmError("fit_gao_rl: needs at least two distinct d > 0 (a wider beta sweep, more RL steps)")
    (alpha, beta), *_ = np.linalg.lstsq(a, r[ok], rcond=None)
    return float(alpha), float(beta)


def log_grid(n_max: int, points: int | None = None) -> np.ndarray:
    """About ``points`` (default ``GRID_POINTS``) geometrically spaced integers from 1 to ``n_max`` (int64, sorted,
    deduplicated; always 1 and n_max; the rounding makes small n dense: 1, 2, 3, ...). Every n when n_max is small
    (up to ~points / 3: n_max <= 33 at 100 points)."""
    n_max, points = int(n_max), int(GRID_POINTS if points is None else points)
    if n_max < 1 or points < 2:
        raise EmbrmError(f"log_grid: need n_max >= 1 and points >= 2, got n_max={n_max}, points={points}")
    return np.unique(np.round(np.geomspace(1, n_max, points)).astype(np.int64))


# ----------------------------------------------------------------------------- weights

_lock = threading.Lock()
_lf_table = np.zeros(1)  # log(k!) for k = 0..len-1, grown on demand (values do not depend on the length)


def _log_factorial(m: int) -> np.ndarray:
    """log(k!) for k = 0..m (a read-only prefix of one shared table)."""
    from scipy.special import gammaln

    global _lf_table
    with _lock:
        if _lf_table.shape[0] <= m:
            t = gammaln(np.arange(max(m + 1, 2 * _lf_table.shape[0]), dtype=np.float64) + 1.0)
            t.setflags(write=False)
            _lf_table = t
        return _lf_table[: m + 1]


class _WeightCache:
    """Least-recently-used cache of weight matrices keyed by (pool, float type, the n columns), bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            w = self.items.get(key)
            if w is not None:
                self.items.move_to_end(key)
            return w

    def put(self, key, w: np.ndarray) -> None:
        if w.nbytes > self.max_bytes:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = w
            self.bytes += w.nbytes
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= old.nbytes

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0


_weight_cache = _WeightCache(WEIGHT_CACHE_BYTES)


_TINY = np.finfo(np.float64).tiny


def _weights(pool: int, cols: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(pool, len(cols)) read-only matrix of the columns n in ``cols`` (validated by the caller), cached."""
    dtype = np.dtype(dtype)
    key = (pool, dtype.char, cols.tobytes())
    w = _weight_cache.get(key)
    if w is not None:
        return w
    if dtype != np.float64:
        w = _weights(pool, cols).astype(dtype)
        w[w < np.finfo(dtype).tiny] = 0.0  # no subnormals (see below)
    else:
        lf = _log_factorial(pool)
        g = cols.shape[0]
        w = np.zeros((pool, g))
        logc = lf[pool] - lf[cols] - lf[pool - cols]  # log C(N, n)
        i = np.arange(1, pool + 1)
        step = max(1, (1 << 21) // pool)  # column blocks: temporaries of ~2M cells whatever the pool
        for c0 in range(0, g, step):
            nb = cols[c0:c0 + step]
            r0 = int(nb.min()) - 1  # rows i < min(n) are zero in every column of the block
            ii = i[r0:, None]
            k = ii - nb  # i - n (< 0: structural zero)
            ok = k >= 0
            np.maximum(k, 0, out=k)
            # log C(i-1, n-1) - log C(N, n), term by term as lf[i-1] - lf[n-1] - lf[i-n] - log C(N, n). Where
            # i < n the exponent is <= 0 (lf[i-1] <= lf[n-1], log C >= 0), so exp cannot overflow; zeroed below.
            t = lf[ii - 1] - lf[nb - 1]
            t -= lf[k]
            t -= logc[c0:c0 + step]
            np.exp(t, out=t)
            # structural zeros, and subnormal results (< 2.2e-308, i.e. float64 underflow: they change no sum
            # by a representable amount, but make every matmul with them ~100x slower on x86)
            t[~ok | (t < _TINY)] = 0.0
            w[r0:, c0:c0 + step] = t
    w.setflags(write=False)
    _weight_cache.put(key, w)
    return w


def _check_grid(n, n_max: int, what: str) -> np.ndarray:
    """Sorted, deduplicated int64 grid with every value in 1..n_max, else a one-line EmbrmError."""
    try:
        a = None if isinstance(n, (str, bytes)) else np.asarray(n)
    except ValueError:  # ragged nesting
        a = None
    if a is None or a.ndim != 1:
        raise EmbrmError(f"{what}: expected None, 'all', 'log' or a sequence of integers n, got {n!r}")
    if a.size == 0:
        raise EmbrmError(f"{what}: empty: give at least one n")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise EmbrmError(f"{what}: expected integers n, got {a.dtype} values")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise EmbrmError(f"{what}: n = {a[bad][0].item()!r} is not an integer")
    bad = (a < 1) | (a > n_max)
    if bad.any():
        raise EmbrmError(f"{what}: n = {a[bad][0].item()!r} is out of range: each n must be in 1..{n_max} (n_max, at "
                         f"most the largest scored pool): drop it from the grid")
    return np.unique(a.astype(np.int64))


def bon_weights(pool: int, n_max: int | None = None, *, n=None) -> np.ndarray:
    """Float64 matrix ``W[i-1, k] = C(i-1, n_k-1) / C(pool, n_k)``: probability that the candidate at proxy rank i
    (ascending, 1-based) of a pool of ``pool`` is the Best-of-n_k pick, from a log-factorial table (each column sums
    to 1 up to the rounding of log-factorials: ~1e-12 at 2,000, ~2e-10 at 60,000; entries that underflow float64,
    < 2.2e-308, are 0).

    Without ``n``: the (pool, n_max) matrix of every n = 1..n_max (default pool). With ``n`` (sorted distinct ints,
    e.g. ``log_grid(pool)``): the (pool, len(n)) matrix of exactly those columns, memory pool x len(n); each n must be
    in 1..n_max (default pool). Read-only (cached, bounded by ``WEIGHT_CACHE_BYTES``)."""
    pool = int(pool)
    n_max = pool if n_max is None else int(n_max)
    if pool < 1 or not 1 <= n_max <= pool:
        raise EmbrmError(f"bon_weights: need 1 <= n_max <= pool, got pool={pool}, n_max={n_max}")
    if n is None:
        cols = np.arange(1, n_max + 1, dtype=np.int64)
    else:
        cols = np.asarray(n)
        _check_grid(cols, n_max, "bon_weights: n")  # validates
        cols = cols.astype(np.int64)
        if np.any(np.diff(cols) <= 0):
            raise EmbrmError("bon_weights: n must be sorted and distinct (e.g. np.unique(n))")
    return _weights(pool, cols)


# ----------------------------------------------------------------------------- input handling

def _keep_rows(gold: np.ndarray, mask) -> np.ndarray | None:
    keep = ~np.isnan(gold)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != gold.shape:
            raise EmbrmError(f"mask: expected a boolean array of {gold.shape[0]} rows, got {m.dtype} {m.shape}")
        keep &= m
    return None if keep.all() else keep


def _resolve_grid(n_grid, n_max: int, width: int) -> np.ndarray:
    if n_grid is None:
        return np.arange(1, n_max + 1, dtype=np.int64) if width <= ALL_N_LIMIT else log_grid(n_max)
    if isinstance(n_grid, str):
        if n_grid == "log":
            return log_grid(n_max)
        if n_grid == "all":
            cells = width * n_max
            if cells > ALL_N_MAX_CELLS:
                raise EmbrmError(
                    f"n_grid='all': the largest pool ({width}) x n_max ({n_max}) weights need "
                    f"{cells * 8 / 2**30:.1f} GB of float64 (limit {ALL_N_MAX_CELLS * 8 / 2**30:.1f} GB): use "
                    f"n_grid='log' (~{GRID_POINTS} values of n) or a list of n")
            return np.arange(1, n_max + 1, dtype=np.int64)
        raise EmbrmError(f"n_grid = {n_grid!r}: use None, 'all', 'log' or a sequence of integers n")
    return _check_grid(n_grid, n_max, "n_grid")


# ----------------------------------------------------------------------------- results

@dataclass
class BonCurves:
    """Best-of-n curves on the grid of n values ``n`` (int64, sorted; every n = 1..n_max when ``all_n``), one row
    per aggregation. Every per-n array is indexed by grid POSITION k (the value n[k]), not by n - 1.

    gold, proxy, percentile: (A, G) float64, averaged over the prompts whose pool has >= n candidates.
    percentile: expected gold percentile of the pick within its pool, 0..100 (mid-rank: (avg_rank - 1)/(N - 1);
    a random pick averages exactly 50; a pool of one is 50).
    random (pool mean), oracle (pool max), n_prompts: (G,) over the same prompts as each n.
    gain: (A, G) normalised gain (gold - random) / (oracle - random): 0 = random pick, 1 = oracle.
    per_prompt_gold: (A, P, G) float32 expected gold per prompt (NaN where n > N_p) if requested.
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
    def all_n(self) -> bool:
        """Whether the grid is every n = 1..n_max (then position k holds n = k + 1)."""
        return len(self.n) > 0 and int(self.n[0]) == 1 and int(self.n[-1]) == len(self.n)

    @property
    def n_max(self) -> int:
        return int(self.n[-1])

    def index(self, n) -> np.ndarray | int:
        """Grid position(s) of the value(s) n; EmbrmError naming an n that is not on the grid."""
        a = np.asarray(n, dtype=np.int64)
        k = np.searchsorted(self.n, a)
        k = np.minimum(k, len(self.n) - 1)
        miss = self.n[k] != a
        if np.any(miss):
            raise EmbrmError(f"n = {int(np.atleast_1d(a)[np.atleast_1d(miss)][0])} is not on this Best-of-n grid "
                             f"({self._grid_text()}): pass n_grid including it")
        return int(k) if k.ndim == 0 else k

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
        """Normalised gain at the last grid point (n = n_max) per aggregation."""
        return {a: float(g) for a, g in zip(self.aggregations, self.gain[:, -1])}

    def best_n(self) -> dict[str, int]:
        """The grid n maximising expected gold per aggregation (the over-optimisation peak when it is < n_max)."""
        return {a: int(self.n[np.nanargmax(g)]) for a, g in zip(self.aggregations, self.gold)}

    def frame(self) -> pl.DataFrame:
        return curves_frame(self)

    def __getitem__(self, agg: str) -> dict[str, np.ndarray]:
        if agg not in self.aggregations:
            raise EmbrmError(f"no aggregation {agg!r} in these curves: use one of {', '.join(self.aggregations)}")
        j = self.aggregations.index(agg)
        return {"n": self.n, "kl": self.kl, "gold": self.gold[j], "proxy": self.proxy[j],
                "percentile": self.percentile[j], "gain": self.gain[j]}

    def _grid_text(self) -> str:
        if self.all_n:
            return f"n = 1..{self.n_max} (all)"
        return f"{len(self.n)} values of n in {int(self.n[0])}..{self.n_max}"

    def __repr__(self) -> str:
        return (f"BonCurves({len(self.aggregations)} aggregations {list(self.aggregations)}, {self._grid_text()}, "
                f"{len(self.prompts)} prompts)")


def curves_frame(curves: BonCurves) -> pl.DataFrame:
    """Tidy table, one row per (aggregation, grid n): agg, n, kl, d, gold, proxy, percentile, random, oracle, gain,
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


# ----------------------------------------------------------------------------- chunking

def _cell_bytes(itemsize: int, workers: int, contiguous: bool) -> int:
    """Peak bytes per (row, candidate) cell of a chunk's working set, an upper bound of tracemalloc measurements
    (400 x 2,000 pools, with and without ties): gold|percentile packed (2b, b = itemsize) + per aggregation in
    flight (``workers``) the proxy, argsort int64, sorted proxy, gathered gold|percentile and tie averaging's
    temporaries (measured 43 B float32, 58 B float64 with ties everywhere: 16 + 8b) + int64 gather indices when the
    layout is not contiguous. (The percentile pass before the aggregations peaks lower, ~32 B.)"""
    return 2 * itemsize + 8 + workers * (16 + 8 * itemsize) + (0 if contiguous else 8)


def _plan_chunks(ss: np.ndarray, wbytes: np.ndarray, first: np.ndarray, cell: int, budget: int,
                 weight_budget: int) -> list[tuple[int, int]]:
    """Split rows 0..P-1 (ascending pool sizes ``ss``) into consecutive chunks [lo, hi) whose matrices,
    (hi - lo) * ss[hi-1] * cell bytes, stay <= ``budget`` and whose weights (``wbytes[r]``: bytes of the weight
    matrix of row r's pool size, counted once per distinct size; ``first[r]``: row r starts its size) stay <=
    ``weight_budget``; at least one row per chunk."""
    P = ss.shape[0]
    cw = np.concatenate([[0.0], np.cumsum(np.where(first, wbytes, 0.0))])
    out = []
    lo = 0
    while lo < P:
        span = min(P - lo, budget // (int(ss[lo]) * cell) + 1)  # matrices >= rows * ss[lo] * cell
        hi = np.arange(lo + 1, lo + span + 1)
        ok = (hi - lo) * ss[lo:lo + span].astype(np.float64) * cell <= budget
        ok &= wbytes[lo] + (cw[hi] - cw[lo + 1]) <= weight_budget
        take = max(1, int(np.argmin(ok)) if not ok.all() else span)  # both costs grow with hi: ok is a prefix
        out.append((lo, lo + take))
        lo += take
    return out


# ----------------------------------------------------------------------------- the estimator

def bon_curves(prompt_index, proxy, gold, n_max: int | None = None, *, names=None, mask=None,
               per_prompt: bool = False, dtype=np.float32, n_grid=None) -> BonCurves:
    """Exact Best-of-n curves for the n in ``n_grid`` up to n_max, all prompts and all proxies (aggregations).

    prompt_index: (n,) prompt key per row (ints or strings; e.g. ``responses["prompt_id"]``).
    proxy: (n,) scores, (n, A) for A aggregations, or a dict {name: (n,)} (e.g. ``aggregate_all(...)``).
    gold: (n,) gold scores; NaN/null rows are dropped from their pools (see the module docstring).
    n_max: largest n (default: the largest pool). A prompt contributes to n only if n <= its pool size.
    n_grid: which n. None (default): every n = 1..n_max when the largest scored pool is <= ``ALL_N_LIMIT``
    (1024), else ``log_grid(n_max)`` (~100 log-spaced n, always 1 and n_max); "all": every n (refused when one
    pool's weights would exceed ``ALL_N_MAX_CELLS``); "log": ``log_grid(n_max)``; or a sequence of integers in
    1..n_max (sorted and deduplicated). ``BonCurves.n`` is the grid; per-n arrays are indexed by grid position.
    mask: optional (n,) bool, False drops the row too.
    per_prompt: also return ``per_prompt_gold`` (A, P, G) float32 (one float32 matmul per pool size and chunk).
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
    grid = _resolve_grid(n_grid, n_max, width)
    G, A = grid.shape[0], len(cols)
    cols = [np.asarray(c) for c in cols]

    porder = pools.porder
    ss = pools.sizes[porder]  # pool size of each matrix row (ascending)
    kpos = np.searchsorted(grid, ss, side="right")  # grid positions each row contributes to (n <= N_p)
    first = np.ones(P, bool)
    first[1:] = ss[1:] != ss[:-1]
    wbytes = ss.astype(np.float64) * kpos * (8 + (4 if per_prompt else 0))
    workers = max(1, min(int(SORT_THREADS), A))
    cell = _cell_bytes(dtype.itemsize, workers, pools.contiguous)
    chunks = _plan_chunks(ss, wbytes, first, cell, int(CHUNK_BYTES), int(CHUNK_WEIGHT_BYTES))

    pool_mean = np.empty(P)
    pool_max = np.empty(P, dtype)
    sums = np.zeros((A, 3, G))  # channels: gold, percentile, proxy
    ppg = np.full((A, P, G), np.nan, np.float32) if per_prompt else None
    wide_t = np.float64 if dtype == np.float32 else np.complex128
    carry: dict[int, np.ndarray] = {}  # per aggregation: column sums of a pool size split across chunks
    pool_ex = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for lo, hi in chunks:
            r, m = hi - lo, int(ss[hi - 1])
            ssc = ss[lo:hi].astype(np.float64)
            if pools.contiguous:
                idx, valid, n_real = None, None, r * m

                def chunk_of(values, pad, _lo=lo, _hi=hi):
                    return values.reshape(pools.rows.shape)[_lo:_hi]
            else:
                idx = pools.rows[porder[lo:hi], :m]
                valid = None if ss[lo] == m else pools.valid[porder[lo:hi], :m]
                n_real = int(ss[lo:hi].sum())

                def chunk_of(values, pad, _idx=idx, _valid=valid):
                    v = values[_idx]
                    if _valid is not None:
                        v[~_valid] = pad
                    return v
            # the chunk's pool-size pieces: (row_lo, row_hi) within the chunk, size, grid positions, weights
            cut = np.flatnonzero(first[lo + 1:hi]) + 1
            bounds = np.concatenate([[0], cut, [r]])
            pieces = []
            for a, b in itertools.pairwise(bounds):
                size, k = int(ss[lo + a]), int(kpos[lo + a])
                if k:
                    # the pool size's last rows? (else it continues in the next chunk)
                    ends = lo + b == P or first[lo + b]
                    w = _weights(size, grid[:k]) if ends else None
                    w32 = _weights(size, grid[:k], np.float32) if per_prompt else None
                    pieces.append((int(a), int(b), size, k, bool(ends), w, w32))

            gm = chunk_of(g, 0).astype(dtype, copy=False)
            if not np.all(np.isfinite(gm)):
                raise EmbrmError("gold: contains +-inf: scores must be finite (NaN marks unscored rows)")
            # Gold percentile of every candidate within its pool (mid-rank; ties averaged).
            gsort = gm if valid is None else np.where(valid, gm, np.inf)
            pct = avg_ranks(gsort, valid)
            del gsort
            with np.errstate(invalid="ignore", divide="ignore"):
                pct -= 1.0
                pct *= 100.0
                pct /= ssc[:, None] - 1.0
            pct[ssc <= 1] = 50.0
            # gold and percentile side by side, viewed as one wider element so one gather moves both
            packed = np.empty((r, m, 2), dtype)
            packed[:, :, 0] = gm
            packed[:, :, 1] = pct
            del pct
            if valid is not None:
                packed[~valid] = 0
            wide = packed.view(wide_t)[:, :, 0]
            pool_mean[lo:hi] = packed[:, :, 0].sum(axis=1, dtype=np.float64) / ssc
            pool_max[lo:hi] = np.where(valid, gm, -np.inf).max(axis=1) if valid is not None else gm.max(axis=1)
            del gm

            def one(j, name, col, chunk_of=chunk_of, lo=lo, r=r, m=m, valid=valid, n_real=n_real, wide=wide,
                    pieces=pieces):
                pm = chunk_of(col, np.inf)
                if pm.dtype != dtype or pools.contiguous:  # a view of the caller's scores: never write into it
                    pm = pm.astype(dtype)
                if np.count_nonzero(np.isfinite(pm)) != n_real:
                    raise EmbrmError(f"proxy {name!r}: contains NaN/inf on scored rows: aggregate finite member scores")
                pm += dtype.type(0)  # -0.0 -> +0.0 so equal scores compare equal
                order = np.argsort(pm, axis=1)
                psorted = np.take_along_axis(pm, order, axis=1)
                del pm
                vals = np.take_along_axis(wide, order, axis=1).view(dtype).reshape(r, m, 2)
                del order
                tie_average(psorted, vals, valid)  # padding sorts last (+inf), so `valid` also marks sorted real cells
                done = []  # (grid positions, column sums, weights) of the pool sizes ending in this chunk
                for a, b, size, k, ends, w, w32 in pieces:
                    s = np.empty((3, size))
                    s[0] = vals[a:b, :size, 0].sum(axis=0, dtype=np.float64)
                    s[1] = vals[a:b, :size, 1].sum(axis=0, dtype=np.float64)
                    s[2] = psorted[a:b, :size].sum(axis=0, dtype=np.float64)
                    if j in carry:  # the same pool size's column sums from the previous chunk(s)
                        s += carry.pop(j)
                    if ends:
                        done.append((k, s, w))
                    else:
                        carry[j] = s
                    if per_prompt:
                        ppg[j, porder[lo + a:lo + b], :k] = np.ascontiguousarray(vals[a:b, :size, 0]) @ w32
                return done

            if pool_ex is None:
                results = [one(j, name, col) for j, (name, col) in enumerate(zip(names, cols))]
            else:  # numpy's sorts, gathers and sums release the GIL: aggregations in parallel
                results = list(pool_ex.map(one, range(A), names, cols))
            # one small matmul per (aggregation, pool size), as if unchunked; here, not in the sorting threads
            # (two threads calling OpenBLAS at once were slower than one)
            for j, done in enumerate(results):
                for k, s, w in done:
                    sums[j, :, :k] += s @ w
    finally:
        if pool_ex is not None:
            pool_ex.shutdown(cancel_futures=True)

    # Per-prompt references, averaged over the prompts contributing at each grid n.
    count = np.zeros(G)
    rand = np.zeros(G)
    orac = np.zeros(G)
    for lo, hi, size in pools.blocks:
        k = int(np.searchsorted(grid, size, side="right"))
        count[:k] += hi - lo
        rand[:k] += pool_mean[lo:hi].sum()
        orac[:k] += pool_max[lo:hi].sum(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        curves = sums / count
    return BonCurves(
        aggregations=tuple(names), n=grid, n_prompts=count.astype(np.int64),
        gold=curves[:, 0], proxy=curves[:, 2], percentile=curves[:, 1],
        random=rand / count, oracle=orac / count,
        prompts=pools.keys, pool_size=pools.sizes, per_prompt_gold=ppg,
    )


def expected_best_of_n(proxy, gold, n: int) -> float:
    """Expected gold of Best-of-n from ONE pool (scalar convenience over ``bon_curves`` on the one-point grid
    [n])."""
    p = np.asarray(proxy, dtype=np.float64)
    c = bon_curves(np.zeros(p.shape[0], np.int64), p, gold, n_max=int(n), dtype=np.float64, n_grid=[int(n)])
    return float(c.gold[0, 0])


# ----------------------------------------------------------------------------- variants the methods build on

@dataclass
class PromptBon:
    """Best-of-n at one n per prompt: names (A,) of the proxies; prompts (P,) str keys in the estimator's prompt
    order; gold (A, P) float64 expected gold of each proxy's pick; random (P,) the pool's mean gold and oracle (P,)
    its best; pool_size (P,). Per-prompt values pass through float32 (as ``BonCurves.per_prompt_gold``)."""

    names: tuple[str, ...]
    prompts: np.ndarray
    gold: np.ndarray
    random: np.ndarray
    oracle: np.ndarray
    pool_size: np.ndarray


def per_prompt_bon(prompt_index, proxy, gold, n: int | None = None) -> PromptBon:
    """Exact expected gold of each proxy's Best-of-n pick per prompt, at n = min(n, the prompt's scored pool)
    (None: the whole pool, i.e. the top-scored response, ties averaged); ``bon_curves`` on the grid of the n used.
    proxy: as ``bon_curves`` ((n,), (n, A) or {name: (n,)}); gold: (n,), NaN = unscored (dropped)."""
    if n is not None and int(n) < 1:
        raise EmbrmError(f"n (Best-of-n size) must be >= 1, got {n}")
    g = np.asarray(gold, dtype=np.float64)
    names, cols, _ = score_columns(proxy, None, g.shape[0])
    pidx = np.asarray(prompt_index).astype(str)
    sizes = group_pools(pidx, np.isfinite(g)).sizes  # the scored pool sizes
    grid = np.unique(np.r_[1, sizes, np.minimum(int(n), sizes) if n is not None else []]).astype(np.int64)
    # gold as its own last proxy: its pick at n = 1 is the pool mean, at n = N the pool's best
    columns = {j: c for j, c in enumerate(cols)} | {len(cols): g}
    cur = bon_curves(pidx, columns, g, per_prompt=True, dtype=np.float64, n_grid=grid)
    ppg = cur.per_prompt_gold.astype(np.float64)  # (A + 1, P, len(grid))
    sizes, every = np.asarray(cur.pool_size), np.arange(len(cur.pool_size))
    at_n = ppg[:, every, cur.index(np.minimum(sizes if n is None else int(n), sizes))]
    return PromptBon(tuple(names), np.asarray(cur.prompts).astype(str), at_n[:-1], ppg[-1, :, 0],
                     ppg[-1, every, cur.index(sizes)], sizes)


def bon_weight_tensor(sizes, ns) -> tuple[np.ndarray, np.ndarray]:
    """W (P, N_max, G): probability that the candidate at ascending proxy rank i (0-based) of prompt p's pool is
    the Best-of-n pick, for each n in ``ns``; and contributing (P, G): n <= pool size (W is 0 elsewhere)."""
    sizes = np.asarray(sizes, np.int64)
    ns = np.asarray(ns, np.int64)
    if ns.min() < 1:
        raise EmbrmError(f"n must be >= 1, got {int(ns.min())}")
    W = np.zeros((sizes.size, int(sizes.max()), ns.size))
    contrib = ns[None, :] <= sizes[:, None]
    for size in np.unique(sizes):
        ok = ns <= size
        if ok.any():
            W[np.ix_(sizes == size, np.arange(size), np.flatnonzero(ok))] = bon_weights(int(size), n=ns[ok])[None]
    return W, contrib


def pick_means(scores, values, pools: Pools, ns, *, diagonal: bool = False, weights=None) -> np.ndarray:
    """Exact expected ``values`` (any channels, not only gold) at the Best-of-n pick of any selection scores,
    averaged over the prompts whose pool has >= n candidates: the estimator of ``bon_curves`` for scores that
    change with n (a constrained composite's Lagrangian) and several value channels at once.

    scores: (A, P, N_max) selection scores over ``pools`` (padding ignored); values: (P, N_max, C) per-candidate
    values. Returns (A, G, C) for every score and every n in ``ns``; with ``diagonal`` (A == G: score a is meant for
    n_a) returns (G, C), computing only the matching pairs. ``weights``: ``bon_weight_tensor(pools.sizes, ns)`` when
    the caller reuses it (dual ascent).
    """
    W, contrib = bon_weight_tensor(pools.sizes, ns) if weights is None else weights
    P, N, C = values.shape
    s = np.where(pools.valid[None], scores, np.inf)
    order = np.argsort(s, axis=-1)              # tie order is irrelevant: tied blocks are averaged below
    srt = np.take_along_axis(s, order, axis=-1)
    vals = np.take(values.reshape(P * N, C), order + (np.arange(P) * N)[None, :, None], axis=0)
    vals = tie_average(srt, vals)
    count = contrib.sum(axis=0)
    if diagonal:
        if s.shape[0] != len(ns):
            raise EmbrmError(f"diagonal pick_means needs one score per n: {s.shape[0]} scores, {len(ns)} n values")
        per = np.einsum("gpic,pig->gpc", vals, W)
        return np.einsum("gpc,pg->gc", per, contrib) / count[:, None]
    per = np.einsum("apic,pig->apgc", vals, W)
    return per.sum(axis=1) / count[None, :, None]
