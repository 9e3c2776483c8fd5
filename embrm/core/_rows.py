"""Embedding rows kept where they are: arrays on disk read as float32 one block at a time.

A dataset made of embedding arrays (Sun et al.'s release: 11.5 GB a setup in float32) cannot become one float32
matrix in memory. Its vectors are a `Rows`: the files' arrays (each (n_i, d), float16 / bfloat16 / float32 /
float64, memory-mapped) seen as one (n, d) matrix, optionally through a row index (a filtered dataset). Nothing
reads all of it at once:

    take_rows(X, rows)        the rows a fit uses, as float32 (pairs' responses only)
    map_rows(fn, X)           fn over float32 blocks of ~64 MB, results concatenated (scoring, checks)

Both accept a plain ndarray too, so text datasets and arrays walk the same code. A contiguous block of a
memory-mapped file is read with one read call into a fresh buffer rather than through the mapping, so scanning a
file leaves the page cache, not the process, holding it (a 1,000,000-row scoring pass stays at one block of memory).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator

import numpy as np

from embrm.core._errors import EmbrmError
from embrm.core._progress import Progress

__all__ = ["BLOCK_BYTES", "Rows", "mapped", "map_rows", "row_blocks", "take_rows"]

BLOCK_BYTES = 64 << 20  # float32 bytes per block: big enough for full-speed matmuls, small beside any machine's memory


class _Part:
    """One (n, d) array and, when it is a whole memory-mapped file region, where its bytes are (for plain reads)."""

    def __init__(self, array: np.ndarray):
        if array.ndim != 2:
            raise ValueError(f"a part of Rows must be 2-D, got shape {array.shape}")
        self.array = array
        self.file = None
        if isinstance(array, np.memmap) and array.filename and array.flags.c_contiguous \
                and getattr(array, "_embrm_offset", None) is not None:
            self.file = (array.filename, array._embrm_offset)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start:stop as float32."""
        if self.file is None:
            return np.asarray(self.array[start:stop], dtype=np.float32)
        name, offset = self.file
        row = self.array.shape[1] * self.array.dtype.itemsize
        with open(name, "rb") as f:
            f.seek(offset + start * row)
            raw = np.fromfile(f, dtype=self.array.dtype, count=(stop - start) * self.array.shape[1])
        return raw.reshape(stop - start, self.array.shape[1]).astype(np.float32, copy=False)


def mapped(array: np.ndarray, offset: int) -> np.ndarray:
    """Mark a memory-mapped array (as opened, whole) with the byte offset of its data in its file: its contiguous
    blocks are then read with plain reads (see the module doc)."""
    if isinstance(array, np.memmap):
        array._embrm_offset = int(offset)
    return array


class Rows:
    """Several (n_i, d) arrays of any float dtype seen as one (n, d) float32 matrix, without loading them.

    index: the rows of the concatenation this view holds (None: all, in order). digest: a fingerprint of the data
    (e.g. the files' SHA-256) that embedding results and saved models record. checked: every value is known to be
    finite (the files were checked when opened)."""

    ndim = 2
    dtype = np.dtype(np.float32)  # what reads return

    def __init__(self, parts: list[np.ndarray], index: np.ndarray | None = None, *, digest: str | None = None,
                 checked: bool = False):
        self._parts = [p if isinstance(p, _Part) else _Part(p) for p in parts]
        dims = {p.array.shape[1] for p in self._parts}
        if len(dims) != 1:
            raise EmbrmError(f"embedding arrays of different widths {sorted(dims)} cannot form one dataset: use "
                             f"arrays from one embedder")
        self._offsets = np.cumsum([0] + [len(p.array) for p in self._parts])
        self.index = None if index is None else np.asarray(index, np.int64)
        self.digest, self.checked = digest, checked

    @property
    def shape(self) -> tuple[int, int]:
        n = int(self._offsets[-1]) if self.index is None else len(self.index)
        return n, int(self._parts[0].array.shape[1])

    @property
    def storage_dtypes(self) -> list[str]:
        return [str(p.array.dtype) for p in self._parts]

    @property
    def nbytes(self) -> int:
        """Bytes as float32 (what a materialised copy would take)."""
        return self.shape[0] * self.shape[1] * 4

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Rows({self.shape[0]:,} x {self.shape[1]}, stored as {'/'.join(sorted(set(self.storage_dtypes)))})"

    def subset(self, rows) -> Rows:
        """The view of some rows (an index or a boolean mask over this view's rows)."""
        rows = self._positions(np.asarray(rows))
        index = rows if self.index is None else self.index[rows]
        return Rows(self._parts, index, digest=None if self.digest is None else f"{self.digest}/{_digest(index)}",
                    checked=self.checked)

    def __getitem__(self, key) -> np.ndarray:
        """float32 rows: a slice, an index array or a boolean mask (a gather touches only those rows)."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and self.index is None:
                return self._read(start, stop)
            if step == 1 and stop > start and _consecutive(self.index[start:stop]):  # e.g. one split of two
                return self._read(int(self.index[start]), int(self.index[stop - 1]) + 1)
            key = np.arange(start, stop, step)
        key = np.asarray(key)
        if key.ndim == 0:
            return self[key.reshape(1)][0]
        key = self._positions(key)
        return self._gather(key if self.index is None else self.index[key])

    def _positions(self, key: np.ndarray) -> np.ndarray:
        """An index array or boolean mask as non-negative int64 positions, numpy's rules (negative counts from the
        end; out of range is an IndexError)."""
        n = len(self)
        if key.dtype == bool:
            if key.shape != (n,):
                raise IndexError(f"boolean index of shape {key.shape} for {n} rows")
            return np.flatnonzero(key)
        key = key.astype(np.int64)
        if key.size and (key.min() < -n or key.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(key < 0, key + n, key)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Contiguous rows of the concatenation (no index)."""
        out = []
        for p, lo in zip(self._parts, self._offsets[:-1]):
            a, b = max(start - lo, 0), min(stop - lo, len(p.array))
            if a < b:
                out.append(p.read(int(a), int(b)))
        return out[0] if len(out) == 1 else np.concatenate(out) if out else np.zeros((0, self.shape[1]), np.float32)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), np.float32)
        part = np.searchsorted(self._offsets, rows, side="right") - 1
        for j, p in enumerate(self._parts):
            mine = np.flatnonzero(part == j)
            if len(mine):
                local = rows[mine] - self._offsets[j]
                order = np.argsort(local, kind="stable")  # in file order: sequential reads of a memory map
                out[mine[order]] = p.array[local[order]]
                _release(p.array)
        return out

    def blocks(self, rows_per_block: int | None = None) -> Iterator[np.ndarray]:
        """float32 blocks of consecutive rows of this view, in order."""
        step = rows_per_block or block_rows(self.shape[1])
        for s in range(0, len(self), step):
            yield self[s:s + step]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole matrix in memory (the small-data paths): refused when it would not fit."""
        limit = _memory_bytes() // 2
        if self.nbytes > limit:
            raise EmbrmError(f"{self!r} needs {self.nbytes / 2**30:.1f} GiB as one float32 matrix, more than half of "
                             f"this machine's memory: this step does not stream yet; use fit, score, bon-sim or a "
                             f"study (they read arrays in blocks), or keep fewer prompts (prompts = N)")
        X = self[0:len(self)]
        return X if dtype is None else X.astype(dtype, copy=False)


def _release(array: np.ndarray) -> None:
    """Drop a memory map's pages from this process (they stay in the page cache): a gather's rows are copied out,
    so the mapped pages it touched need not count as the process's memory."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError, AttributeError):  # a platform without it: the pages are merely kept
            pass


def _consecutive(index: np.ndarray) -> bool:
    return bool(index[-1] - index[0] == len(index) - 1 and (len(index) < 2 or np.all(np.diff(index) == 1)))


def _digest(index: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(index).tobytes(), digest_size=8).hexdigest()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def block_rows(dim: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(int(dim), 1)))


def row_blocks(X, rows_per_block: int | None = None) -> Iterator[np.ndarray]:
    """float32 blocks of X's rows in order: a Rows streams from disk, an ndarray yields views (no copy when it is
    already float32)."""
    if isinstance(X, Rows):
        yield from X.blocks(rows_per_block)
        return
    X = np.asarray(X)
    step = rows_per_block or block_rows(X.shape[1] if X.ndim == 2 else 1)
    for s in range(0, len(X), step):
        yield np.asarray(X[s:s + step], dtype=np.float32)


def take_rows(X, rows) -> np.ndarray:
    """X[rows] as float32: a Rows gathers only these rows from disk."""
    return X[np.asarray(rows)] if isinstance(X, Rows) else np.asarray(np.asarray(X)[rows], dtype=np.float32)


def map_rows(fn: Callable[[np.ndarray], np.ndarray], X, *, label: str = "score", progress: bool | None = False
             ) -> np.ndarray:
    """fn applied to float32 blocks of X, results concatenated along axis 0. An in-memory X is one call (fn sees
    the array itself); a Rows is streamed a block at a time, with progress per block when asked."""
    if not isinstance(X, Rows):
        return fn(X)
    step = block_rows(X.shape[1])
    n_blocks = -(-len(X) // step)
    if n_blocks <= 1:
        return fn(X[0:len(X)])
    out = []
    with Progress(len(X), label, "rows", enabled=progress) as bar:
        for block in X.blocks(step):
            out.append(fn(block))
            bar.advance(len(block))
    return np.concatenate(out)
