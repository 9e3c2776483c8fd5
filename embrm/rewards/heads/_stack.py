"""The stacked trainer shared by the MLP and ODIN heads: K members trained at once.

Parameters are stacked (K, ...) tensors and every step is one batched forward/backward for the members still
training. Each member keeps its own data (train and validation pairs, a batch order from its own seed), its own
Adam state and step count (StackedAdam: torch's Adam on per-member views of the stacked tensors; Adam is
element-wise, so members never mix, and a member without a gradient in a step is skipped), its own early stopping
on its validation loss (best weights restored; stopped members drop out of the stack) and, for half-precision
matmuls, its own loss scale (a member whose gradients overflow skips the step and halves its scale, as torch's
GradScaler does). A member without validation pairs trains every epoch and keeps its last weights.

A head supplies the model as two functions over the active members' parameters Pa (A, ...) and a PairBatch:
    step(Pa, active, batch, scale) -> (loss (A,), grads [(A, ...) per tensor])   gradients of loss * scale
    val_loss(Pa, active, batch) -> (A,)
where active (A,) holds the member ids in stack order and scale (A,) is None for float32 training.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embrm.core import EmbrmError, step_progress

if TYPE_CHECKING:
    import torch


@dataclass
class MemberData:
    """One member's data for the stacked trainer: row-index pairs into X and a seed for its batch order."""
    train_pairs: np.ndarray
    val_pairs: np.ndarray
    seed: int


@dataclass
class PaddedPairs:
    """Several members' pairs over each member's distinct rows, padded to (K, U) rows and (K, B) pairs (numpy):
    gather (K, U) row ids into X (padding: row 0), mask (K, U) 1.0 on real rows, rows (K,) distinct rows per
    member; ic, ir (K, B) positions of chosen / rejected rows in the gathered rows; w (K, B) = pair mask / the
    member's pair count (so sum(w * loss) is the member's mean loss); sizes (K,) pairs per member."""
    gather: np.ndarray
    mask: np.ndarray
    rows: np.ndarray
    ic: np.ndarray
    ir: np.ndarray
    w: np.ndarray
    sizes: np.ndarray


def pad_pairs(n: int, pair_lists: list[np.ndarray]) -> PaddedPairs:
    """PaddedPairs of K members' pairs (row-index pairs into an n-row X), vectorised over members and pairs."""
    K = len(pair_lists)
    sizes = np.array([len(p) for p in pair_lists])
    B = max(int(sizes.max()), 1)
    member = np.repeat(np.arange(K), sizes)
    slot = np.arange(len(member)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    cat = np.concatenate(pair_lists) if sizes.sum() else np.zeros((0, 2), np.int64)
    keys = np.concatenate([member * n + cat[:, 0], member * n + cat[:, 1]])
    uniq, inv = np.unique(keys, return_inverse=True)
    umember = uniq // n
    ucount = np.bincount(umember, minlength=K)
    upos = np.arange(len(uniq)) - np.repeat(np.cumsum(ucount) - ucount, ucount)
    U = max(int(ucount.max()) if len(ucount) else 1, 1)
    gather = np.zeros((K, U), np.int64)
    gather[umember, upos] = uniq % n
    mask = np.zeros((K, U), np.float32)
    mask[umember, upos] = 1.0
    pos = upos[inv]
    ic = np.zeros((K, B), np.int64)
    ir = np.zeros((K, B), np.int64)
    ic[member, slot] = pos[:len(member)]
    ir[member, slot] = pos[len(member):]
    w = np.zeros((K, B), np.float32)
    w[member, slot] = (1.0 / np.maximum(sizes, 1))[member]
    return PaddedPairs(gather, mask, ucount, ic, ir, w, sizes)


class PairBatch:
    """Several members' pairs as padded tensors (pad_pairs), each member's rows deduplicated.

    tables[i] (K, U, ...): the rows of each per-row table (the embeddings, ODIN's length feature) the pairs touch;
    mask (K, U) 1.0 on real rows, count_rows (K,) real rows (at least 1); ic, ir (K, B) positions of chosen /
    rejected rows; w (K, B) = pair mask / member pair count (sum(w * loss) is the member's mean loss); width = U."""

    def __init__(self, n: int, pair_lists: list[np.ndarray], tables: list[torch.Tensor], lazy: bool = False):
        import torch

        p = pad_pairs(n, pair_lists)
        K, U = p.gather.shape
        rows = torch.from_numpy(p.gather)
        # lazy: keep the row ids and gather a span at a time (`rows`): (K, U, d) copies of the embeddings are what
        # made a full-batch fit of 10 members at d = 2,048 need gigabytes
        self.sources, self.gather = (tables, rows) if lazy else (None, None)
        self.tables = None if lazy else [t.index_select(0, rows.ravel()).view(K, U, *t.shape[1:]) for t in tables]
        self.mask = torch.from_numpy(p.mask)
        self.count_rows = torch.from_numpy(np.maximum(p.rows, 1).astype(np.float32))
        self.ic, self.ir, self.w = torch.from_numpy(p.ic), torch.from_numpy(p.ir), torch.from_numpy(p.w)
        self.width = U

    def rows(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of every member's table i, (K, stop - start, ...)."""
        if self.tables is not None:
            return self.tables[i][:, start:stop]
        g = self.gather[:, start:stop]
        return self.sources[i].index_select(0, g.reshape(-1)).view(*g.shape, *self.sources[i].shape[1:])

    def select(self, keep: torch.Tensor) -> PairBatch:
        """The batch of the members at stack positions `keep`."""
        b = object.__new__(PairBatch)
        b.sources, b.gather = self.sources, None if self.gather is None else self.gather.index_select(0, keep)
        b.tables = None if self.tables is None else [t.index_select(0, keep) for t in self.tables]
        for name in ("mask", "count_rows", "ic", "ir", "w"):
            setattr(b, name, getattr(self, name).index_select(0, keep))
        b.width = self.width
        return b


def bt_loss(s: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per-member mean Bradley-Terry loss (K,) of the scores s (K, U): mean softplus(-(s_chosen - s_rejected))."""
    import torch.nn.functional as F

    return (F.softplus(-(s.gather(1, batch.ic) - s.gather(1, batch.ir))) * batch.w).sum(1)


@dataclass
class StackFit:
    params: list[torch.Tensor]          # best weights, stacked (K, ...)
    val_history: list[list[float]]      # per member, validation loss per epoch run
    train_history: list[list[float]]    # per member, mean train loss per epoch run
    best_epoch: list[int]               # per member, 1-based epoch of the restored weights
    n_epochs: list[int]                 # per member, epochs run before stopping
    skipped_steps: list[int]            # per member, steps skipped on half-precision overflow


Step = Callable[..., tuple]


def fit_stack(params: list[torch.Tensor], members: list[MemberData], tables: list[torch.Tensor], step: Step,
              val_loss: Step, *, lr: float, epochs: int, batch_size: int | None, patience: int, weight_decay: float,
              loss_scale: torch.Tensor | None = None, fused_adam: bool = True, what: str = "training",
              fix: str = "use a lower lr", lazy_rows: bool = False) -> StackFit:
    """Train the stacked `params` (K, ...) float32 of len(members) members in place (see module doc); tables: the
    per-row tensors (n, ...) a batch gathers; batch_size None = full batch (one step per epoch); loss_scale (K,):
    each member's initial loss scale for half-precision gradients, None in float32; fused_adam: see StackedAdam;
    lazy_rows: batches keep row ids and the steps gather spans of rows themselves (PairBatch.rows).
    A non-finite loss raises
    "{what} produced a non-finite loss at epoch E: {fix}"."""
    import torch

    K, n, P = len(members), len(tables[0]), params
    opt = StackedAdam(P, lr=lr, weight_decay=weight_decay, fused=fused_adam)
    best = [p.clone() for p in P]
    rngs = [np.random.default_rng(m.seed) for m in members]
    n_batches = [1 if batch_size is None else max(1, math.ceil(len(m.train_pairs) / batch_size)) for m in members]
    has_val = [len(m.val_pairs) > 0 for m in members]
    stopping = _EarlyStopping(has_val, patience)
    n_epochs, skipped = [0] * K, [0] * K
    train_hist: list[list[float]] = [[] for _ in range(K)]
    full_batch = PairBatch(n, [m.train_pairs for m in members], tables, lazy_rows) if batch_size is None else None
    val_batch = PairBatch(n, [m.val_pairs for m in members], tables, lazy_rows) if any(has_val) else None
    active = torch.arange(K)  # stack position -> member id

    # at most `epochs`: early stopping may end sooner, so the ETA is an upper bound
    with step_progress(epochs, f"{what} ({K} members; early stopping may end it sooner)", "epochs") as bar:
        for epoch in range(epochs):
            ids = active.tolist()
            if not ids:
                break
            every = len(ids) == K
            chunks = None if batch_size is None else {
                k: np.array_split(rngs[k].permutation(len(members[k].train_pairs)), n_batches[k]) for k in ids}
            ep_loss = torch.zeros(len(ids))
            for s in range(max(n_batches[k] for k in ids)):
                if full_batch is not None:
                    batch = full_batch if every else full_batch.select(active)
                    present = torch.ones(len(ids), dtype=torch.bool)
                else:  # members out of batches this epoch get no pairs and no update
                    batch = PairBatch(n, [members[k].train_pairs[chunks[k][s]] if s < n_batches[k] else
                                          np.zeros((0, 2), np.int64) for k in ids], tables, lazy_rows)
                    present = torch.tensor([s < n_batches[k] for k in ids])
                scale = None if loss_scale is None else loss_scale[active]
                loss, grads = step(P if every else [p.index_select(0, active) for p in P], active, batch, scale)
                if not torch.isfinite(loss).all():
                    raise EmbrmError(f"{what} produced a non-finite loss at epoch {epoch + 1}: {fix}")
                ep_loss += loss.detach() * present
                finite = torch.ones(len(ids), dtype=torch.bool) if scale is None else _unscale(grads, scale)
                overflow = present & ~finite
                if overflow.any():
                    loss_scale[active[overflow]] /= 2
                    for k in active[overflow].tolist():
                        skipped[k] += 1
                opt.step(grads, active, present & finite)
            bar.advance()
            for j, k in enumerate(ids):
                train_hist[k].append(float(ep_loss[j]) / n_batches[k])
                n_epochs[k] = epoch + 1
            if val_batch is None:
                continue
            with torch.no_grad():
                vloss = val_loss(P if every else [p.index_select(0, active) for p in P], active,
                                 val_batch if every else val_batch.select(active))
            improved, keep = stopping.update(ids, vloss.tolist(), epoch + 1)
            _copy_members(best, P, improved)
            active = active[torch.tensor(keep, dtype=torch.long)]
    last = [k for k in active.tolist() if not has_val[k]]  # members without validation keep their last weights
    _copy_members(best, P, last)
    for k in last:
        stopping.best_epoch[k] = n_epochs[k]
    return StackFit(best, stopping.history, train_hist, stopping.best_epoch, n_epochs, skipped)


class _EarlyStopping:
    """Per-member early stopping on the validation loss: a member stops after `patience` epochs without a
    strictly lower loss, and its best epoch's weights are the ones kept. Members without validation never stop."""

    def __init__(self, has_val: list[bool], patience: int):
        K = len(has_val)
        self.has_val, self.patience = has_val, patience
        self.best_loss, self.bad, self.best_epoch = [math.inf] * K, [0] * K, [0] * K
        self.history: list[list[float]] = [[] for _ in range(K)]

    def update(self, ids: list[int], losses: list[float], epoch: int) -> tuple[list[int], list[int]]:
        """Record epoch `epoch`'s losses of the members ids (stack order): (ids that improved, stack positions
        that go on training)."""
        improved, keep = [], []
        for j, (k, v) in enumerate(zip(ids, losses)):
            if not self.has_val[k]:
                keep.append(j)
                continue
            self.history[k].append(v)
            if v < self.best_loss[k]:
                self.best_loss[k], self.bad[k], self.best_epoch[k] = v, 0, epoch
                improved.append(k)
            else:
                self.bad[k] += 1
            if self.bad[k] < self.patience:
                keep.append(j)
        return improved, keep


class StackedAdam:
    """torch.optim.Adam (defaults: betas 0.9/0.999, eps 1e-8; L2 weight decay added to the gradient) for every
    member of stacked (K, ...) tensors, each member with its own moments and step count.

    Runs torch's functional Adam (torch.optim.adam.adam, what torch.optim.Adam.step calls) on per-member views of
    the stacked parameters and moments. fused=True: torch's fused CPU kernel where this torch has one (one pass
    over memory instead of ~10; the MLP head's); False: the implementation torch.optim.Adam picks by default on a
    CPU (ODIN's). The two agree to float32 rounding, not bit for bit, so each head keeps the one its published
    numbers came from. The Optimizer class itself is not used: building one imports torch._dynamo, about a second
    of CPU in every process that trains a head."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, params: list[torch.Tensor], *, lr: float, weight_decay: float, fused: bool = True):
        import torch

        self.lr, self.weight_decay = lr, weight_decay
        moments = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        # per member: views of its parameters and moments (the stacked tensors are only updated in place, so the
        # views stay valid) and its step counts, one per tensor as torch keeps them
        self.member = [([p[k] for p in params], [m[k] for m in moments[0]], [v[k] for v in moments[1]],
                        [torch.zeros(()) for _ in params]) for k in range(len(params[0]))]
        self.fused = fused and _fused_adam_on_cpu()

    def step(self, grads: list[torch.Tensor], active: torch.Tensor, update: torch.Tensor) -> None:
        """One Adam step for the members active[update]; grads[i] (len(active), ...) holds their gradients."""
        from torch.optim.adam import adam

        by_position = [g.unbind(0) for g in grads]
        ps, gs, ms, vs, steps = [], [], [], [], []
        for j in update.nonzero().ravel().tolist():  # a loop over members: each adds its whole tensors
            p, m, v, t = self.member[int(active[j])]
            ps += p
            ms += m
            vs += v
            steps += t
            gs += [g[j] for g in by_position]
        if ps:
            adam(ps, gs, ms, vs, [], steps, fused=self.fused or None, amsgrad=False, beta1=self.BETAS[0],
                 beta2=self.BETAS[1], lr=self.lr, weight_decay=self.weight_decay, eps=self.EPS, maximize=False)


@functools.cache
def _fused_adam_on_cpu() -> bool:
    """Whether this torch has a fused CPU Adam kernel (torch >= 2.4)."""
    import torch
    from torch.optim.adam import adam

    one = [torch.zeros(1) for _ in range(4)]
    try:
        adam(one[:1], one[1:2], one[2:3], one[3:], [], [torch.zeros(())], fused=True, amsgrad=False, beta1=0.9,
             beta2=0.999, lr=0.0, weight_decay=0.0, eps=1e-8, maximize=False)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _copy_members(dst: list[torch.Tensor], src: list[torch.Tensor], members: list[int]) -> None:
    """dst[k] = src[k] for every stacked tensor and every member id k in members."""
    import torch

    if members:
        idx = torch.tensor(members, dtype=torch.long)
        for d, s in zip(dst, src):
            d.index_copy_(0, idx, s.index_select(0, idx))


def _unscale(grads: list[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """Divide half-precision gradients by each member's loss scale, in place; (A,) bool: all finite."""
    import torch

    inv_scale = 1.0 / scale
    finite = torch.ones(len(scale), dtype=torch.bool)
    for g in grads:
        g.mul_(inv_scale.view((-1,) + (1,) * (g.dim() - 1)))
        finite &= torch.isfinite(g.flatten(1)).all(1)
    return finite
