"""Reward models over embeddings: heads (linear, MLP, ODIN, LightGBM, Laplace), K-member ensembles, length
control, and saving/loading model directories (no pickle).
"""

from embrm.rewards._alpacaeval_lc import (
    KNOWN_BASELINES,
    AlpacaEvalGold,
    alpacaeval_controlled_gold,
    baseline_of,
)
from embrm.rewards._ensemble import (
    DEFAULT_FEATURE_FRACTION,
    FEATURE_FRACTION,
    FEATURE_HEADS,
    MODES,
    K,
    RewardEnsemble,
    fit_ensemble,
)
from embrm.rewards._length import (
    ControlledGold,
    LengthCorrection,
    controlled_gold,
    length_correlation,
    length_feature,
)
from embrm.rewards._persist import check_replaceable, load_ensemble, package_versions, save_ensemble

__all__ = [
    "alpacaeval_controlled_gold", "AlpacaEvalGold", "baseline_of", "check_replaceable", "controlled_gold", "ControlledGold", "DEFAULT_FEATURE_FRACTION", "FEATURE_FRACTION",
    "FEATURE_HEADS", "fit_ensemble", "K", "KNOWN_BASELINES", "length_correlation",
    "length_feature", "LengthCorrection", "load_ensemble", "MODES", "package_versions", "RewardEnsemble",
    "save_ensemble"
]
