"""Synthetic preference pairs with a known linear gold, shared by the ensemble and persistence tests."""

import numpy as np


def synthetic_pairs(n=1000, d=16, n_pairs=2000, seed=0, prompt_size=10):
    """(X (n, d) float32, noiseless pairs (m, 2) preferred first, per-pair prompt ids of uneven group sizes)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    gold = X @ rng.standard_normal(d)
    a, b = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    a, b = a[a != b], b[a != b]
    pairs = np.where((gold[a] > gold[b])[:, None], np.stack([a, b], 1), np.stack([b, a], 1)).astype(np.int64)
    return X, pairs, (np.minimum(a, b) // prompt_size).astype(str)
