"""Reward heads over frozen embeddings: scikit-learn-style estimators fitted on preference pairs.

Every head has the same interface::

    head = LinearBT(C=1.0).fit(X, pairs)          # X: (n, d) float32, pairs: (m, 2) int64, column 0 preferred
    rewards = head.predict(X)                      # (n,) float32 rewards (BT logits: defined up to a shift)

    LinearBT      logistic regression without intercept on x_chosen - x_rejected (mirrored pairs)
    MLPReward     d -> 1024 -> 512 -> 1 ReLU MLP (Sun et al.), BT or classification loss, early stopping
    LGBMReward    LightGBM, classification (chosen 1 / rejected 0) or an exact Bradley-Terry custom objective
    LaplaceBT     Bayesian linear BT (Laplace approximation): posterior mean, epistemic std, posterior draws
"""

from __future__ import annotations

from embrm.core import check_embeddings, check_fitted, check_group_ids, check_pairs
from embrm.rewards.heads._laplace import LaplaceBT
from embrm.rewards.heads._lgbm import LGBMReward
from embrm.rewards.heads._linear import LinearBT
from embrm.rewards.heads._mlp import MLPReward, forward_stack, init_params, train_stack
from embrm.rewards.heads._odin import ODIN_PARAMS, train_odin
from embrm.rewards.heads._stack import MemberData

HEADS = {"linear": LinearBT, "mlp": MLPReward, "lgbm": LGBMReward, "laplace": LaplaceBT}

__all__ = [
    "check_embeddings", "check_fitted", "check_group_ids", "check_pairs", "forward_stack", "HEADS", "init_params",
    "LaplaceBT", "LGBMReward", "LinearBT", "MemberData", "MLPReward", "ODIN_PARAMS", "train_odin", "train_stack"
]
