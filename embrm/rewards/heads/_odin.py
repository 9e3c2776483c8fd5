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

Selection (best-of-n, ranking) uses r_Q ONLY. `OdinResult.quality` is in `forward_stack`'s (heads._mlp) stacked
layout [W1 (K, d, h1), b1 (K, h1), ..., W_out (K, h_last, 1), b_out (K, 1)], so an ODIN member IS an MLP head
(`MLPReward.from_params([p[k] for p in res.quality], hidden=...)`), or for hidden == () a linear head: the quality
weights are then W (K, d, 1), b (K, 1) and the linear coef of member k is quality[0][k, :, 0] (the frozen bias is a
shift and does not change rankings). `OdinResult.length` holds the same trunk arrays with the length output layer.

Training runs the K members on the stacked trainer shared with the MLP head (embrm.rewards.heads._stack):
parameters are (K, ...) tensors, every step is one batched forward (torch.baddbmm / bmm) and one autograd backward
for all members still training. Each member's loss is the mean over its own pairs (gradients never mix); each keeps
its own data (train/val pairs, batch order from its own seed), its own Adam state and step count (torch's Adam), and
its own early stopping on the validation BT loss of r_Q + r_L. All members start from one initialisation drawn
from `init_seed`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embrm.core import SEED, EmbrmError, Integer, Number, check_embeddings, check_pairs, check_value, is_int
from embrm.rewards.heads._mlp import MLPReward, forward_stack, init_params
from embrm.rewards.heads._stack import MemberData, PairBatch, bt_loss, fit_stack

if TYPE_CHECKING:
    import torch

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


def _heads(xg: torch.Tensor, Ws, bs, WO: torch.Tensor, bO: torch.Tensor) -> torch.Tensor:
    """(K, U, d) rows -> (K, U, 2) rewards [r_Q, r_L] of the stacked members."""
    import torch

    h = xg
    for W, b in zip(Ws, bs):
        h = torch.relu(torch.baddbmm(b.unsqueeze(1), h, W))
    return torch.baddbmm(bO.unsqueeze(1), h, WO)


def _pearson(r: torch.Tensor, le: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per-member Pearson correlation (K,) of r and le (K, U) over each member's real rows."""
    import torch

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
    import torch

    t0 = time.perf_counter()
    X, length, members, hidden = _check_inputs(
        X, length, members, hidden, init_seed, lr, epochs, patience, weight_decay, batch_size,
        {"lam_length": lam_length, "lam_quality": lam_quality, "lam_orth": lam_orth})
    K, d = len(members), X.shape[1]
    h_last = hidden[-1] if hidden else d
    init = init_params(d, hidden, init_seed)
    init_len = init_params(h_last, (), init_seed + 1)  # nn.Linear init of the length output layer

    def stacked(a):
        return torch.from_numpy(np.repeat(np.asarray(a, np.float32)[None], K, 0)).contiguous()

    nW = len(init) // 2 - 1
    # trained: [W1, ..., b1, ..., WO (K, h_last, 2) = [wQ, wL]]; the output biases bO (K, 2) stay frozen
    P = [*(stacked(w) for w in init[0:-2:2]), *(stacked(b) for b in init[1:-2:2]),
         stacked(np.concatenate([init[-2], init_len[0]], 1))]
    bO = stacked(np.concatenate([init[-1], init_len[1]]))

    def rewards(Pa, active, batch):
        return _heads(batch.tables[0], Pa[:nW], Pa[nW:2 * nW], Pa[-1], bO.index_select(0, active))

    def step(Pa, active, batch, scale):
        leaves = [p.detach().requires_grad_() for p in Pa]
        r = rewards(leaves, active, batch)
        rq, rl, le = r[..., 0], r[..., 1], batch.tables[1]
        wq, wl = leaves[-1][..., 0], leaves[-1][..., 1]
        cos = (wq * wl).sum(1) / (wq.norm(dim=1) * wl.norm(dim=1) + COS_EPS)
        loss = (bt_loss(rq + rl, batch) - lam_length * _pearson(rl, le, batch)
                + lam_quality * _pearson(rq, le, batch).abs() + lam_orth * cos.abs())
        # each member's loss depends on its own slice only: the gradients of the sum do not mix members
        return loss.detach(), list(torch.autograd.grad(loss.sum(), leaves))

    def val_loss(Pa, active, batch):
        return bt_loss(rewards(Pa, active, batch).sum(-1), batch)

    fit = fit_stack(P, members, [torch.from_numpy(X), torch.from_numpy(length)], step, val_loss, lr=lr,
                    epochs=epochs, batch_size=batch_size, patience=patience, weight_decay=weight_decay,
                    fused_adam=False, what="ODIN training",
                    fix="use a lower lr and check the embeddings' and the length feature's scale")
    best = fit.params
    trunk = []
    for W, b in zip(best[:nW], best[nW:2 * nW]):
        trunk += [W.numpy(), b.numpy()]
    WOb, bOn = best[-1].numpy(), bO.numpy()
    quality = trunk + [np.ascontiguousarray(WOb[..., 0:1]), np.ascontiguousarray(bOn[:, 0:1])]
    length_params = trunk + [np.ascontiguousarray(WOb[..., 1:2]), np.ascontiguousarray(bOn[:, 1:2])]
    used = np.unique(np.concatenate([m.train_pairs.ravel() for m in members]))  # the training rows: scored here
    rq, rl, le = forward_stack(X[used], quality), forward_stack(X[used], length_params), length[used]
    corr = np.zeros((K, 2), np.float64)
    for k, m in enumerate(members):
        rows = np.searchsorted(used, np.unique(m.train_pairs))
        corr[k] = _pearson_np(rq[rows, k], le[rows]), _pearson_np(rl[rows, k], le[rows])
    return OdinResult(quality, length_params, fit.best_epoch, fit.n_epochs, fit.val_history, corr,
                      time.perf_counter() - t0)
