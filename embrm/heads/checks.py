"""Input checks every head (and the code that feeds heads) shares: one-line errors naming what is wrong."""

from __future__ import annotations

import numpy as np

from embrm.errors import EmbrmError


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
                             f"embrm.labels.pair_indices")
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
