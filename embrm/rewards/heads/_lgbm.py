"""LightGBM reward head.

objective="classification" (Sun et al.): every pair gives two rows, (x_chosen, 1) and (x_rejected, 0); a binary
    GBDT; the reward is the raw score (the logit).
objective="bt": the exact Bradley-Terry loss sum_pairs -log sigmoid(f(x_c) - f(x_r)) as a custom objective. The
    trees score each response (one row per distinct response in the pairs); the per-row gradient and Hessian are
    the sums over the pairs the response takes part in: g_c += -sigmoid(-(f_c - f_r)), g_r -= the same,
    h_c, h_r += p (1 - p) with p = sigmoid(f_c - f_r). Why not LGBMRanker/lambdarank over 2-item groups: its
    gradients are RankNet's times |delta NDCG| (a constant for two items) but, with lambdarank_norm (default on),
    are renormalised per group by log2(1 + sum lambda) / sum lambda, which reweights pairs by how well they are
    already ranked, so it does not minimise the BT log-likelihood; it also needs each response copied once per
    pair. The custom objective is the BT likelihood itself and shares rows between pairs.
"""

from __future__ import annotations

import numpy as np

from embrm.core import (
    RANDOM_STATE,
    EmbrmError,
    Integer,
    Number,
    OneOf,
    check_embeddings,
    check_fitted,
    check_pairs,
    check_params,
)


class LGBMReward:
    """Gradient-boosted reward over embeddings (LightGBM).

    Parameters
    ----------
    objective : "classification" or "bt" (see module doc).
    n_estimators, learning_rate, num_leaves, min_child_samples, subsample, colsample_bytree, reg_lambda :
        LightGBM's usual (scikit-learn API names).
    n_jobs : LightGBM threads. random_state : seed (LightGBM runs with deterministic=True).

    Attributes
    ----------
    booster_ : the lightgbm.Booster (save with booster_.save_model). n_features_in_.
    """

    # LightGBM's own limits (num_leaves in [2, 131072]; fractions in (0, 1]); n_estimators at most 10,000 trees: at
    # ~30 ms a tree (384 features, one core) that is already 5 minutes per member
    PARAMS = {"objective": OneOf(("classification", "bt")), "n_estimators": Integer(1, 10_000),
              "learning_rate": Number(0, 1, lo_open=True), "num_leaves": Integer(2, 131_072),
              "min_child_samples": Integer(1, 1_000_000), "subsample": Number(0, 1, lo_open=True),
              "colsample_bytree": Number(0, 1, lo_open=True), "reg_lambda": Number(0),
              "n_jobs": Integer(0, 1024), "random_state": RANDOM_STATE}

    def __init__(self, objective: str = "classification", n_estimators: int = 200, learning_rate: float = 0.05,
                 num_leaves: int = 31, min_child_samples: int = 20, subsample: float = 1.0,
                 colsample_bytree: float = 1.0, reg_lambda: float = 0.0, n_jobs: int = 2,
                 random_state: int | None = 0):
        self.objective = objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("objective", "n_estimators", "learning_rate", "num_leaves",
                                              "min_child_samples", "subsample", "colsample_bytree", "reg_lambda",
                                              "n_jobs", "random_state")}

    def _lgb_params(self) -> dict:
        p = {
            "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples, "feature_fraction": self.colsample_bytree,
            "bagging_fraction": self.subsample, "bagging_freq": 1 if self.subsample < 1 else 0,
            "lambda_l2": self.reg_lambda, "num_threads": self.n_jobs,
            "seed": 0 if self.random_state is None else int(self.random_state), "deterministic": True,
            "verbose": -1,
        }
        return p

    def fit(self, X, pairs, prompt_ids=None) -> "LGBMReward":
        """Fit on pairs (m, 2) of row indices into X (column 0 = preferred). prompt_ids is accepted and unused."""
        import lightgbm as lgb
        from scipy.special import expit

        check_params(self.get_params(), self.PARAMS, "LGBMReward")
        X = check_embeddings(X)
        pairs = check_pairs(pairs, len(X))
        params = self._lgb_params()
        if self.objective == "classification":
            rows = pairs.T.ravel()  # all chosen rows, then all rejected rows
            y = np.concatenate([np.ones(len(pairs)), np.zeros(len(pairs))])
            params["objective"] = "binary"
            data = lgb.Dataset(X[rows], label=y, params={"verbose": -1})
        else:
            uniq, inv = np.unique(pairs, return_inverse=True)
            inv = inv.reshape(pairs.shape)
            ic, ir, n_u = inv[:, 0], inv[:, 1], len(uniq)

            def bt_objective(preds, _data):
                margin = preds[ic] - preds[ir]
                p = expit(margin)
                g = p - 1.0  # d/dmargin of -log sigmoid(margin)
                h = np.maximum(p * (1.0 - p), 1e-12)
                grad = np.bincount(ic, g, n_u) - np.bincount(ir, g, n_u)
                hess = np.bincount(ic, h, n_u) + np.bincount(ir, h, n_u)
                return grad, hess

            params["objective"] = bt_objective
            data = lgb.Dataset(X[uniq], label=np.zeros(n_u), params={"verbose": -1})
        self.booster_ = lgb.train(params, data, num_boost_round=int(self.n_estimators))
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        """Rewards (n,) float32: the raw score (logit)."""
        check_fitted(self, "booster_")
        X = check_embeddings(X)
        if X.shape[1] != self.booster_.num_feature():
            raise EmbrmError(f"embeddings have dim {X.shape[1]} but this head was fitted on dim "
                             f"{self.booster_.num_feature()}: use the same embedder as for training")
        return np.asarray(self.booster_.predict(X, raw_score=True, num_threads=self.n_jobs), np.float32)

    @classmethod
    def from_booster(cls, booster, **params) -> "LGBMReward":
        m = cls(**params)
        m.booster_ = booster
        m.n_features_in_ = booster.num_feature()
        return m

    def __repr__(self) -> str:
        return f"LGBMReward(objective={self.objective!r}, n_estimators={self.n_estimators})"
