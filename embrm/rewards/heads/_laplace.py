"""Bayesian linear Bradley-Terry head by Laplace approximation: a posterior over the weights, not one weight vector.

Model: P(a preferred to b) = sigmoid(w.(x_a - x_b)), prior w ~ N(0, I / lam) with lam = 1 / (2 C), so the posterior
mode (MAP) is exactly LinearBT(C)'s weight vector (LinearBT mirrors every pair, which doubles its data term).
The Laplace approximation (MacKay 1992; for reward models: Yang et al. 2024, "Bayesian reward models for LLM
alignment"; lasgroup/rewarduq) is the Gaussian at the mode with the negative log-posterior's curvature:

    posterior  w ~ N(w_map, H^-1),   H = lam I + sum_i p_i (1 - p_i) d_i d_i^T,   d_i = x_chosen - x_rejected,
                                     p_i = sigmoid(w_map . d_i)   (the BT curvature weights)

which gives a posterior-mean reward x.w_map, an epistemic standard deviation sqrt(x^T H^-1 x) per response and
sqrt(d^T H^-1 d) per pair, and posterior draws that stand in for ensemble members in every aggregation
(embrm.rewards._ensemble mode "posterior"). The mode is found by Newton's method (exact Hessian; the problem is
convex and d is the embedding width), warm-started from `init` when the labels grow (active labelling refits every
round).
"""

from __future__ import annotations

import numpy as np

from embrm.core import (
    RANDOM_STATE,
    EmbrmError,
    Integer,
    Number,
    check_embeddings,
    check_fitted,
    check_pairs,
    check_params,
)

CHUNK_ROWS = 65_536  # pair differences are formed in chunks: (chunk, d) float64 stays ~200 MB at d = 384
TOLERANCE = 1e-10  # Newton stops when the decrement^2 / 2 (the predicted objective drop) falls below this


def _pair_chunks(X: np.ndarray, pairs: np.ndarray):
    for lo in range(0, len(pairs), CHUNK_ROWS):
        p = pairs[lo:lo + CHUNK_ROWS]
        yield lo, X[p[:, 0]].astype(np.float64) - X[p[:, 1]]


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


class LaplaceBT:
    """Bayesian linear BT reward (Laplace approximation). Same C as LinearBT: its MAP weights are LinearBT's.

    Parameters
    ----------
    C : inverse prior strength; the prior precision is lam = 1 / (2 C).
    max_iter : Newton iterations.
    random_state : seed of `sample` when no seed is passed.

    Attributes
    ----------
    coef_ : (d,) float32 posterior mean (MAP) weights; reward = X @ coef_.
    precision_ : (d, d) float64 posterior precision H.
    chol_ : (d, d) float64 lower Cholesky factor of H.
    n_iter_ : Newton iterations used.
    """

    PARAMS = {"C": Number(0, lo_open=True), "max_iter": Integer(1, 10_000), "random_state": RANDOM_STATE}

    def __init__(self, C: float = 1.0, max_iter: int = 100, random_state: int | None = 0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict:
        return {"C": self.C, "max_iter": self.max_iter, "random_state": self.random_state}

    @property
    def prior_precision(self) -> float:
        return 1.0 / (2.0 * self.C)

    # ------------------------------------------------------------------ fitting

    def fit(self, X, pairs, prompt_ids=None, *, init=None) -> "LaplaceBT":
        """Posterior of w given pairs (m, 2) of row indices into X (column 0 preferred). init: (d,) weights to
        start Newton from (the previous fit's coef_ when labels were added). prompt_ids is accepted and unused."""
        from scipy.linalg import cho_solve
        check_params(self.get_params(), self.PARAMS, "LaplaceBT")
        X = check_embeddings(X)
        pairs = check_pairs(pairs, len(X))
        w = np.zeros(X.shape[1]) if init is None else np.asarray(init, np.float64).ravel().copy()
        if w.shape != (X.shape[1],):
            raise EmbrmError(f"init has {w.size} weights for {X.shape[1]}-d embeddings: pass the previous fit's "
                             f"coef_ on the same embeddings")
        lam = self.prior_precision
        self.n_iter_ = 0
        grad, H = self._gradient_hessian(X, pairs, w, lam)
        L = self._cholesky(H)
        for _ in range(int(self.max_iter)):
            step = cho_solve((L, True), grad)
            if float(grad @ step) / 2 < TOLERANCE:  # the Newton decrement^2 / 2: converged, H is the mode's
                break
            w = self._line_search(X, pairs, w, step, grad, lam)
            self.n_iter_ += 1
            grad, H = self._gradient_hessian(X, pairs, w, lam)
            L = self._cholesky(H)
        self.coef_ = w.astype(np.float32)
        self.map_ = w
        self.precision_, self.chol_ = H, L
        return self

    @staticmethod
    def _gradient_hessian(X, pairs, w, lam):
        d = X.shape[1]
        grad, H = lam * w, lam * np.eye(d)
        for _, D in _pair_chunks(X, pairs):
            p = _sigmoid(D @ w)
            grad -= D.T @ (1.0 - p)
            H += (D * (p * (1.0 - p))[:, None]).T @ D
        return grad, H

    def _objective(self, X, pairs, w, lam) -> float:
        value = 0.5 * lam * float(w @ w)
        for _, D in _pair_chunks(X, pairs):
            value += float(_softplus(-(D @ w)).sum())
        return value

    def _line_search(self, X, pairs, w, step, grad, lam):
        """Backtracking (Armijo) along the Newton direction: full steps near the mode, shorter ones far from it."""
        f0, slope, t = self._objective(X, pairs, w, lam), -float(grad @ step), 1.0
        for _ in range(30):
            cand = w - t * step
            if self._objective(X, pairs, cand, lam) <= f0 + 1e-4 * t * slope:
                return cand
            t *= 0.5
        return cand

    @staticmethod
    def _cholesky(H):
        try:
            return np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            raise EmbrmError("the Laplace posterior precision is not positive definite (non-finite embeddings?): "
                             "check the embeddings or raise the prior strength (smaller C)") from None

    # ------------------------------------------------------------------ posterior

    def predict(self, X) -> np.ndarray:
        """Posterior-mean rewards (n,) float32 = X @ coef_."""
        X = self._checked(X)
        return (X @ self.coef_).astype(np.float32)

    def predict_std(self, X) -> np.ndarray:
        """Epistemic standard deviation of each response's reward, sqrt(x^T H^-1 x), (n,) float64."""
        from scipy.linalg import solve_triangular
        X = self._checked(X)
        out = np.empty(len(X))
        for lo in range(0, len(X), CHUNK_ROWS):
            V = solve_triangular(self.chol_, X[lo:lo + CHUNK_ROWS].T.astype(np.float64), lower=True)
            out[lo:lo + CHUNK_ROWS] = np.sqrt(np.einsum("ij,ij->j", V, V))
        return out

    def pair_moments(self, X, pairs) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of each pair's margin r_a - r_b: (m,), (m,) float64."""
        from scipy.linalg import solve_triangular
        X = self._checked(X)
        pairs = check_pairs(pairs, len(X))
        mean, var = np.empty(len(pairs)), np.empty(len(pairs))
        for lo, D in _pair_chunks(X, pairs):
            V = solve_triangular(self.chol_, D.T, lower=True)
            mean[lo:lo + len(D)] = D @ self.map_
            var[lo:lo + len(D)] = np.einsum("ij,ij->j", V, V)
        return mean, var

    def covariance(self) -> np.ndarray:
        """Posterior covariance H^-1 (d, d) float64."""
        from scipy.linalg import cho_solve
        check_fitted(self, "chol_")
        return cho_solve((self.chol_, True), np.eye(len(self.chol_)))

    def log_det_precision(self) -> float:
        """log det H: the information the labels carry about w (D-optimal design maximises it)."""
        check_fitted(self, "chol_")
        return float(2.0 * np.log(np.diag(self.chol_)).sum())

    def sample(self, k: int, seed: int | None = None) -> np.ndarray:
        """k posterior draws of w, (d, k) float64: w_map + H^-1/2 z with L^T v = z (L the Cholesky factor of H)."""
        from scipy.linalg import solve_triangular
        check_fitted(self, "chol_")
        rng = np.random.default_rng(self.random_state if seed is None else seed)
        z = rng.standard_normal((len(self.chol_), int(k)))
        return self.map_[:, None] + solve_triangular(self.chol_.T, z, lower=False)

    def _checked(self, X) -> np.ndarray:
        check_fitted(self, "coef_")
        X = check_embeddings(X)
        if X.shape[1] != len(self.coef_):
            raise EmbrmError(f"embeddings have dim {X.shape[1]} but this head was fitted on dim {len(self.coef_)}: "
                             f"use the same embedder as for training")
        return X

    @classmethod
    def from_posterior(cls, coef, chol, **params) -> "LaplaceBT":
        """A fitted head from its posterior mean and the Cholesky factor of its precision (persistence)."""
        head = cls(**params)
        head.map_ = np.asarray(coef, np.float64).ravel()
        head.coef_ = head.map_.astype(np.float32)
        head.chol_ = np.asarray(chol, np.float64)
        head.precision_ = head.chol_ @ head.chol_.T
        head.n_iter_ = 0
        return head

    def __repr__(self) -> str:
        return f"LaplaceBT(C={self.C})"
