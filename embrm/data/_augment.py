"""RRM-style data augmentation (Liu et al. 2024, "RRM: Robust Reward Model Training Mitigates Reward Hacking",
arXiv 2409.13156): answers to OTHER prompts, placed under a prompt, must lose to that prompt's own answers, even
to the rejected one, and tie with each other. A reward that learns this cannot score an answer by artefacts that
do not depend on the prompt (length, style, format).

Rewards here are functions of embeddings of (prompt, response) texts, so an off-prompt answer under a prompt is a
new text that must be embedded. The augmentation rows are therefore a dataset of their own, fixed per dataset and
seed (never per split), embedded once and cached like any other:

    aug = rrm_dataset(ds, per_prompt=2, seed=0)      # a Dataset "<name>+rrm": per_prompt off-prompt rows per prompt
    X_aug = embed_dataset(aug, embedder, ...).X
    new, new_pid = rrm_pairs(pairs, pair_prompt_ids, aug.responses, train_prompts, n_rows=len(ds.responses))
    # rows >= n_rows are aug rows: X_all = np.vstack([X, X_aug]); pairs_all = np.vstack([pairs, new])

For each labelled pair (chosen c, rejected r) on prompt p, with a and b p's first two augmentation rows whose
source prompt is a training prompt (b = a when only one is): c > a, r > b and, with two rows, the tie a ~ b entered
in both orders. Held-out text never enters training: rows whose source is outside `train_prompts` are not used.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from embrm.core import EmbrmError, check_pairs
from embrm.data._dataset import RESPONSE_HEAD, Dataset

__all__ = ["AUG_COLUMNS", "rrm_dataset", "rrm_pairs"]

AUG_COLUMNS = (*RESPONSE_HEAD, "source_id", "source_prompt_id")


def rrm_dataset(ds: Dataset, per_prompt: int = 2, seed: int = 0) -> Dataset:
    """For every prompt p of ds (in order of first appearance), `per_prompt` rows holding p's prompt and the text of
    a response drawn uniformly, without replacement within p, from the eligible responses of other prompts
    (eligible: not excluded, and scored for pools; any non-excluded response of a pairs dataset).
    response_id "<p>:rrm<j>", gold null, scored False, excluded False; `source_id` / `source_prompt_id` say where
    the text comes from. Deterministic for a given ds and seed."""
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, (int, np.integer)) or per_prompt < 1:
        raise EmbrmError(f"per_prompt must be a positive integer, got {per_prompt!r}")
    k = int(per_prompt)
    r = ds.responses
    pid = r["prompt_id"].cast(pl.Utf8).to_numpy().astype(object)
    keys, first, code = np.unique(pid, return_index=True, return_inverse=True)
    code = code.ravel()
    P = len(keys)
    if P < 2:
        raise EmbrmError(f"{ds.source or ds.name}: only {P} prompt(s): RRM augmentation draws answers from other "
                         f"prompts and needs at least 2")
    eligible = ~ds.excluded if ds.pairs is not None else ds.usable
    elig = np.flatnonzero(eligible)
    elig = elig[np.argsort(code[elig], kind="stable")]  # eligible rows grouped by prompt code, file order within
    c = np.bincount(code[elig], minlength=P)
    lo = np.cumsum(c) - c
    others = len(elig) - c  # eligible responses under other prompts
    short = others < k
    if short.any():
        p = int(np.flatnonzero(short)[0])
        raise EmbrmError(f"{ds.source or ds.name}: prompt {keys[p]!r} has {int(others[p])} eligible answer(s) under "
                         f"other prompts, fewer than per_prompt={k}: lower per_prompt")
    rng = np.random.default_rng(seed)
    # Floyd's sampling of k distinct positions in [0, others_p), vectorised over prompts (one step per draw)
    pos = np.zeros((P, k), np.int64)
    for j in range(k):
        top = others - k + j  # draw t in [0, top]; if t is taken, take top (never taken before)
        t = rng.integers(0, top + 1)
        taken = (pos[:, :j] == t[:, None]).any(axis=1)
        pos[:, j] = np.where(taken, top, t)
    pos = np.take_along_axis(pos, np.argsort(rng.random((P, k)), axis=1), axis=1)  # uniform order too
    pos = np.where(pos < lo[:, None], pos, pos + c[:, None])  # skip the prompt's own block
    src = elig[pos]  # (P, k) source rows
    order = np.argsort(first, kind="stable")  # prompts in order of first appearance
    prompt_rows = np.repeat(first[order], k)
    src = src[order].ravel()
    head = r.select("prompt_id", "prompt")[prompt_rows]
    aug = head.with_columns(
        response_id=pl.col("prompt_id") + ":rrm" + pl.Series(np.tile(np.arange(k), P)).cast(pl.Utf8),
        response=r["response"][src],
        gold=pl.lit(None, dtype=pl.Float64),
        scored=pl.lit(False),
        excluded=pl.lit(False),
        source_id=r["response_id"][src],
        source_prompt_id=r["prompt_id"].cast(pl.Utf8)[src],
    ).select(AUG_COLUMNS)
    return Dataset(f"{ds.name}+rrm", aug, None, ds.source, "")


def rrm_pairs(pairs: np.ndarray, pair_prompt_ids, aug_responses: pl.DataFrame, train_prompts, n_rows: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """RRM pairs for labelled pairs (m, 2) (rows of ds.responses, column 0 preferred) on prompts pair_prompt_ids.

    Indices of the result refer to [ds rows 0..n_rows-1; aug rows n_rows + j]. Per labelled pair on prompt p, with
    a, b = p's first two aug rows whose source_prompt_id is in train_prompts (b = a when only one): (c, a), (r, b)
    and, when there are two, the tie (b, a), (a, b). Pairs whose prompt has no such row add nothing. Returns only
    the new pairs (int64 (m', 2)) and their prompt ids (m',), each labelled pair's new pairs together."""
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise EmbrmError(f"n_rows must be a positive integer (the rows of ds.responses), got {n_rows!r}")
    missing = [col for col in ("prompt_id", "source_prompt_id") if col not in aug_responses.columns]
    if missing:
        raise EmbrmError(f"aug_responses lacks {', '.join(missing)}: pass rrm_dataset(...).responses")
    pp = np.asarray(pair_prompt_ids)
    arr = np.asarray(pairs)
    if arr.ndim == 2 and arr.shape[0] == 0 and arr.shape[1] == 2 and pp.shape == (0,):
        return np.zeros((0, 2), np.int64), pp
    arr = check_pairs(arr, n_rows)
    if pp.shape != (len(arr),):
        raise EmbrmError(f"pair_prompt_ids must hold one prompt id per pair ({len(arr)}); got shape {pp.shape}")
    train = np.asarray(train_prompts).astype(str).ravel()
    aug_pid = aug_responses["prompt_id"].cast(pl.Utf8).to_numpy().astype(str)
    valid = np.flatnonzero(np.isin(aug_responses["source_prompt_id"].cast(pl.Utf8).to_numpy().astype(str), train))
    if len(valid) == 0:
        return np.zeros((0, 2), np.int64), pp[:0]
    keys, vcode = np.unique(aug_pid[valid], return_inverse=True)
    vcode = vcode.ravel()
    # first and second valid aug row of each prompt (file order)
    order = np.argsort(vcode, kind="stable")
    counts = np.bincount(vcode, minlength=len(keys))
    start = np.cumsum(counts) - counts
    a_row = valid[order[start]]
    two = counts >= 2
    b_row = a_row.copy()
    b_row[two] = valid[order[start[two] + 1]]
    # each pair's prompt among the keys
    ppk = pp.astype(str)
    at = np.minimum(np.searchsorted(keys, ppk), len(keys) - 1)
    has = keys[at] == ppk
    a, b, tie = np.int64(n_rows) + a_row[at], np.int64(n_rows) + b_row[at], two[at]
    new = np.stack([np.stack([arr[:, 0], a], 1), np.stack([arr[:, 1], b], 1),
                    np.stack([b, a], 1), np.stack([a, b], 1)], axis=1)  # (m, 4, 2)
    use = np.stack([has, has, has & tie, has & tie], axis=1)  # (m, 4)
    rep = np.repeat(np.arange(len(arr)), 4).reshape(-1, 4)
    return new[use].astype(np.int64), pp[rep[use]]
