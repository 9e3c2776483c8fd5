"""Which unlabelled pairs to ask the annotator about next: the selection rules of active labelling.

Every rule is a function ``rule(state, batch, rng) -> positions``: ``state`` (a ``State``) holds the training
embeddings, the candidate pairs (``Candidates``: every within-prompt pair of the training prompts, optionally plus
cross-prompt ones), the ``available`` mask (not yet labelled), the current posterior (a fitted
``embrm.rewards.heads.LaplaceBT``) and K posterior draws ``W`` (d, K) drawn once per round. A rule returns
exactly ``min(batch, available.sum())`` distinct positions into the candidates, all available; none ever returns
a labelled or a duplicate pair. Everything is vectorised over candidates (and over prompts for the per-prompt
rules); the only Python loops are over the picks of a greedy batch, which are sequential by nature.

    random        uniform among the available pairs
    disagreement  std over the K draws of the pair's margin (query by committee)
    dopt          greedy D-optimal batch on the BT Fisher information, prior only (no past labels)
    dopt_past     the same from the current posterior (the past labels' information included)
    bald          BALD: mutual information between the label and the weights
    dts           double Thompson sampling per prompt (dueling bandits)
    maxminlcb     MaxMinLCB per prompt (preference bandits as a Stackelberg game)

Notation: a candidate pair (a, b) has difference d = x_a - x_b; under the Laplace posterior N(w_map, S), S = H^-1,
its margin r_a - r_b has mean d.w_map and variance d^T S d. Variances are read as squared norms of rows of
Z = (L^-1 X^T)^T (L the Cholesky factor of H, so d^T S d = |z_a - z_b|^2), within a prompt through a batched
(P, N, N) Gram matrix of the padded per-prompt rows (``embrm.evaluation.group_pools``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from embrm.evaluation import Pools
from embrm.rewards.heads import LaplaceBT

__all__ = ["STRATEGIES", "SELECTORS", "Candidates", "State", "select", "random_pairs", "disagreement", "dopt",
           "dopt_past", "bald", "dts", "maxminlcb", "greedy_dopt", "log_det_gain"]

STRATEGIES = ("random", "disagreement", "dopt", "dopt_past", "bald", "dts", "maxminlcb")
CHUNK = 65_536  # cross-prompt pairs are gathered in chunks of this many rows


# ----------------------------------------------------------------------------- the candidates and the state

@dataclass
class Candidates:
    """The candidate pairs of one seed, fixed for the whole campaign.

    pairs: (M, 2) int64 rows of X (unordered: column 0 is not the preferred one); prompt: (M,) int64 pool index of
    a within-prompt pair, -1 for a cross-prompt pair; cells: (M, 2) int64 the pair's positions (i, j) in its
    pool (-1 across prompts); pools: the training prompts' rows as a padded layout (``Pools.rows`` (P, N) rows
    of X); pair_at: (P, N, N) int64 candidate position of the pair of pool cells (i, j), symmetric, -1 where
    there is none (the diagonal, padding)."""

    pairs: np.ndarray
    prompt: np.ndarray
    cells: np.ndarray
    pools: Pools
    pair_at: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)

    @cached_property
    def within(self) -> np.ndarray:
        """(M,) bool: within-prompt pairs."""
        return self.prompt >= 0


def pool_gram(Z: np.ndarray, pools: Pools) -> np.ndarray:
    """(P, N, N) Gram matrices Z_p Z_p^T of each prompt's (padded) rows of Z."""
    Zp = Z[pools.rows]
    return Zp @ Zp.transpose(0, 2, 1)


def pair_sq_norms(Z: np.ndarray, cand: Candidates, gram: np.ndarray | None = None) -> np.ndarray:
    """(M,) |z_a - z_b|^2 of every candidate: within prompts from the per-prompt Gram, across in chunks."""
    out = np.empty(len(cand))
    gram = pool_gram(Z, cand.pools) if gram is None else gram
    w = cand.within
    p, i, j = cand.prompt[w], cand.cells[w, 0], cand.cells[w, 1]
    out[w] = gram[p, i, i] + gram[p, j, j] - 2 * gram[p, i, j]
    cross = np.flatnonzero(~cand.within)
    for lo in range(0, len(cross), CHUNK):
        pos = cross[lo:lo + CHUNK]
        D = Z[cand.pairs[pos, 0]] - Z[cand.pairs[pos, 1]]
        out[pos] = np.einsum("ij,ij->i", D, D)
    return np.maximum(out, 0.0)  # cancellation can leave -1e-16 for near-identical responses


@dataclass
class State:
    """What a rule sees in one round: X (n, d) float32 training embeddings, the candidates, the available mask,
    the fitted posterior, K posterior draws W (d, K) and MaxMinLCB's width lcb_beta. Derived arrays are computed
    once per round, when a rule first asks."""

    X: np.ndarray
    candidates: Candidates
    available: np.ndarray
    model: LaplaceBT
    W: np.ndarray
    lcb_beta: float = 1.0
    prior_sq_norms: np.ndarray | None = None  # |x_a - x_b|^2 per candidate (fixed per seed; computed if None)

    @cached_property
    def X64(self) -> np.ndarray:
        return self.X.astype(np.float64)

    @cached_property
    def mean(self) -> np.ndarray:
        """(n,) posterior-mean rewards x.w_map."""
        return self.X64 @ self.model.map_

    @cached_property
    def Z(self) -> np.ndarray:
        """(n, d) rows z = L^-1 x: x^T S y = z_x . z_y under the posterior covariance S = H^-1."""
        from scipy.linalg import solve_triangular

        return solve_triangular(self.model.chol_, self.X64.T, lower=True).T.copy()

    @cached_property
    def gram(self) -> np.ndarray:
        """(P, N, N) posterior covariances of the rewards within each training prompt."""
        return pool_gram(self.Z, self.candidates.pools)

    def margins(self, positions: np.ndarray) -> np.ndarray:
        """(m,) posterior-mean margins r_a - r_b of the candidates at positions."""
        pairs = self.candidates.pairs[positions]
        return self.mean[pairs[:, 0]] - self.mean[pairs[:, 1]]

    def draw_margins(self, positions: np.ndarray) -> np.ndarray:
        """(m, K) margins of the candidates at positions under each posterior draw."""
        R = self.X64 @ self.W
        pairs = self.candidates.pairs[positions]
        return R[pairs[:, 0]] - R[pairs[:, 1]]


# ----------------------------------------------------------------------------- shared pieces

def _top(positions: np.ndarray, score: np.ndarray, batch: int) -> np.ndarray:
    """The `batch` positions of highest score, best first (ties: lower position first)."""
    k = min(batch, len(positions))
    order = np.lexsort((positions, -score))
    return positions[order[:k]]


def _bt_weights(state: State, positions: np.ndarray) -> np.ndarray:
    """p (1 - p) under the MAP: each pair's BT Fisher information weight."""
    from scipy.special import expit

    p = expit(state.margins(positions))
    return p * (1.0 - p)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats (0 at p = 0 or 1)."""
    from scipy.special import xlogy

    return -(xlogy(p, p) + xlogy(1.0 - p, 1.0 - p))


def _fill_random(state: State, picked: list, batch: int, rng: np.random.Generator) -> np.ndarray:
    """picked, topped up with uniformly random available pairs (not already picked) up to min(batch, available)."""
    picked = np.asarray(picked, np.int64)
    free = state.available.copy()
    free[picked] = False
    need = min(batch, int(state.available.sum())) - len(picked)
    if need <= 0:
        return picked
    return np.concatenate([picked, rng.choice(np.flatnonzero(free), need, replace=False)])


# ----------------------------------------------------------------------------- the rules

def random_pairs(state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random sampling without replacement among the available pairs (the baseline of every active-learning
    study, e.g. Settles 2009, "Active learning literature survey")."""
    free = np.flatnonzero(state.available)
    return rng.choice(free, min(batch, len(free)), replace=False)


def disagreement(state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Query by committee (Seung, Opper & Sompolinsky 1992; for reward ensembles Coste et al. 2023, "Reward model
    ensembles help mitigate overoptimization"): the pairs whose margin the K posterior draws (the committee)
    disagree on most, i.e. the largest population std over the draws of r_a - r_b."""
    free = np.flatnonzero(state.available)
    return _top(free, state.draw_margins(free).std(axis=1), batch)


def bald(state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """BALD, Bayesian active learning by disagreement (Houlsby, Huszár, Ghahramani & Lengyel 2011, "Bayesian active
    learning for classification and preference learning", arXiv 1112.5745): the mutual information between the
    pair's label and the weights, H[mean_k p_k] - mean_k H[p_k], p_k = sigmoid(margin under draw k), estimated
    over the K posterior draws; the top `batch`."""
    from scipy.special import expit

    free = np.flatnonzero(state.available)
    p = expit(state.draw_margins(free))
    return _top(free, _entropy(p.mean(axis=1)) - _entropy(p).mean(axis=1), batch)


def log_det_gain(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """log det(A + w d d^T) - log det A = log(1 + w d^T A^-1 d), v = d^T A^-1 d (matrix determinant lemma)."""
    return np.log1p(w * np.maximum(v, 0.0))


def greedy_dopt(X: np.ndarray, pairs: np.ndarray, w: np.ndarray, v: np.ndarray, S: np.ndarray,
                batch: int) -> np.ndarray:
    """Greedy maximiser of log det(A + sum_batch w_j d_j d_j^T) over the rows of `pairs` (m, 2) (rows of X (n, d)
    float64): S = A^-1 (d, d), v (m,) = d_i^T S d_i, w (m,) the Fisher weights. Returns positions into `pairs`.

    Each pick j is the largest log(1 + w_j v_j); then, by Sherman-Morrison with u = S d_j and c_i = d_i^T u =
    (X u)[a_i] - (X u)[b_i] (never forming the (m, d) differences):
        v_i -= w_j c_i^2 / (1 + w_j v_j),    S -= w_j u u^T / (1 + w_j v_j).
    O(n d + m + d^2) per pick. S and v are updated in place."""
    k = min(batch, len(pairs))
    gain = log_det_gain(w, v)
    picks = np.empty(k, np.int64)
    for step in range(k):  # sequential by nature: each pick changes every other pair's gain
        j = int(np.argmax(gain))
        picks[step] = j
        a, b = pairs[j]
        u = S @ (X[a] - X[b])
        denom = 1.0 + w[j] * v[j]
        Xu = X @ u
        c = Xu[pairs[:, 0]] - Xu[pairs[:, 1]]
        v -= (w[j] / denom) * c * c
        S -= (w[j] / denom) * np.outer(u, u)
        gain = log_det_gain(w, v)
        gain[picks[:step + 1]] = -np.inf
    return picks


def dopt(state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy D-optimal design WITHOUT the past labels (Shen, Sun et al. 2025, "Active reward modeling: adaptive
    preference labeling for large language model alignment", arXiv 2502.04354): maximise
    log det(lam I + sum_batch w_j d_j d_j^T), w_j = p_j (1 - p_j) under the current MAP, lam the prior precision;
    greedy with rank-one updates from S = I / lam (see greedy_dopt)."""
    free = np.flatnonzero(state.available)
    lam = state.model.prior_precision
    sq = state.prior_sq_norms
    sq = pair_sq_norms(state.X64, state.candidates) if sq is None else sq
    d = state.X.shape[1]
    picks = greedy_dopt(state.X64, state.candidates.pairs[free], _bt_weights(state, free), sq[free] / lam,
                        np.eye(d) / lam, batch)
    return free[picks]


def dopt_past(state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Past-aware greedy D-optimal design (Shen, Sun et al. 2025, arXiv 2502.04354): as ``dopt`` but maximising
    log det(H + sum_batch w_j d_j d_j^T), H the posterior precision after the labels so far, i.e. greedy from
    S = H^-1 (the posterior covariance) and v_i = d_i^T H^-1 d_i, the posterior margin variance."""
    free = np.flatnonzero(state.available)
    v = pair_sq_norms(state.Z, state.candidates, state.gram)[free]
    picks = greedy_dopt(state.X64, state.candidates.pairs[free], _bt_weights(state, free), v,
                        state.model.covariance(), batch)
    return free[picks]


# ----------------------------------------------------------------------------- per-prompt (dueling) rules

def _prompt_picks(state: State, batch: int, rng: np.random.Generator,
                  choose: Callable[[State, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
                  ) -> np.ndarray:
    """A batch from one pair per prompt: ``choose(state, open, rng)`` -> cells (a, b) (P,) of each prompt's pair,
    given open (P, N, N), the cells of available pairs. The prompts whose chosen pair has the largest posterior
    margin variance go first, each prompt once; when fewer prompts than the batch have a pair left, another sweep
    over the prompts follows (the picks so far closed). Cross-prompt candidates are never chosen here; a batch that
    the within-prompt pairs cannot fill is topped up uniformly at random."""
    pair_at = state.candidates.pair_at
    free = state.available.copy()
    g = state.gram
    picked: list[np.ndarray] = []
    left = min(batch, int(free.sum()))
    while left > 0:  # sweeps over all prompts at once: ceil(batch / prompts) of them
        open_ = (pair_at >= 0) & free[np.maximum(pair_at, 0)]
        live = np.flatnonzero(open_.any(axis=(1, 2)))
        if len(live) == 0:
            break
        a, b = choose(state, open_, rng)
        a, b = a[live], b[live]
        var = g[live, a, a] + g[live, b, b] - 2 * g[live, a, b]
        order = np.lexsort((live, -var))[:left]
        pos = pair_at[live[order], a[order], b[order]]
        picked.append(pos)
        free[pos] = False
        left -= len(pos)
    picks = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return _fill_random(state, picks, batch, rng)


def _prompt_draws(state: State, rng: np.random.Generator) -> np.ndarray:
    """(P, N) rewards of each prompt's responses under its own fresh posterior draw w = w_map + L^-T z:
    x.w = x.w_map + (L^-1 x).z."""
    rows = state.candidates.pools.rows
    z = rng.standard_normal((rows.shape[0], state.Z.shape[1]))
    return state.mean[rows] + np.einsum("pnd,pd->pn", state.Z[rows], z)


def _dts_choose(state: State, open_: np.ndarray, rng: np.random.Generator):
    P = open_.shape[0]
    first = np.argmax(np.where(open_.any(axis=2), _prompt_draws(state, rng), -np.inf), axis=1)
    second = np.argmax(np.where(open_[np.arange(P), first], _prompt_draws(state, rng), -np.inf), axis=1)
    return first, second


def dts(state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Double Thompson sampling for dueling bandits (Wu & Liu 2016, "Double Thompson sampling for dueling bandits",
    NeurIPS; per prompt as in ActiveUltraFeedback): per prompt, a posterior draw picks the first response (its top
    response among those with an unlabelled partner), a second, independent draw picks the top response among the
    first one's unlabelled partners (so a labelled pair passes to the next best second arm). Within-prompt only;
    prompts ranked by the posterior variance of their chosen pair's margin (see _prompt_picks)."""
    return _prompt_picks(state, batch, rng, _dts_choose)


def _maxminlcb_choose(state: State, open_: np.ndarray, rng: np.random.Generator):
    rows, g = state.candidates.pools.rows, state.gram
    mu = state.mean[rows]
    diag = np.einsum("pii->pi", g)
    var = np.maximum(diag[:, :, None] + diag[:, None, :] - 2 * g, 0.0)
    lcb = np.where(open_, mu[:, :, None] - mu[:, None, :] - state.lcb_beta * np.sqrt(var), np.inf)
    worst = np.where(open_.any(axis=2), lcb.min(axis=2), -np.inf)
    first = np.argmax(worst, axis=1)
    second = np.argmin(lcb[np.arange(len(first)), first], axis=1)
    return first, second


def maxminlcb(state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """MaxMinLCB (Pásztor, Krause et al. 2024, "Bandits with preference feedback: a Stackelberg game perspective",
    arXiv 2406.16745): per prompt, the lower confidence bound of a's margin over b, LCB_ab = mu_ab - beta
    sqrt(var_ab) (posterior mean and variance of r_a - r_b, over available pairs), the leader a = argmax_a min_b
    LCB_ab and the follower b = argmin_b LCB_ab. Within-prompt only; prompts ranked by the posterior variance of
    their chosen pair's margin (see _prompt_picks)."""
    return _prompt_picks(state, batch, rng, _maxminlcb_choose)


SELECTORS: dict[str, Callable[[State, int, np.random.Generator], np.ndarray]] = {
    "random": random_pairs, "disagreement": disagreement, "dopt": dopt, "dopt_past": dopt_past, "bald": bald,
    "dts": dts, "maxminlcb": maxminlcb}


def select(name: str, state: State, batch: int, rng: np.random.Generator) -> np.ndarray:
    """The positions the rule `name` picks: (min(batch, available),) int64, distinct, all available."""
    return np.asarray(SELECTORS[name](state, batch, rng), np.int64)
