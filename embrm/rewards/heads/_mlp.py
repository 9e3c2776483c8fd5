"""MLP reward head (Sun et al.): d -> 1024 -> 512 -> 1 ReLU, Adam, early stopping on a held-out 20 %.

Training runs on the stacked trainer shared with ODIN (embrm.rewards.heads._stack): K members at once, weights
stacked (K, in, out), one batched forward/backward (torch.baddbmm / bmm) per step for all members, each member with
its own data, batch order, torch.optim.Adam state and early stopping. One member (K = 1) is what `MLPReward.fit`
runs, so a single head and an ensemble go through the same code.

Forward and backward are written out by hand (three matmuls per layer at most, no autograd graph): this lets the
matmuls run in a half type (bfloat16 on CPUs with fast bf16 units; see resolve_dtype) while the master
weights, the loss, the bias sums and Adam stay in float32. Gradients of the mean loss are multiplied by a
per-member loss scale (the member's batch size) before they enter the half-precision matmuls and divided out in
float32; a member whose gradients overflow skips that step and halves its scale (as torch's GradScaler does).
`train_reference` is the plain float32 autograd loop (nn.Sequential + torch.optim.Adam), kept as the
benchmark baseline and as the test oracle for the batched engine.

Losses per pair (chosen c, rejected r), both averaged over a member's pairs:
    bt              -log sigmoid(r_c - r_r)                             (softplus, numerically stable)
    classification  (BCE(r_c, 1) + BCE(r_r, 0)) / 2  = (softplus(-r_c) + softplus(r_r)) / 2, logit = reward
Under "bt" the output bias is frozen at its initial value: the loss does not depend on it (rewards are defined up
to a shift), its gradient is pure rounding noise, and Adam (which divides by the gradient's RMS) would turn that
noise into a random walk of about lr per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embrm.core import (
    RANDOM_STATE,
    EmbrmError,
    Integer,
    Number,
    OneOf,
    Sizes,
    check_embeddings,
    check_fitted,
    check_group_ids,
    check_pairs,
    check_params,
    fast_bf16,
)
from embrm.data import split_pairs
from embrm.rewards.heads._stack import MemberData, PairBatch, bt_loss, fit_stack

if TYPE_CHECKING:
    import torch

OBJECTIVES = ("bt", "classification")
DTYPES = ("float32", "bfloat16", "float16")  # matmul dtypes, named as torch names them
FP16_SAFE_MAX = 1e3  # float16 matmuls are refused for embeddings with |x| above this (float16 ends at 65504)


# ----------------------------------------------------------------------------- precision

def resolve_dtype(dtype: str, X: np.ndarray | None = None, sizes: tuple[int, ...] | None = None) -> str:
    """The matmul dtype a fit will use. "auto": bfloat16 where the CPU multiplies bf16 clearly faster than float32
    (see fast_bf16) and the layers are big enough to profit (d and the first hidden width >= 256); float32
    otherwise. Held-out accuracy of bf16 training was within 0.5 points of float32 in the benchmark (synthetic
    d = 2048 and real MiniLM). "bfloat16" and "float16" can be forced; float16 is refused for embeddings with
    max|x| > 1e3 (its range ends at 65504). CPUs without avx512_fp16 / amx_fp16 have no fast float16 matmul
    (0.8 GFLOP/s on the EPYC above), so auto never picks it. Decided from CPU flags and shapes, not timings, so
    it is reproducible on one machine."""
    if dtype not in ("auto", *DTYPES):
        raise EmbrmError(f"dtype must be one of auto, float32, bfloat16, float16; got {dtype!r}")
    if dtype == "float16" and X is not None and float(np.abs(X).max()) > FP16_SAFE_MAX:
        raise EmbrmError(f"embeddings reach |x| = {float(np.abs(X).max()):.3g}, too large for float16 matmuls: "
                         f"use dtype='bfloat16' or 'float32'")
    if dtype != "auto":
        return dtype
    if sizes is not None and min(sizes[:2]) < 256:
        return "float32"
    return "bfloat16" if fast_bf16() else "float32"


# ----------------------------------------------------------------------------- parameters

def init_params(d: int, hidden: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """PyTorch nn.Linear's default init, seeded: [W1 (d, h1), b1 (h1,), ..., W_out (h_last, 1), b_out (1,)].
    Weights are stored (in, out)."""
    import torch

    g = torch.Generator().manual_seed(int(seed) % (2 ** 63))
    sizes = [d, *hidden, 1]
    out = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        out.append((torch.rand(fan_in, fan_out, generator=g) * 2 - 1).mul_(bound).numpy())
        out.append((torch.rand(fan_out, generator=g) * 2 - 1).mul_(bound).numpy())
    return out


FORWARD_BYTES = 128 << 20  # activations of one chunk of rows in forward_stack, all members together


def forward_stack(X: np.ndarray, params: list[np.ndarray], chunk: int | None = None) -> np.ndarray:
    """Rewards of K stacked members in float32: params [W1 (K, d, h1), b1 (K, h1), ...] -> (n, K). Rows go through
    in chunks whose activations (K x chunk x hidden) take about FORWARD_BYTES."""
    import torch

    Ws = [torch.from_numpy(np.ascontiguousarray(p, np.float32)) for p in params[0::2]]
    bs = [torch.from_numpy(np.ascontiguousarray(p, np.float32)) for p in params[1::2]]
    if chunk is None:
        chunk = max(256, FORWARD_BYTES // (4 * len(Ws[0]) * sum(W.shape[-1] for W in Ws)))
    Xt = torch.from_numpy(X)
    out = []
    with torch.no_grad():
        for s in range(0, len(X), chunk):
            h = torch.matmul(Xt[s:s + chunk], Ws[0]).add_(bs[0][:, None, :])  # (K, c, h1)
            for W, b in zip(Ws[1:], bs[1:]):
                h = torch.baddbmm(b[:, None, :], torch.relu_(h), W)
            out.append(h[..., 0].T.contiguous())
    return torch.cat(out).numpy() if out else np.zeros((0, len(Ws[0])), np.float32)


def matmul_flops(n_rows: int, sizes: list[int], backward: bool) -> float:
    """Matmul FLOPs of one forward (and backward: weight grads everywhere, input grads except layer 1)."""
    f = 0.0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        f += 2.0 * n_rows * a * b
        if backward:
            f += 2.0 * n_rows * a * b * (2 if i > 0 else 1)
    return f


# ----------------------------------------------------------------------------- batched engine

@dataclass
class StackResult:
    params: list[np.ndarray]            # best weights, stacked (K, ...), float32
    val_history: list[list[float]]      # per member, val loss per epoch run
    train_history: list[list[float]]    # per member, mean train loss per epoch run
    best_epoch: list[int]               # per member, 1-based epoch of the restored weights
    n_epochs: list[int]                 # per member, epochs run before stopping
    skipped_steps: list[int]            # per member, steps skipped on half-precision overflow
    dtype: str
    flops: float = 0.0                  # matmul FLOPs executed (forward + backward + validation)
    seconds: float = 0.0


def _pair_loss(r: torch.Tensor, batch: PairBatch, objective: str, grad: bool):
    """Per-member mean loss (K,) and, with grad, d(loss)/d(r) (K, U) in float32."""
    import torch
    import torch.nn.functional as F

    if objective == "bt":
        loss = bt_loss(r, batch)
        if grad:
            g = -torch.sigmoid(r.gather(1, batch.ir) - r.gather(1, batch.ic))
            gc, gr = g, -g
    else:
        rc, rr = r.gather(1, batch.ic), r.gather(1, batch.ir)
        loss = (0.5 * (F.softplus(-rc) + F.softplus(rr)) * batch.w).sum(1)
        if grad:
            gc, gr = -0.5 * torch.sigmoid(-rc), 0.5 * torch.sigmoid(rr)
    if not grad:
        return loss, None
    dr = torch.zeros_like(r)
    dr.scatter_add_(1, batch.ic, gc * batch.w).scatter_add_(1, batch.ir, gr * batch.w)
    return loss, dr


LOOP_MIN_FLOPS = 2 ** 26  # stacked matmuls at least this big per member run as one 2-D GEMM per member (_bmm)


def _bmm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Stacked matmul a (K, m, k) @ b (K, k, n) (+ bias (K, n) on every row) -> (K, m, n), contiguous.

    Large products run as one 2-D GEMM per member (torch.mm / addmm with out= into one stacked result): each is
    the same multithreaded kernel the sequential trainer gets. With torch.bmm (the whole stack to one batched
    GEMM) the engine ran the 10-member Sun et al. setting at 0.66x the sequential loop on a 2-core Xeon (on a
    2-core EPYC bmm and per-member GEMMs run at the same speed), so per-member GEMMs are the choice that
    cannot fall behind the baseline's matmul efficiency. Small products (tests, tiny heads) go through one
    torch.bmm, where the per-call overhead of a Python loop would dominate. Operands may be transposed views:
    BLAS reads them through their strides."""
    import torch

    K, m, inner = a.shape
    n = b.shape[-1]
    if 2.0 * m * inner * n < LOOP_MIN_FLOPS:
        return torch.bmm(a, b) if bias is None else torch.baddbmm(bias.unsqueeze(1), a, b)
    out = torch.empty(K, m, n, dtype=torch.promote_types(a.dtype, b.dtype))
    for k in range(K):  # a loop over members, not rows: each iteration is one large GEMM
        if bias is None:
            torch.mm(a[k], b[k], out=out[k])
        else:
            torch.addmm(bias[k], a[k], b[k], out=out[k])
    return out


def _forward(xg, Wc, bc):
    import torch

    acts = [xg]
    h = xg
    for W, b in zip(Wc[:-1], bc[:-1]):
        h = torch.relu_(_bmm(h, W, b))
        acts.append(h)
    r = torch.baddbmm(bc[-1].unsqueeze(1), h, Wc[-1])[..., 0].float()
    return r, acts


def _backward(dr, acts, Wc, scale, cdt) -> list:
    """Gradients of the (scaled) loss for [W1, b1, ...] from d(loss)/d(r) (A, U), by hand (no autograd graph):
    weight grads in the compute dtype, bias sums as a matmul with ones in half precision (faster than a half sum),
    all returned in float32."""
    import torch

    g = (dr if scale is None else dr * scale[:, None]).to(cdt).unsqueeze(-1)  # d(scaled loss)/d(layer output)
    grads = [None] * (2 * len(Wc))
    ones_h = None if cdt == torch.float32 else torch.ones(g.shape[0], 1, g.shape[1], dtype=cdt)
    for li in range(len(Wc) - 1, -1, -1):
        h_in = acts[li]
        grads[2 * li] = _bmm(h_in.transpose(1, 2), g).float()
        grads[2 * li + 1] = g.sum(1) if ones_h is None else torch.bmm(ones_h, g)[:, 0].float()
        if li > 0:
            g = _bmm(g, Wc[li].transpose(1, 2))
            g = torch.ops.aten.threshold_backward(g, h_in, 0)  # ReLU backward, one fused pass
    return grads


# A stacked step holds every member's gathered rows and activations at once: (K, U, d + 2 x hidden) values. Above
# this many bytes (10 members of Sun et al.'s 2,048-1,024-512 MLP on 8,000 pairs each: ~3 GB) a batch keeps row ids
# and each step runs over spans of rows (one more forward pass, ~1/3 more FLOPs; the same gradient up to summation
# order), so a full-batch fit's memory stays near this budget whatever the number of pairs. At Sun et al.'s size
# 128 MB spans peaked at 1.7 GB (the members' weights, gradients and Adam states are ~0.9 GB of it) against 1.9 GB
# for 512 MB spans and 4.8 GB in one pass, in 5 % more time than 512 MB spans.
STEP_BYTES = 128 << 20
# A spanned step's scoring pass keeps the activations of its spans up to this many bytes, so that their backward
# does not forward them again (the same values: the gradient is bit for bit the recomputing one's). The default
# study's RRM fits (3,300 to 6,200 pairs of 5 members, 2 or 3 spans) keep every span: their steps lose the second
# forward pass, ~1/4 of their FLOPs; a fit of Sun et al.'s size keeps two of its ~24 spans.
KEPT_BYTES = 256 << 20


def _row_span(members: list[MemberData], sizes: list[int], cdt, batch_size: int | None) -> int | None:
    """Rows per span of a stacked step, or None when a whole batch fits STEP_BYTES."""
    import torch

    pairs = max(len(m.train_pairs) for m in members) if batch_size is None else batch_size
    per_row = len(members) * (sizes[0] + 2 * sum(sizes[1:-1])) * max(torch.finfo(cdt).bits // 8, 4)
    if 2 * pairs * per_row <= STEP_BYTES:  # at most two distinct rows a pair
        return None
    return max(256, STEP_BYTES // per_row)


def _spanned_scores(batch, Wc, bc, span: int, keep: int = 0):
    """Scores (K, U) of a batch's rows, one span of rows at a time, and {span start: activations} of the first
    spans whose activations take at most `keep` bytes together."""
    import torch

    scores, kept = [], {}
    for s in range(0, batch.width, span):
        r, acts = _forward(batch.rows(0, s, s + span), Wc, bc)
        scores.append(r)
        keep -= sum(a.nelement() * a.element_size() for a in acts)
        if keep >= 0:
            kept[s] = acts
    return torch.cat(scores, 1), kept


def train_stack(X: np.ndarray, members: list[MemberData], inits: list[list[np.ndarray]], *,
                objective: str = "bt", lr: float = 1e-3, epochs: int = 30, batch_size: int | None = None,
                patience: int = 3, weight_decay: float = 0.0, dtype: str = "auto",
                input_mask: np.ndarray | None = None) -> StackResult:
    """Train K MLP members at once on the shared stacked trainer (embrm.rewards.heads._stack; see module doc).
    inits: one parameter list per member (share one list for WARM: members then start from the same point).
    batch_size None = full batch (one step per epoch). input_mask (K, d) bool: member k sees only the inputs
    where it is true (random feature subsets): the first layer's gradient is zeroed on the other rows, so rows that
    start at zero stay exactly zero (Adam moves a weight with zero gradient, zero moments and zero decay by 0)."""
    import time

    import torch

    t0 = time.perf_counter()
    n, d = X.shape
    sizes = [d] + [p.shape[-1] for p in inits[0][0::2]]
    cdt_name = resolve_dtype(dtype, X, tuple(sizes))
    cdt = getattr(torch, cdt_name)
    Xt = torch.from_numpy(X)
    Xc = Xt if cdt == torch.float32 else Xt.to(cdt)
    P = [torch.from_numpy(np.stack([np.asarray(init[i], np.float32) for init in inits])).contiguous()
         for i in range(len(inits[0]))]
    scale = None if cdt == torch.float32 else torch.tensor(  # loss scale: a member's batch size
        [float(max(len(m.train_pairs), 1)) if batch_size is None else float(min(batch_size, len(m.train_pairs)))
         for m in members])
    flops = 0.0

    def cast(Pa):
        return [p if cdt == torch.float32 else p.to(cdt) for p in Pa]

    span = _row_span(members, sizes, cdt, batch_size)  # None: one pass over a batch's rows fits the budget
    hidden_rows = None if input_mask is None else ~torch.from_numpy(np.asarray(input_mask, bool))[:, :, None]

    def step(Pa, active, batch, scale_a):
        nonlocal flops
        Wc, bc = cast(Pa[0::2]), cast(Pa[1::2])
        if span is None:
            r, acts = _forward(batch.tables[0], Wc, bc)
            loss, dr = _pair_loss(r, batch, objective, grad=True)
            grads = _backward(dr, acts, Wc, scale_a, cdt)
        else:  # the same gradient, a span of rows at a time: scores first, then each span's backward
            r, kept = _spanned_scores(batch, Wc, bc, span, KEPT_BYTES)
            loss, dr = _pair_loss(r, batch, objective, grad=True)
            grads = None
            for s in range(0, batch.width, span):
                acts = kept.pop(s, None)
                if acts is None:  # a span the scoring pass did not keep: forwarded again
                    acts = _forward(batch.rows(0, s, s + span), Wc, bc)[1]
                    flops += matmul_flops(acts[0].shape[1] * len(active), sizes, backward=False)
                part = _backward(dr[:, s:s + span], acts, Wc, scale_a, cdt)
                grads = part if grads is None else [g.add_(p) for g, p in zip(grads, part)]
        if objective == "bt":  # BT is shift-invariant: the output bias gets no (only rounding-noise) gradient
            grads[-1].zero_()
        if hidden_rows is not None:  # inputs a member does not see: no gradient (where, not a product: inf * 0)
            grads[0].masked_fill_(hidden_rows.index_select(0, active), 0.0)
        flops += matmul_flops(batch.width * len(active), sizes, backward=True)
        return loss, grads

    def val_loss(Pa, active, batch):
        nonlocal flops
        Wc, bc = cast(Pa[0::2]), cast(Pa[1::2])
        r = _forward(batch.tables[0], Wc, bc)[0] if span is None else _spanned_scores(batch, Wc, bc, span)[0]
        flops += matmul_flops(batch.width * len(active), sizes, backward=False)
        return _pair_loss(r, batch, objective, grad=False)[0]

    fit = fit_stack(P, members, [Xc], step, val_loss, lr=lr, epochs=epochs, batch_size=batch_size,
                    patience=patience, weight_decay=weight_decay, loss_scale=scale, what="MLP training",
                    fix=f"(dtype {cdt_name}) use dtype='float32' or a lower lr, and check the embeddings' scale",
                    lazy_rows=span is not None)
    return StackResult([b.numpy() for b in fit.params], fit.val_history, fit.train_history, fit.best_epoch,
                       fit.n_epochs, fit.skipped_steps, cdt_name, flops, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- reference (plain) trainer

def train_reference(X: np.ndarray, member: MemberData, init: list[np.ndarray], *, objective: str = "bt",
                    lr: float = 1e-3, epochs: int = 30, batch_size: int | None = None, patience: int = 3,
                    weight_decay: float = 0.0) -> tuple[list[np.ndarray], dict]:
    """One member trained the plain way: float32 nn.Sequential, autograd, torch.optim.Adam, chosen and rejected
    rows forwarded separately. Same data order and early-stopping rule as train_stack: the benchmark baseline
    and the tests' oracle."""
    import torch
    import torch.nn.functional as F

    sizes = [X.shape[1]] + [p.shape[-1] for p in init[0::2]]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(init[2 * i], np.float32)).T)
            lin.bias.copy_(torch.from_numpy(np.asarray(init[2 * i + 1], np.float32)))
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    Xt = torch.from_numpy(X)
    tr = torch.from_numpy(member.train_pairs)
    va = torch.from_numpy(member.val_pairs)
    rng = np.random.default_rng(member.seed)
    nb = 1 if batch_size is None else max(1, math.ceil(len(tr) / batch_size))

    def loss_of(p):
        rc = model(Xt[p[:, 0]]).squeeze(-1)
        rr = model(Xt[p[:, 1]]).squeeze(-1)
        if objective == "bt":
            return F.softplus(-(rc - rr)).mean()
        return 0.5 * (F.softplus(-rc) + F.softplus(rr)).mean()

    best_state, best_loss, bad, best_epoch, n_ep, hist = None, math.inf, 0, 0, 0, []
    for epoch in range(epochs):
        order = None if batch_size is None else np.array_split(rng.permutation(len(tr)), nb)
        for s in range(nb):
            p = tr if order is None else tr[torch.from_numpy(order[s])]
            opt.zero_grad(set_to_none=True)
            loss = loss_of(p)
            loss.backward()
            if objective == "bt":
                model[-1].bias.grad.zero_()
            opt.step()
        n_ep = epoch + 1
        if len(va) == 0:
            continue
        with torch.no_grad():
            v = float(loss_of(va))
        hist.append(v)
        if v < best_loss:
            best_loss, bad, best_epoch = v, 0, epoch + 1
            best_state = [t.detach().clone() for t in model.parameters()]
        else:
            bad += 1
            if bad >= patience:
                break
    params = best_state if best_state is not None else [t.detach().clone() for t in model.parameters()]
    out = []
    for i in range(0, len(params), 2):
        out += [params[i].T.contiguous().numpy(), params[i + 1].numpy()]
    return out, {"val_history": hist, "best_epoch": best_epoch or n_ep, "n_epochs": n_ep}


# ----------------------------------------------------------------------------- estimator

class MLPReward:
    """MLP reward head, d -> hidden... -> 1 with ReLU (Sun et al.: hidden=(1024, 512)).

    Parameters
    ----------
    hidden : hidden layer widths.
    objective : "bt" (Bradley-Terry on r_c - r_r) or "classification" (BCE, chosen 1 / rejected 0, logit = reward).
    lr, weight_decay : Adam (weight decay as L2 added to the gradient, like torch.optim.Adam).
    epochs : maximum epochs. batch_size : pairs per step; None = full batch (one step per epoch, Sun et al.'s code).
    patience : early stopping patience (epochs without a strictly lower validation loss); best weights restored.
    val_fraction : held-out share of the pairs for early stopping (split by prompt when prompt_ids are passed to
        fit); 0 trains all epochs on all pairs.
    dtype : matmul precision, "auto" | "float32" | "bfloat16" | "float16" (see resolve_dtype); master weights,
        loss and optimiser are always float32, and predict is float32.
    random_state : seeds the initialisation, the validation split and the batch order.

    Attributes
    ----------
    params_ : [W1 (d, h1), b1, ..., W_out (h_last, 1), b_out] float32. train_idx_, val_idx_ : pair indices used.
    val_history_, train_history_, best_epoch_, n_epochs_, dtype_.
    """

    # Widths up to 8192 (8x Sun et al.'s 1024) and 8 layers; lr in (0, 1] (Adam moves a weight by ~lr a step)
    PARAMS = {"hidden": Sizes(8, 8192), "objective": OneOf(OBJECTIVES), "lr": Number(0, 1, lo_open=True),
              "epochs": Integer(1, 10_000), "batch_size": Integer(1, 10_000_000, none=True),
              "patience": Integer(1, 10_000), "val_fraction": Number(0, 1, hi_open=True), "weight_decay": Number(0),
              "dtype": OneOf(("auto", *DTYPES)), "random_state": RANDOM_STATE}

    def __init__(self, hidden=(1024, 512), objective: str = "bt", lr: float = 1e-3, epochs: int = 30,
                 batch_size: int | None = None, patience: int = 3, val_fraction: float = 0.2,
                 weight_decay: float = 0.0, dtype: str = "auto", random_state: int | None = 0):
        self.hidden = hidden
        self.objective = objective
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.weight_decay = weight_decay
        self.dtype = dtype
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("hidden", "objective", "lr", "epochs", "batch_size", "patience",
                                              "val_fraction", "weight_decay", "dtype", "random_state")}

    def _check_params(self) -> None:
        check_params(self.get_params(), self.PARAMS, "MLPReward")

    def train_kwargs(self) -> dict:
        return dict(objective=self.objective, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                    patience=self.patience, weight_decay=self.weight_decay, dtype=self.dtype)

    def fit(self, X, pairs, prompt_ids=None) -> "MLPReward":
        """Fit on pairs (m, 2) of row indices into X; prompt_ids (m,) makes the validation split by prompt."""
        self._check_params()
        X = check_embeddings(X)
        pairs = check_pairs(pairs, len(X))
        prompt_ids = check_group_ids(prompt_ids, len(pairs), "prompt_ids")
        seed = 0 if self.random_state is None else int(self.random_state)
        tr, va = split_pairs(len(pairs), self.val_fraction, seed=seed, prompt_ids=prompt_ids)
        init = init_params(X.shape[1], tuple(int(h) for h in self.hidden), seed)
        res = train_stack(X, [MemberData(pairs[tr], pairs[va], seed)], [init], **self.train_kwargs())
        self._set_result([p[0] for p in res.params], res, 0, tr, va)
        return self

    def _set_result(self, params, res: StackResult | None, k: int, tr, va) -> None:
        self.params_ = [np.ascontiguousarray(p, np.float32) for p in params]
        self.train_idx_, self.val_idx_ = tr, va
        if res is not None:
            self.val_history_ = res.val_history[k]
            self.train_history_ = res.train_history[k]
            self.best_epoch_ = res.best_epoch[k]
            self.n_epochs_ = res.n_epochs[k]
            self.dtype_ = res.dtype

    @classmethod
    def from_params(cls, params: list[np.ndarray], **est_params) -> "MLPReward":
        """A fitted head from its weights (used by persistence, ensembles and WARM averaging)."""
        m = cls(**est_params)
        m._set_result(params, None, 0, None, None)
        return m

    def predict(self, X) -> np.ndarray:
        """Rewards (n,) float32 (float32 forward pass)."""
        return self._forward(X, last_hidden=False)

    def transform(self, X) -> np.ndarray:
        """The last hidden layer's activations (n, h_last): the trunk features for shared-trunk ensembles."""
        return self._forward(X, last_hidden=True)

    def _forward(self, X, last_hidden: bool) -> np.ndarray:
        check_fitted(self, "params_")
        X = check_embeddings(X)
        if X.shape[1] != self.params_[0].shape[0]:
            raise EmbrmError(f"embeddings have dim {X.shape[1]} but this head was fitted on dim "
                             f"{self.params_[0].shape[0]}: use the same embedder as for training")
        params = self.params_[:-2] if last_hidden else self.params_
        if last_hidden:
            import torch

            Ws = [torch.from_numpy(p) for p in params[0::2]]
            bs = [torch.from_numpy(p) for p in params[1::2]]
            with torch.no_grad():
                h = torch.from_numpy(X)
                for W, b in zip(Ws, bs):
                    h = torch.relu_(torch.addmm(b, h, W))
            return h.numpy()
        return forward_stack(X, [p[None] for p in params])[:, 0]

    def __repr__(self) -> str:
        return f"MLPReward(hidden={self.hidden!r}, objective={self.objective!r}, dtype={self.dtype!r})"
