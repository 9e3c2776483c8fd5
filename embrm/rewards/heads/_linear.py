"""Linear Bradley-Terry head: r(x) = x @ w.

A linear BT model is exactly logistic regression WITHOUT intercept on d = x_chosen - x_rejected: P(c > r) =
sigmoid(w.d). Each pair is added twice, (d, 1) and (-d, 0) (mirrored), so the problem is symmetric and the solver
sees both classes. Note: mirroring doubles the data term, so C here acts like 2*C on the unmirrored problem.
"""

from __future__ import annotations

import warnings

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


class LinearBT:
    """Linear Bradley-Terry reward (L2-regularised logistic regression on pair differences, no intercept).

    Parameters
    ----------
    C : inverse L2 strength (scikit-learn's LogisticRegression C).
    max_iter : L-BFGS iterations.
    random_state : kept for the common estimator interface (the convex fit is deterministic).

    Attributes
    ----------
    coef_ : (d,) float32 weight vector; reward = X @ coef_.
    n_iter_ : solver iterations.
    """

    PARAMS = {"C": Number(0, lo_open=True), "max_iter": Integer(1, 100_000),
              "random_state": RANDOM_STATE}

    def __init__(self, C: float = 1.0, max_iter: int = 1000, random_state: int | None = 0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict:
        return {"C": self.C, "max_iter": self.max_iter, "random_state": self.random_state}

    def fit(self, X, pairs, prompt_ids=None) -> "LinearBT":
        """Fit on pairs (m, 2) of row indices into X (column 0 = preferred). prompt_ids is accepted and unused."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        check_params(self.get_params(), self.PARAMS, "LinearBT")
        X = check_embeddings(X)
        pairs = check_pairs(pairs, len(X))
        diff = X[pairs[:, 0]] - X[pairs[:, 1]]
        Z = np.concatenate([diff, -diff])
        y = np.concatenate([np.ones(len(diff), np.int8), np.zeros(len(diff), np.int8)])
        lr = LogisticRegression(C=self.C, fit_intercept=False, max_iter=self.max_iter, solver="lbfgs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr.fit(Z, y)
        self.coef_ = lr.coef_.ravel().astype(np.float32)
        self.n_iter_ = int(np.max(lr.n_iter_))
        return self

    def predict(self, X) -> np.ndarray:
        """Rewards (n,) float32 = X @ coef_."""
        check_fitted(self, "coef_")
        X = check_embeddings(X)
        if X.shape[1] != len(self.coef_):
            raise EmbrmError(f"embeddings have dim {X.shape[1]} but this head was fitted on dim {len(self.coef_)}: "
                             f"use the same embedder as for training")
        return (X @ self.coef_).astype(np.float32)

    @classmethod
    def from_coef(cls, coef, **params) -> "LinearBT":
        """A fitted head from a weight vector (used by persistence and ensembles)."""
        head = cls(**params)
        head.coef_ = np.asarray(coef, np.float32).ravel()
        head.n_iter_ = 0
        return head

    def __repr__(self) -> str:
        return f"LinearBT(C={self.C})"
