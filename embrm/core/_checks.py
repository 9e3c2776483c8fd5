"""Input checks every head (and the code that feeds heads) shares: one-line errors naming what is wrong."""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embrm.core._errors import EmbrmError


def check_embeddings(X, name: str = "embeddings") -> np.ndarray:
    """X as a C-contiguous float32 (n, d) array; NaN/inf rows -> EmbrmError naming the first bad row."""
    try:
        X = np.asarray(X)
    except Exception as e:  # ragged lists etc.
        raise EmbrmError(f"{name} must be a 2-D numeric array ({e})") from None
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise EmbrmError(f"{name} must be a non-empty 2-D array (n_responses, dim); got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise EmbrmError(f"{name} must hold real numbers, not {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        kind = "NaN" if np.isnan(X[bad[0]]).any() else "inf"
        raise EmbrmError(f"{name} contain {kind} in {len(bad)} rows (first: row {int(bad[0])}): "
                         f"re-embed or drop them")
    return X


def check_pairs(pairs, n_rows: int, name: str = "pairs") -> np.ndarray:
    """pairs as an int64 (m, 2) array of row indices in [0, n_rows); column 0 = the preferred response."""
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise EmbrmError(f"{name} must be an (m, 2) array of row indices (column 0 = preferred); got shape "
                         f"{arr.shape}")
    if arr.shape[0] == 0:
        raise EmbrmError(f"no {name} to fit on: need at least one labelled pair")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise EmbrmError(f"{name} must hold integer row indices, not {arr.dtype}: map ids with "
                             f"embrm.data.pair_indices")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    out = (arr < 0) | (arr >= n_rows)
    if out.any():
        i = int(np.flatnonzero(out.any(axis=1))[0])
        raise EmbrmError(f"{name} row {i} refers to response row {int(arr[i][out[i]][0])}, outside the "
                         f"{n_rows} embedding rows: pairs and embeddings come from different tables")
    same = arr[:, 0] == arr[:, 1]
    if same.any():
        i = int(np.flatnonzero(same)[0])
        raise EmbrmError(f"{name} row {i} compares response row {int(arr[i, 0])} with itself: "
                         f"drop such pairs ({int(same.sum())} of them)")
    return arr


def check_group_ids(ids, m: int, name: str = "pair_prompt_ids") -> np.ndarray | None:
    """Optional per-pair prompt ids as a 1-D array of length m (or None)."""
    if ids is None:
        return None
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != m:
        raise EmbrmError(f"{name} must hold one prompt id per pair ({m}); got shape {ids.shape}")
    return ids


def check_fitted(est, attr: str) -> None:
    if getattr(est, attr, None) is None:
        raise EmbrmError(f"this {type(est).__name__} is not fitted yet: call fit(X, pairs) first")


# ----------------------------------------------------------------------------- parameter rules
# Every parameter of a head (and of a Protocol) has one rule; the head checks it when it fits, and the pipeline's
# Learner checks its parameters with the same rules when an experiment is described, so `embrm fit`, a study and the
# Python API refuse the same values with the same message.

MAX_SEED = 2 ** 32 - 1  # numpy's SeedSequence, torch.manual_seed and LightGBM all take it; member seeds are uint32


SHOWN_CHARS = 200  # an error stays one readable line, whatever was given


def shown(value) -> str:
    """A value as a user wrote it (JSON/TOML spelling: ["a"], "x", 1.5), on one line, for error messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        try:
            text = " ".join(repr(value).split())  # e.g. a numpy array's repr spans lines
        except (ValueError, RecursionError):  # an int past Python's digit limit, a self-nesting value
            text = f"a {type(value).__name__} too large to show"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Integer:
    lo: int
    hi: int
    none: bool = False  # None is allowed too (e.g. batch_size=None: full batch)

    def ok(self, v) -> bool:
        return (v is None and self.none) or (is_int(v) and self.lo <= v <= self.hi)

    def __str__(self) -> str:
        return f"an integer in [{self.lo}, {self.hi}]" + (" or None" if self.none else "")


@dataclass(frozen=True)
class Number:
    """A finite real number in an interval (open at an end where lo_open / hi_open)."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v) -> bool:
        return is_number(v) and (self.lo < v if self.lo_open else self.lo <= v) and \
            (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        if math.isinf(self.hi):
            return "a finite number" + ("" if math.isinf(self.lo) else f" {'>' if self.lo_open else '>='} {self.lo:g}")
        return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def ok(self, v) -> bool:
        return isinstance(v, str) and v in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(map(shown, self.values))


@dataclass(frozen=True)
class Sizes:
    """Layer widths: a non-empty list of positive integers."""
    max_layers: int
    max_width: int

    def ok(self, v) -> bool:
        return isinstance(v, (list, tuple)) and 1 <= len(v) <= self.max_layers and \
            all(is_int(h) and 1 <= h <= self.max_width for h in v)

    def __str__(self) -> str:
        return f"a list of 1 to {self.max_layers} positive integers (each <= {self.max_width})"


@dataclass(frozen=True)
class Name:
    """A name that becomes part of a file or directory name (a dataset, an exclusion, a study, an embedder, a
    noise): ASCII letters, digits, '.', '_', '-', so no separator, NUL, newline or look-alike; no leading '.', so
    never '.', '..' or a hidden file."""
    pattern = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")

    def ok(self, v) -> bool:
        return isinstance(v, str) and self.pattern.fullmatch(v) is not None

    def __str__(self) -> str:
        return "a plain name (1-100 letters, digits, '.', '_', '-'; not starting with '.')"


SEED = Integer(0, MAX_SEED)
RANDOM_STATE = Integer(0, MAX_SEED, none=True)  # a head's random_state (None: 0)
NAME = Name()
MAX_NESTING = 16  # tables and arrays in a declaration or a study: the deepest schema needs 4


def check_value(name: str, value, rule, *, field: str | None = None):
    """value, or a one-line EmbrmError naming the parameter, what is allowed and what was given. The error's
    `field` is `field` (the parameter's own name, where `name` is a longer description such as "k (ensemble
    size)"), else `name`."""
    if not rule.ok(value):
        raise EmbrmError(f"{name} must be {rule}, got {shown(value)}", field=field or name)
    return value


def check_choice(name: str, value, allowed, *, field: str | None = None):
    """value if it is one of `allowed` (a name from a fixed vocabulary: a head, a mode, an aggregation...), else a
    one-line EmbrmError naming the parameter and every allowed value. `field` as in check_value."""
    if value not in allowed:
        raise EmbrmError(f"{name} = {shown(value)} is not allowed: use one of {', '.join(map(str, allowed))}",
                         field=field or name)
    return value


def check_name(where: str, key: str, value) -> str:
    """value if it is a plain name (NAME), else a one-line EmbrmError naming where it was given and the key."""
    if not NAME.ok(value):
        raise EmbrmError(f"{where}: {key} = {shown(value)} must be {NAME}: it names files", field=key)
    return value


def check_nesting(where: str, doc, limit: int = MAX_NESTING) -> None:
    """Refuse a parsed document nested deeper than `limit` tables/arrays: every message that shows such a value,
    and every copy of it, would recurse that deep (walked without recursion)."""
    stack = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= limit:
                raise EmbrmError(f"{where}: tables or arrays nested more than {limit} deep: no key takes such a "
                                 f"value; flatten it")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))


def available_memory() -> int:
    """Bytes that can still be allocated without swapping: Linux's MemAvailable (else the free physical pages),
    and no more than this process's cgroup (v2) leaves below its limit: a container smaller than its host."""
    return min(_host_available(), _cgroup_available())


def _host_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not knowable here: refuse nothing
        return 2 ** 63


def _cgroup_available(root: str = "/sys/fs/cgroup") -> int:
    try:
        limit = open(f"{root}/memory.max", encoding="ascii").read().strip()
        used = int(open(f"{root}/memory.current", encoding="ascii").read())
        return max(int(limit) - used, 0) if limit != "max" else 2 ** 63
    except (OSError, ValueError):  # no cgroup v2 files here (cgroup v1, macOS): the host's figure stands
        return 2 ** 63


def check_size(where: str, what: str, n_bytes: int, fix: str, *, free: int | None = None,
               kind: str = "memory", field: str | None = None) -> None:
    """Refuse a planned allocation larger than what is available (memory, or `free` bytes of `kind`, e.g. disk)
    before any of it is made: one line with both sizes and the fix, instead of a MemoryError or a swapping machine."""
    free = available_memory() if free is None else free
    if n_bytes > free:
        raise EmbrmError(f"{where}: {what} would take {n_bytes / 2**30:.1f} GiB of {kind}, but {free / 2**30:.1f} "
                         f"GiB is available: {fix}", field=field)


def check_params(params: dict, rules: dict, owner: str) -> None:
    """Every parameter known to `owner` (a head's name) and allowed by its rule."""
    for name, value in params.items():
        if name not in rules:
            raise EmbrmError(f"unknown key {name!r}: {owner} takes {', '.join(rules)}", field=name)
        check_value(name, value, rules[name])


def check_out(path: Path | None, overwrite: bool = True, *, file: bool = False, option: str = "--out") -> None:
    """Refuse an output path that cannot be written, or that holds earlier results unless `overwrite`: checked
    before any work, so a bad path never costs an embedding or a fit and results are never replaced silently.
    `file`: the path names a file (else a directory, which may not exist yet). `option` names it in the error."""
    if path is None:
        return
    path = Path(path)
    parent = next(p for p in path.absolute().parents if p.exists())  # the nearest existing ancestor
    if not parent.is_dir():
        raise EmbrmError(f"{option} {path}: {parent} is a file, not a directory: choose another {option}",
                         field=option)
    if path.exists() and path.is_dir() == file:
        fix = f"{option} takes a file path (e.g. scores.parquet)" if file else f"choose another {option}"
        kind = "a directory, not a file" if file else "a file, not a directory"
        raise EmbrmError(f"{option} {path} is {kind}: {fix}", field=option)
    where = path if path.is_dir() else parent  # where the results will be written
    if not os.access(where, os.W_OK | os.X_OK):
        raise EmbrmError(f"{option} {path}: cannot write into {where} (permission denied): choose another {option}",
                         field=option)
    if not overwrite and (path.is_file() or path.is_dir() and any(path.iterdir())):
        raise EmbrmError(f"{option} {path} already exists and holds results: pass --overwrite to replace them, "
                         f"or choose another {option}", field=option)
