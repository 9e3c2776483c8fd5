"""Metrics for reward models over numpy arrays, and two baselines.

    pairwise_accuracy(scores, pairs)            share of pairs with score[chosen] > score[rejected]; ties count 0.5
    bt_log_loss(scores, pairs)                  mean -log sigmoid(score[chosen] - score[rejected])
    expected_calibration_error(scores, pairs)   ECE of the BT probability sigmoid(r_a - r_b) (see its doc)
    per_prompt_spearman(scores, gold, prompt)   mean within-prompt Spearman(proxy, gold) over prompts with >= 3
                                                scored responses
    length_reward(responses)                    baseline: longer is better (character length)
    random_reward(n, seed)                      baseline: i.i.d. standard normal scores
"""

from __future__ import annotations

import numpy as np

from embrm.errors import EmbrmError


def _scores(scores, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise EmbrmError(f"{name} must be 1-D (one score per response); got shape {s.shape}: "
                         f"aggregate member scores first")
    return s


def _pairs(pairs, n: int) -> np.ndarray:
    from embrm.heads import check_pairs

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
    confidence in [0.5, 1]; ECE = sum_bins (n_bin / n) * |accuracy_bin - mean confidence_bin|."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise EmbrmError(f"n_bins must be a positive integer, got {n_bins}")
    m = _margins(scores, pairs)
    conf = 1.0 / (1.0 + np.exp(-np.abs(m)))
    correct = (m > 0) + 0.5 * (m == 0)
    b = np.minimum(((conf - 0.5) * 2 * n_bins).astype(np.int64), n_bins - 1)
    acc = np.bincount(b, correct, n_bins)
    cf = np.bincount(b, conf, n_bins)
    return float(np.abs(acc - cf).sum() / len(m))


def _group_average_ranks(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """1-based ranks of values within each group (ties get their average rank), vectorised."""
    order = np.lexsort((values, groups))
    v, g = values[order], groups[order]
    n = len(v)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    pos = np.arange(n) - group_start + 1.0  # 1-based position within group
    new_run = new_group | np.r_[True, v[1:] != v[:-1]]
    run_id = np.cumsum(new_run) - 1
    run_mean = np.bincount(run_id, pos) / np.bincount(run_id)
    ranks = np.empty(n)
    ranks[order] = run_mean[run_id]
    return ranks


def per_prompt_spearman(scores, gold, prompt_index, *, min_responses: int = 3,
                        return_per_prompt: bool = False):
    """Mean over prompts of Spearman(scores, gold) within the prompt (average ranks for ties).

    Responses with null/NaN gold are ignored; prompts with fewer than min_responses scored responses, or where
    proxy or gold is constant (Spearman undefined), are left out. prompt_index: any per-response prompt label.
    With return_per_prompt, returns (mean, dict prompt -> rho) instead."""
    s = _scores(scores)
    gl = np.asarray(gold, dtype=np.float64)
    pi = np.asarray(prompt_index)
    if gl.shape != s.shape or pi.shape != s.shape:
        raise EmbrmError(f"scores, gold and prompt_index must have one entry per response; got shapes {s.shape}, "
                         f"{gl.shape}, {pi.shape}")
    keep = np.isfinite(gl) & np.isfinite(s)
    labels, grp = np.unique(pi[keep], return_inverse=True)
    s, gl = s[keep], gl[keep]
    if len(s) == 0:
        raise EmbrmError("no response has a gold score: per-prompt Spearman needs gold scores")
    rs = _group_average_ranks(s, grp)
    rg = _group_average_ranks(gl, grp)
    G = len(labels)
    cnt = np.bincount(grp, minlength=G).astype(np.float64)
    ms, mg = np.bincount(grp, rs, G) / cnt, np.bincount(grp, rg, G) / cnt
    ds, dg = rs - ms[grp], rg - mg[grp]
    cov = np.bincount(grp, ds * dg, G)
    vs, vg = np.bincount(grp, ds * ds, G), np.bincount(grp, dg * dg, G)
    valid = (cnt >= min_responses) & (vs > 0) & (vg > 0)
    rho = np.full(G, np.nan)
    rho[valid] = cov[valid] / np.sqrt(vs[valid] * vg[valid])
    mean = float(np.mean(rho[valid])) if valid.any() else float("nan")
    if return_per_prompt:
        return mean, {str(labels[i]): float(rho[i]) for i in np.flatnonzero(valid)}
    return mean


def length_reward(responses) -> np.ndarray:
    """Baseline reward: the response's character length (float32). Accepts a responses table (its `response`
    column) or a sequence of strings."""
    import polars as pl

    if isinstance(responses, pl.DataFrame):
        if "response" not in responses.columns:
            raise EmbrmError("responses table lacks a 'response' column: load it with embrm.data")
        col = responses["response"]
    else:
        col = pl.Series(list(responses), dtype=pl.Utf8)
    return col.str.len_chars().fill_null(0).to_numpy().astype(np.float32)


def random_reward(n: int, seed: int = 0) -> np.ndarray:
    """Baseline reward: i.i.d. standard normal scores (float32), seeded. Pairwise accuracy ~0.5."""
    return np.random.default_rng(seed).standard_normal(int(n)).astype(np.float32)
