"""Metrics for reward models over numpy arrays, and two baselines.

    pairwise_accuracy(scores, pairs)            share of pairs with score[chosen] > score[rejected]; ties count 0.5
    bt_log_loss(scores, pairs)                  mean -log sigmoid(score[chosen] - score[rejected])
    expected_calibration_error(scores, pairs)   ECE of the BT probability sigmoid(r_a - r_b) (see its doc)
    per_prompt_spearman(scores, gold, prompt)   mean within-prompt Spearman(proxy, gold) over prompts with >= 3
                                                scored responses (or per prompt: by_prompt=True)
    length_reward(responses)                    baseline: longer is better (character length)
    random_reward(n, seed)                      baseline: i.i.d. standard normal scores
"""

from __future__ import annotations

import numpy as np

from embrm.core import EmbrmError, check_pairs
from embrm.evaluation._calibration import reliability
from embrm.evaluation._pools import avg_ranks, group_pools, score_columns


def _scores(scores, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise EmbrmError(f"{name} must be 1-D (one score per response); got shape {s.shape}: "
                         f"aggregate member scores first")
    return s


def _pairs(pairs, n: int) -> np.ndarray:
    return check_pairs(pairs, n)


def _margins(scores, pairs) -> np.ndarray:
    s = _scores(scores)
    p = _pairs(pairs, len(s))
    return s[p[:, 0]] - s[p[:, 1]]


def pairwise_accuracy(scores, pairs) -> float:
    """Share of pairs (column 0 = preferred) whose preferred response scores higher; ties count 0.5."""
    m = _margins(scores, pairs)
    return float(np.mean((m > 0) + 0.5 * (m == 0)))


def bt_log_loss(scores, pairs) -> float:
    """Mean Bradley-Terry negative log-likelihood, -log sigmoid(r_chosen - r_rejected) (stable)."""
    m = _margins(scores, pairs)
    return float(np.mean(np.logaddexp(0.0, -m)))


def expected_calibration_error(scores, pairs, n_bins: int = 10) -> float:
    """ECE of the BT probability p = sigmoid(r_a - r_b) that column 0 is preferred.

    Every pair's label is "column 0 preferred", so (as for any binary classifier) the prediction is read as
    "predicted winner = the higher-scored side, confidence = max(p, 1 - p)" and the outcome as whether the
    predicted winner is the labelled one (ties: confidence 0.5, correct counts 0.5). Equal-width bins over
    confidence in [0.5, 1]; ECE = sum_bins (n_bin / n) * |accuracy_bin - mean confidence_bin|. Computed by
    ``embrm.evaluation.reliability`` (which also gives MCE, Brier and the bins)."""
    return reliability(_margins(scores, pairs), n_bins).ece


def per_prompt_spearman(scores, gold, prompt_index, *, mask=None, min_responses: int = 3, names=None,
                        return_per_prompt: bool = False, by_prompt: bool = False):
    """Within-prompt Spearman(scores, gold) (average ranks for ties), vectorised over prompts and score columns:
    the one implementation (the Best-of-n simulation, training and the methods all call it).

    scores: (n,), (n, A), a dict {name: (n,)} or a DataFrame of A score columns; gold: (n,); prompt_index: any
    per-response prompt label; mask: optional (n,) bool, False leaves the row out. Rows with NaN/inf gold or score
    are left out too; prompts with fewer than min_responses rows left, or a constant score or gold (Spearman
    undefined), have no rho.

    Returns the mean rho over the prompts that have one: a float (an (A,) array for several columns). With
    return_per_prompt (one column): (mean, {prompt: rho}). With by_prompt: (prompts (P,), rho (P,) or (P, A), NaN
    where undefined), prompts in the order of ``embrm.evaluation.bon_curves(...).prompts``."""
    gl = np.asarray(gold, dtype=np.float64)
    if gl.ndim != 1:
        raise EmbrmError(f"gold must be 1-D (one score per response); got shape {gl.shape}")
    _, cols, single = score_columns(scores, names, gl.shape[0])
    s = np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1) + 0.0  # -0.0 -> +0.0
    keep = np.isfinite(gl) & np.isfinite(s).all(axis=1)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != gl.shape:
            raise EmbrmError(f"mask: expected a boolean array of {gl.shape[0]} rows, got {m.dtype} {m.shape}")
        keep &= m
    if not keep.any():
        raise EmbrmError("no response has a gold score: per-prompt Spearman needs gold scores")
    if return_per_prompt and not single:
        raise EmbrmError("return_per_prompt takes one score column: use by_prompt for several")
    # by_prompt lines up with bon_curves' prompts; the mean sums over sorted prompts (bit-stable across versions)
    pools = group_pools(prompt_index, keep, n_rows=gl.shape[0], order="appearance" if by_prompt else "sorted")
    valid = pools.sorted_valid
    ss = pools.sizes[pools.porder].astype(np.float64)

    def centred_ranks(values):
        r = avg_ranks(pools.matrix(values, np.inf), valid) - (ss[:, None] + 1.0) / 2.0
        if valid is not None:
            r[~valid] = 0.0
        return r

    rg = centred_ranks(gl)
    vg = np.einsum("ij,ij->i", rg, rg)
    rho = np.empty((len(pools.sizes), s.shape[1]))
    for j in range(s.shape[1]):
        rp = centred_ranks(np.ascontiguousarray(s[:, j]))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.einsum("ij,ij->i", rp, rg) / np.sqrt(np.einsum("ij,ij->i", rp, rp) * vg)
        r[(ss < min_responses) | ~np.isfinite(r)] = np.nan
        rho[pools.porder, j] = r
    if by_prompt:
        return pools.keys, (rho[:, 0] if single else rho)
    ok = np.isfinite(rho)
    means = np.array([np.mean(rho[ok[:, j], j]) if ok[:, j].any() else np.nan for j in range(rho.shape[1])])
    if not single:
        return means
    if return_per_prompt:
        return float(means[0]), {str(k): float(r) for k, r in zip(pools.keys[ok[:, 0]], rho[ok[:, 0], 0])}
    return float(means[0])


def length_reward(responses) -> np.ndarray:
    """Baseline reward: the response's character length (float32). Accepts a responses table (its `response`
    column) or a sequence of strings."""
    import polars as pl

    if isinstance(responses, pl.DataFrame):
        if "response" not in responses.columns:
            raise EmbrmError("responses table lacks a 'response' column: load it with embrm.data._dataset")
        col = responses["response"]
    else:
        col = pl.Series(list(responses), dtype=pl.Utf8)
    return col.str.len_chars().fill_null(0).to_numpy().astype(np.float32)


def random_reward(n: int, seed: int = 0) -> np.ndarray:
    """Baseline reward: i.i.d. standard normal scores (float32), seeded. Pairwise accuracy ~0.5."""
    return np.random.default_rng(seed).standard_normal(int(n)).astype(np.float32)
