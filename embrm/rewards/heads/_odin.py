"""ODIN: disentangled quality and length rewards (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking
in RLHF", arXiv 2402.07319), trained for K ensemble members at once.

A reward model that learns from human preferences also learns the raters' bias for long answers, and a policy
optimised against it then games length. ODIN gives the model two output heads on one shared trunk h(x) (the MLP
of `hidden` widths with ReLU; hidden == () means h(x) = x, the LINEAR case):

    r_Q(x) = h(x) @ wQ + bQ        quality reward (used for selection)
    r_L(x) = h(x) @ wL + bL        length reward (only absorbs the length signal during training)

and trains them so that their SUM explains the preferences while the length signal is pushed into r_L and out of
r_Q. Loss of one member on a batch of its pairs (chosen c, rejected r):

    mean softplus(-((rQ_c + rL_c) - (rQ_r + rL_r)))          Bradley-Terry on the sum
    + lam_length  * (-pearson(r_L, len))                      r_L follows the length feature
    + lam_quality * |pearson(r_Q, len)|                       r_Q is uncorrelated with it
    + lam_orth    * |cos(wQ, wL)|                             the two output weight vectors are orthogonal

with `len` a per-row length feature (e.g. log characters) and the Pearson correlations taken over the distinct rows
the batch's pairs touch. The output biases are frozen at their initial values: no term depends on them (BT is shift
invariant, Pearson and cos ignore them).

Selection (best-of-n, ranking) uses r_Q ONLY. `OdinResult.quality` is in `embrm.rewards.heads._mlp.forward_stack`'s stacked
layout [W1 (K, d, h1), b1 (K, h1), ..., W_out (K, h_last, 1), b_out (K, 1)], so an ODIN member IS an MLP head
(`MLPReward.from_params([p[k] for p in res.quality], hidden=...)`), or for hidden == () a linear head: the quality
weights are then W (K, d, 1), b (K, 1) and the linear coef of member k is quality[0][k, :, 0] (the frozen bias is a
shift and does not change rankings). `OdinResult.length` holds the same trunk arrays with the length output layer.

Training runs the K members as one stack: parameters are (K, ...) tensors, every step is one batched forward
(torch.baddbmm / bmm) and one autograd backward for all members still training. Each member keeps its own data
(train/val pairs, batch order from its own seed), its own loss scale (the mean over its own pairs: gradients never
mix) and its own early stopping on the validation BT loss of r_Q + r_L. The optimiser is torch.optim.Adam over
per-member views of the stacked tensors, so each member also has its own Adam state and step count; a member that
has run out of patience (or has no batch left in this epoch) gets no gradient and is skipped by Adam, and stopped
members drop out of the forward pass. All members start from one initialisation drawn from `init_seed`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from embrm.core import SEED, EmbrmError, Integer, Number, check_embeddings, check_pairs, check_value, is_int
from embrm.rewards.heads._mlp import MemberData, MLPReward, forward_stack, init_params, pad_pairs

ODIN_PARAMS = {"lam_length": Number(0), "lam_quality": Number(0), "lam_orth": Number(0)}
CORR_EPS = 1e-8  # added to the (mean) variances in the Pearson correlation: a constant feature gives corr 0
COS_EPS = 1e-12


@dataclass
class OdinResult:
    quality: list[np.ndarray]       # stacked (K, ...) float32 params in forward_stack's layout: the quality reward
    length: list[np.ndarray]        # same trunk arrays as quality, with the length output layer
    best_epoch: list[int]           # per member, 1-based epoch of the restored weights
    n_epochs: list[int]             # per member, epochs run before stopping
    val_history: list[list[float]]  # per member, validation BT loss of r_Q + r_L per epoch
    length_corr: np.ndarray         # (K, 2) Pearson corr with len of r_Q (col 0) and r_L (col 1), training rows
    seconds: float


class _Batch:
    """Pairs of several members as padded tensors over each member (embrm.rewards.heads._mlp.pad_pairs).

    gather (K, U) row ids into X (padding: row 0), mask (K, U) 1.0 on real rows, count_rows (K,); ic, ir (K, B)
    positions of chosen / rejected rows in the gathered rows; w (K, B) = pair mask / member pair count."""

    def __init__(self, n: int, pair_lists: list[np.ndarray]):
        p = pad_pairs(n, pair_lists)
        self.gather = torch.from_numpy(p.gather)
        self.mask = torch.from_numpy(p.mask)
        self.count_rows = torch.from_numpy(np.maximum(p.rows, 1).astype(np.float32))
        self.ic, self.ir, self.w = torch.from_numpy(p.ic), torch.from_numpy(p.ir), torch.from_numpy(p.w)

    def select(self, keep: torch.Tensor) -> _Batch:
        b = object.__new__(_Batch)
        for name in ("gather", "mask", "count_rows", "ic", "ir", "w"):
            setattr(b, name, getattr(self, name).index_select(0, keep))
        return b


def _heads(xg: torch.Tensor, Ws, bs, WO: torch.Tensor, bO: torch.Tensor) -> torch.Tensor:
    """(K, U, d) rows -> (K, U, 2) rewards [r_Q, r_L] of the stacked members."""
    h = xg
    for W, b in zip(Ws, bs):
        h = torch.relu(torch.baddbmm(b.unsqueeze(1), h, W))
    return torch.baddbmm(bO.unsqueeze(1), h, WO)


def _bt(s: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """Per-member mean BT loss (K,) of the scores s (K, U)."""
    return (F.softplus(-(s.gather(1, batch.ic) - s.gather(1, batch.ir))) * batch.w).sum(1)


def _pearson(r: torch.Tensor, le: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """Per-member Pearson correlation (K,) of r and le (K, U) over each member's real rows."""
    m, cnt = batch.mask, batch.count_rows
    rc = (r - (r * m).sum(1, keepdim=True) / cnt[:, None]) * m
    lc = (le - (le * m).sum(1, keepdim=True) / cnt[:, None]) * m
    cov = (rc * lc).sum(1) / cnt
    return cov / torch.sqrt(((rc * rc).sum(1) / cnt + CORR_EPS) * ((lc * lc).sum(1) / cnt + CORR_EPS))


def _pearson_np(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).mean() / math.sqrt(((a * a).mean() + CORR_EPS) * ((b * b).mean() + CORR_EPS)))


def _check_inputs(X, length, members, hidden, init_seed, lr, epochs, patience, weight_decay, batch_size, lams):
    X = check_embeddings(X, "X")
    n = len(X)
    try:
        length = np.asarray(length, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise EmbrmError(f"length must be a 1-D numeric array, one value per row of X ({e})") from None
    if length.shape != (n,):
        raise EmbrmError(f"length must have shape ({n},), one value per row of X; got shape {length.shape}")
    if not np.isfinite(length).all():
        raise EmbrmError(f"length holds {int((~np.isfinite(length)).sum())} non-finite values (first: row "
                         f"{int(np.flatnonzero(~np.isfinite(length))[0])}): compute it for every row")
    if not isinstance(hidden, (list, tuple)) or not all(is_int(h) and h >= 1 for h in hidden):
        raise EmbrmError(f"hidden must be a list of positive integer widths (empty: linear), got {hidden!r}")
    if not isinstance(members, (list, tuple)) or not members or \
            not all(isinstance(m, MemberData) for m in members):
        raise EmbrmError("members must be a non-empty list of MemberData")
    checked = []
    for k, m in enumerate(members):
        tr = check_pairs(m.train_pairs, n, f"member {k} train_pairs")
        va = np.asarray(m.val_pairs)
        va = np.zeros((0, 2), np.int64) if va.size == 0 else check_pairs(va, n, f"member {k} val_pairs")
        check_value(f"member {k} seed", m.seed, SEED)
        checked.append(MemberData(tr, va, int(m.seed)))
    check_value("init_seed", init_seed, SEED)
    rules = MLPReward.PARAMS
    for name, value, rule in (("lr", lr, rules["lr"]), ("epochs", epochs, rules["epochs"]),
                              ("patience", patience, rules["patience"]),
                              ("weight_decay", weight_decay, rules["weight_decay"]),
                              ("batch_size", batch_size, Integer(1, 10_000_000, none=True))):
        check_value(name, value, rule)
    for name, value in lams.items():
        check_value(name, value, ODIN_PARAMS[name])
    return X, length, checked, tuple(int(h) for h in hidden)


def train_odin(X: np.ndarray, length: np.ndarray, members: list[MemberData], hidden: tuple[int, ...], *,
               init_seed: int, lr: float = 1e-3, epochs: int = 30, patience: int = 3, weight_decay: float = 0.0,
               batch_size: int | None = None, lam_length: float = 1.0, lam_quality: float = 1.0,
               lam_orth: float = 1.0) -> OdinResult:
    """Train K ODIN members (see module doc) on X (n, d) float32 with a per-row length feature `length` (n,).
    members: one MemberData per member (row-index pairs into X, column 0 preferred; val_pairs may be empty: that
    member trains all epochs and keeps its last weights). batch_size None = full batch (one step per epoch).
    Deterministic for the same inputs and torch thread count."""
    t0 = time.perf_counter()
    X, length, members, hidden = _check_inputs(
        X, length, members, hidden, init_seed, lr, epochs, patience, weight_decay, batch_size,
        {"lam_length": lam_length, "lam_quality": lam_quality, "lam_orth": lam_orth})
    K = len(members)
    n, d = X.shape
    h_last = hidden[-1] if hidden else d
    init = init_params(d, hidden, init_seed)
    init_len = init_params(h_last, (), init_seed + 1)  # nn.Linear init of the length output layer

    def stacked(a):
        return torch.from_numpy(np.repeat(np.asarray(a, np.float32)[None], K, 0)).contiguous()

    Ws = [stacked(w).requires_grad_() for w in init[0:-2:2]]
    bs = [stacked(b).requires_grad_() for b in init[1:-2:2]]
    WO = stacked(np.concatenate([init[-2], init_len[0]], 1)).requires_grad_()  # (K, h_last, 2): [wQ, wL]
    bO = stacked(np.concatenate([init[-1], init_len[1]]))                       # (K, 2), frozen
    P = [*Ws, *bs, WO]
    # per-member views of the stacked tensors (sharing their storage): Adam keeps per-member state and step counts
    # and skips a member whose view has no gradient
    views = [[p.detach()[k].requires_grad_() for p in P] for k in range(K)]
    opt = torch.optim.Adam([v for vs in views for v in vs], lr=lr, weight_decay=weight_decay)
    best = [p.detach().clone() for p in P]

    Xt = torch.from_numpy(X)
    Lt = torch.from_numpy(length)
    rngs = [np.random.default_rng(m.seed) for m in members]
    n_batches = [1 if batch_size is None else max(1, math.ceil(len(m.train_pairs) / batch_size)) for m in members]
    has_val = [len(m.val_pairs) > 0 for m in members]
    best_loss = [math.inf] * K
    bad = [0] * K
    val_hist: list[list[float]] = [[] for _ in range(K)]
    best_epoch = [0] * K
    n_epochs = [0] * K
    active = list(range(K))
    full_batch = _Batch(n, [m.train_pairs for m in members]) if batch_size is None else None
    val_batch = _Batch(n, [m.val_pairs for m in members]) if any(has_val) else None

    def step(ids: list[int], batch: _Batch, epoch: int) -> None:
        idx = torch.tensor(ids, dtype=torch.long)
        Pa = P if len(ids) == K else [p.index_select(0, idx) for p in P]
        nW = len(Ws)
        Wa, ba, WOa = Pa[:nW], Pa[nW:2 * nW], Pa[-1]
        bOa = bO if len(ids) == K else bO.index_select(0, idx)
        xg = Xt.index_select(0, batch.gather.ravel()).view(len(ids), -1, d)
        le = Lt.index_select(0, batch.gather.ravel()).view(len(ids), -1)
        r = _heads(xg, Wa, ba, WOa, bOa)
        rq, rl = r[..., 0], r[..., 1]
        wq, wl = WOa[..., 0], WOa[..., 1]
        cos = (wq * wl).sum(1) / (wq.norm(dim=1) * wl.norm(dim=1) + COS_EPS)
        loss = (_bt(rq + rl, batch) - lam_length * _pearson(rl, le, batch)
                + lam_quality * _pearson(rq, le, batch).abs() + lam_orth * cos.abs())
        if not torch.isfinite(loss).all():
            raise EmbrmError(f"ODIN training produced a non-finite loss at epoch {epoch + 1}: use a lower lr and "
                             f"check the embeddings' and the length feature's scale")
        for p in P:
            p.grad = None
        loss.sum().backward()  # each member's loss depends on its own slice only: gradients do not mix
        on = set(ids)
        for k in range(K):
            for v, p in zip(views[k], P):
                v.grad = p.grad[k] if k in on else None
        opt.step()

    for epoch in range(epochs):
        ids = list(active)
        if not ids:
            break
        if batch_size is None:
            sel = torch.tensor(ids, dtype=torch.long)
            step(ids, full_batch if len(ids) == K else full_batch.select(sel), epoch)
        else:
            chunks = {k: np.array_split(rngs[k].permutation(len(members[k].train_pairs)), n_batches[k])
                      for k in ids}
            for s in range(max(n_batches[k] for k in ids)):
                present = [k for k in ids if s < n_batches[k]]
                step(present, _Batch(n, [members[k].train_pairs[chunks[k][s]] for k in present]), epoch)
        for k in ids:
            n_epochs[k] = epoch + 1
        val_ids = [k for k in ids if has_val[k]]
        if not val_ids:
            continue
        sel = torch.tensor(val_ids, dtype=torch.long)
        vb = val_batch.select(sel)
        with torch.no_grad():
            Pa = [p.index_select(0, sel) for p in P]
            nW = len(Ws)
            xg = Xt.index_select(0, vb.gather.ravel()).view(len(val_ids), -1, d)
            r = _heads(xg, Pa[:nW], Pa[nW:2 * nW], Pa[-1], bO.index_select(0, sel))
            vloss = _bt(r.sum(-1), vb)
        for j, k in enumerate(val_ids):
            v = float(vloss[j])
            val_hist[k].append(v)
            if v < best_loss[k]:
                best_loss[k], bad[k], best_epoch[k] = v, 0, epoch + 1
                for bp, p in zip(best, P):
                    bp[k] = p.detach()[k]
            else:
                bad[k] += 1
                if bad[k] >= patience:
                    active.remove(k)
    for k in range(K):  # members without validation keep their last weights
        if not has_val[k]:
            for bp, p in zip(best, P):
                bp[k] = p.detach()[k]
            best_epoch[k] = n_epochs[k]

    nW = len(Ws)
    trunk = []
    for W, b in zip(best[:nW], best[nW:2 * nW]):
        trunk += [W.numpy(), b.numpy()]
    WOb, bOn = best[-1].numpy(), bO.numpy()
    quality = trunk + [np.ascontiguousarray(WOb[..., 0:1]), np.ascontiguousarray(bOn[:, 0:1])]
    length_params = trunk + [np.ascontiguousarray(WOb[..., 1:2]), np.ascontiguousarray(bOn[:, 1:2])]
    rq_all, rl_all = forward_stack(X, quality), forward_stack(X, length_params)
    corr = np.zeros((K, 2), np.float64)
    for k, m in enumerate(members):
        rows = np.unique(m.train_pairs)
        corr[k] = _pearson_np(rq_all[rows, k], length[rows]), _pearson_np(rl_all[rows, k], length[rows])
    return OdinResult(quality, length_params, best_epoch, n_epochs, val_hist, corr, time.perf_counter() - t0)
