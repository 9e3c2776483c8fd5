"""Rows grouped into prompt pools, shared by the Best-of-n estimator (embrm.evaluation._bon), the per-prompt metrics
(embrm.evaluation._metrics) and the pool-based methods (embrm.methods._composite, embrm.methods._policy).

A pool is the set of scored rows of one prompt. ``group_pools`` lays them out as a padded (P, N_max) matrix of row
indices (``Pools.rows``, padding cells: row 0, ``valid`` False); rows keep their input order within a pool.
``Pools.gather`` reads per-row values in that prompt order; ``Pools.matrix`` reads them with prompts sorted by pool
size (``porder``), so that prompts of one pool size form one contiguous block (``blocks``) for per-size matmuls.

Also here: run-mean averaging over ties (``tie_average``) and per-row average ranks (``avg_ranks``), used wherever a
pool is sorted by a score, and ``score_columns``, which reads the score argument of the pool-level estimators.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from embrm.core import EmbrmError

__all__ = ["Pools", "group_pools", "tie_average", "avg_ranks", "score_columns"]


@dataclass
class Pools:
    """Rows grouped into prompt pools: ``rows[p, j]`` is the j-th row of prompt ``keys[p]`` (padding: row 0,
    ``valid`` False). ``contiguous``: the rows are exactly ``arange(P * N).reshape(P, N)`` (every pool full, the
    table grouped, no mask), so ``matrix`` can reshape instead of gathering."""

    keys: np.ndarray
    rows: np.ndarray
    valid: np.ndarray
    sizes: np.ndarray
    contiguous: bool = False

    @property
    def width(self) -> int:
        """N_max, the largest pool."""
        return self.rows.shape[1]

    def gather(self, values, fill: float = 0.0) -> np.ndarray:
        """(P, N_max, ...) float64 matrix of per-row ``values`` ((n,) or (n, C)), prompts in ``keys`` order;
        padding cells hold ``fill``."""
        v = np.asarray(values, dtype=np.float64)[self.rows]
        v[~self.valid] = fill
        return v

    def locate(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(pool, position) of every input row; -1 for rows outside the pools."""
        pool = np.full(n_rows, -1, np.int64)
        pos = np.full(n_rows, -1, np.int64)
        p, j = np.nonzero(self.valid)
        pool[self.rows[p, j]] = p
        pos[self.rows[p, j]] = j
        return pool, pos

    # --- the size-sorted view (embrm.evaluation._bon): matrix row r is prompt porder[r]

    @cached_property
    def porder(self) -> np.ndarray:
        """(P,) prompt indices sorted by pool size (stable)."""
        return np.argsort(self.sizes, kind="stable")

    @cached_property
    def blocks(self) -> list[tuple[int, int, int]]:
        """(row_lo, row_hi, N) of each distinct pool size in the size-sorted view."""
        ss = self.sizes[self.porder]
        cut = np.concatenate([[0], np.flatnonzero(ss[1:] != ss[:-1]) + 1, [len(ss)]])
        return [(int(cut[j]), int(cut[j + 1]), int(ss[cut[j]])) for j in range(len(cut) - 1)]

    @cached_property
    def sorted_valid(self) -> np.ndarray | None:
        """``valid`` in the size-sorted view; None when every pool is full (no padding)."""
        return None if len(self.blocks) == 1 else self.valid[self.porder]

    @cached_property
    def _sorted_rows(self) -> np.ndarray:
        return self.rows[self.porder]

    def matrix(self, values: np.ndarray, pad) -> np.ndarray:
        """(P, N_max) matrix of per-row ``values`` (dtype kept), prompts in ``porder``; padding cells hold ``pad``.
        A zero-copy view when ``contiguous``."""
        if self.contiguous:
            return values.reshape(self.rows.shape)
        m = values[self._sorted_rows]
        if self.sorted_valid is not None:
            m[~self.sorted_valid] = pad
        return m


def group_pools(prompt_index, mask=None, *, n_rows: int | None = None, order: str = "sorted") -> Pools:
    """Group rows by prompt key into a padded layout. ``mask`` (n,) bool keeps only the True rows; ``n_rows``
    checks the key count.

    order: "sorted" (keys sorted) or "appearance" (keys in order of first appearance when the kept rows are grouped,
    i.e. no key occurs in two runs; otherwise sorted): bon_curves' prompt order, which also allows the zero-copy
    ``contiguous`` layout."""
    a = prompt_index.to_numpy() if isinstance(prompt_index, pl.Series) else np.asarray(prompt_index)
    if a.ndim != 1 or (n_rows is not None and a.shape[0] != n_rows):
        want = "" if n_rows is None else f" ({n_rows})"
        raise EmbrmError(f"prompt_index: expected one prompt key per row{want}, got shape {a.shape}")
    if order not in ("sorted", "appearance"):
        raise EmbrmError(f"order: use 'sorted' or 'appearance', got {order!r}")
    rows = None
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if not m.all():
            rows = np.flatnonzero(m)
            a = a[rows]
    if a.shape[0] == 0:
        raise EmbrmError("no rows left to group into pools (every row masked out, NaN gold or an empty table): "
                         "check the prompt split and the gold column")
    keys = None
    if order == "appearance":
        # Runs of equal keys; the rows are "grouped" when no key appears in two runs (the usual case).
        starts = np.concatenate([[0], np.flatnonzero(a[1:] != a[:-1]) + 1])
        run_keys = a[starts]
        if np.unique(run_keys).shape[0] == run_keys.shape[0]:
            keys, sizes = run_keys, np.diff(np.append(starts, a.shape[0]))
            code, perm = np.repeat(np.arange(len(keys)), sizes), None
    if keys is None:
        keys, code = np.unique(a, return_inverse=True)
        sizes = np.bincount(code)
        perm = np.argsort(code, kind="stable")
    width = int(sizes.max())
    if perm is None and rows is None and (sizes == width).all():
        layout = np.arange(a.shape[0]).reshape(len(keys), width)
        return Pools(keys, layout, np.ones(layout.shape, bool), sizes, contiguous=True)
    src = np.arange(a.shape[0]) if perm is None else perm
    pos = np.arange(a.shape[0]) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    layout = np.zeros((keys.size, width), np.int64)
    valid = np.zeros(layout.shape, bool)
    layout[code[src], pos] = src if rows is None else rows[src]
    valid[code[src], pos] = True
    return Pools(keys, layout, valid, sizes)


def tie_average(sorted_keys: np.ndarray, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """In place, and returned: within each row of ``sorted_keys`` (..., M), replace ``values`` (..., M, C) over runs
    of equal keys by the run mean (the exact Best-of-n expectation under uniformly random tie-breaking; average
    ranks). ``valid`` (..., M) marks the sorted real cells (padding sorts last). ``values`` must be C-contiguous
    (it is written through a reshaped view).

    Two passes give bit-identical numbers (each run's cells summed left to right by bincount): one rewrites the
    rows that hold a tie, the other only the tied cells. Long pools have a few ties per row (float32 scores of
    12,500 candidates: 1-3 tied pairs in most rows), where rewriting whole rows was ~30 % of Best-of-n's time;
    with ties everywhere (discrete scores: more than one tied pair per 8 cells) the whole-row pass is faster."""
    m, c = sorted_keys.shape[-1], values.shape[-1]
    if not values.flags.c_contiguous:
        raise ValueError("tie_average: values must be C-contiguous")
    keys = sorted_keys.reshape(-1, m)
    eq = keys[:, 1:] == keys[:, :-1]
    if valid is not None:
        eq &= valid.reshape(-1, m)[:, 1:]
    pairs = np.count_nonzero(eq)
    if pairs == 0:
        return values
    flat = values.reshape(-1, m, c)
    if pairs * 8 > eq.shape[0] * m:
        _tie_average_rows(eq, flat)
    else:
        _tie_average_cells(eq, flat)
    return values


def _tie_average_rows(eq: np.ndarray, flat: np.ndarray) -> None:
    """Rewrite every row of flat (r, m, C) that holds a tie (eq (r, m - 1): cell j equals cell j + 1)."""
    m, c = flat.shape[1:]
    rows = np.flatnonzero(eq.any(axis=1))
    start = np.ones((rows.size, m), bool)
    start[:, 1:] = ~eq[rows]
    ids = np.cumsum(start.ravel()) - 1
    count = np.bincount(ids)
    v = flat[rows]
    for j in range(c):
        mean = np.bincount(ids, weights=v[:, :, j].ravel()) / count
        v[:, :, j] = mean[ids].reshape(v.shape[:2])
    flat[rows] = v


def _tie_average_cells(eq: np.ndarray, flat: np.ndarray) -> None:
    """Rewrite only the tied cells of flat (r, m, C)."""
    r, m, c = flat.shape
    row, col = np.nonzero(eq)  # tied pairs (col, col + 1), row-major
    left = row * m + col
    new = np.ones(left.shape[0], bool)
    new[1:] = left[1:] != left[:-1] + 1  # a pair continues the previous run iff it is the next cell
    run = np.cumsum(new) - 1
    lens = np.bincount(run) + 1  # cells per run
    cell_run = np.repeat(np.arange(lens.shape[0]), lens)
    cells = np.repeat(left[new], lens) + (np.arange(cell_run.shape[0]) - np.repeat(np.cumsum(lens) - lens, lens))
    cells_flat = flat.reshape(r * m, c)
    for j in range(c):
        mean = np.bincount(cell_run, weights=cells_flat[cells, j]) / lens
        cells_flat[cells, j] = mean[cell_run]


def avg_ranks(matrix: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(P, M) float64 average ranks (1-based, ties averaged) of each row's entries; padding (``~valid``, which is
    left-aligned like the real entries) must sort last."""
    o = np.argsort(matrix, axis=1)
    s = np.take_along_axis(matrix, o, axis=1)
    pos = np.broadcast_to(np.arange(1, matrix.shape[1] + 1, dtype=np.float64), matrix.shape).copy()[:, :, None]
    tie_average(s, pos, valid)
    ranks = np.empty(matrix.shape)
    np.put_along_axis(ranks, o, pos[:, :, 0], axis=1)
    return ranks


def score_columns(proxy, names, n_rows: int) -> tuple[list[str], list[np.ndarray], bool]:
    """Names and (n,) columns of a score argument ((n,), (n, A), a dict {name: (n,)} or a DataFrame), and whether
    it was a single 1-D score."""
    single = False
    if isinstance(proxy, dict):
        cols = [np.asarray(v) for v in proxy.values()]
        names = list(proxy.keys()) if names is None else list(names)
    elif isinstance(proxy, pl.DataFrame):
        cols = [proxy[c].to_numpy() for c in proxy.columns]
        names = list(proxy.columns) if names is None else list(names)
    else:
        p = proxy.to_numpy() if isinstance(proxy, pl.Series) else np.asarray(proxy)
        if p.ndim == 1:
            single = True
            cols = [p]
            names = ["proxy"] if names is None else ([names] if isinstance(names, str) else list(names))
        elif p.ndim == 2:
            cols = [p[:, j] for j in range(p.shape[1])]
            names = [f"agg{j}" for j in range(p.shape[1])] if names is None else list(names)
        else:
            raise EmbrmError(f"proxy: expected (n,) or (n, A) scores, got shape {p.shape}")
    if len(names) != len(cols):
        raise EmbrmError(f"names: {len(names)} names for {len(cols)} proxy columns")
    for name, c in zip(names, cols):
        if c.ndim != 1 or c.shape[0] != n_rows:
            raise EmbrmError(f"proxy {name!r}: expected {n_rows} scores (one per row), got shape {c.shape}")
    return [str(x) for x in names], cols, single
