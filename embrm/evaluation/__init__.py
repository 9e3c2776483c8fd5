"""Judging scores against gold: per-prompt pools, aggregation of members, the exact Best-of-n estimator and its
grid, pairwise metrics, calibration, the conformal bound, paired statistics, held-out evaluation and plots.
"""

from embrm.evaluation._aggregate import AGGREGATION_RULES, AGGREGATIONS, aggregate_all, standardize
from embrm.evaluation._bon import (
    ALL_N_LIMIT,
    GRID_POINTS,
    BonCurves,
    PromptBon,
    bon_curves,
    bon_weight_tensor,
    bon_weights,
    curves_frame,
    expected_best_of_n,
    fit_gao,
    fit_gao_rl,
    kl_bon,
    kl_bon_exact,
    log_grid,
    per_prompt_bon,
    pick_means,
)
from embrm.evaluation._calibration import LOG_T_BOUNDS, Reliability, plot_reliability, pooled_reliability, reliability
from embrm.evaluation._conformal import ConformalResult
from embrm.evaluation._decide import (
    Look,
    Power,
    SequentialTest,
    detectable_effect,
    family_control,
    power_of,
    se_at,
    spending_bounds,
)
from embrm.evaluation._heldout import (
    BonResult,
    Evaluation,
    FitMetrics,
    LengthEffect,
    PromptAccuracy,
    PromptPicks,
    ProxySummary,
    PublishedPick,
    best_of_n,
    conformal_proxy,
    ensemble_proxies,
    excluded_indicator,
    gold_order_pairs,
    length_proxy,
    pairwise_metrics,
    pool_curves,
    published_picks,
    rows_of,
    top_picks,
)
from embrm.evaluation._metrics import (
    bt_log_loss,
    expected_calibration_error,
    length_reward,
    pairwise_accuracy,
    per_prompt_spearman,
)
from embrm.evaluation._plots import plot_bon, plot_gao_fit, pyplot, save_figure
from embrm.evaluation._pools import Pools, avg_ranks, group_pools, score_columns, tie_average
from embrm.evaluation._simulate import Coverage, Design, coverage, simulate_units
from embrm.evaluation._stats import ESTIMATORS, VERDICTS, Components, Effect, Unit, agreement, paired_effect, verdict
from embrm.evaluation._sun import SUN_N, SunMetrics, sun_metrics

__all__ = [
    "aggregate_all", "AGGREGATION_RULES", "AGGREGATIONS", "agreement", "ALL_N_LIMIT", "avg_ranks", "best_of_n",
    "bon_curves", "bon_weight_tensor", "bon_weights", "BonCurves", "BonResult", "bt_log_loss", "Components",
    "conformal_proxy", "ConformalResult", "Coverage", "coverage", "curves_frame", "Design", "detectable_effect",
    "Effect",
    "ensemble_proxies", "ESTIMATORS", "Evaluation", "excluded_indicator", "expected_best_of_n",
    "expected_calibration_error", "family_control", "fit_gao", "fit_gao_rl", "FitMetrics", "gold_order_pairs",
    "GRID_POINTS", "group_pools", "kl_bon", "kl_bon_exact", "length_proxy", "length_reward", "LengthEffect",
    "log_grid", "LOG_T_BOUNDS",
    "Look", "paired_effect", "pairwise_accuracy", "pairwise_metrics", "per_prompt_bon", "per_prompt_spearman",
    "pick_means", "plot_bon", "plot_gao_fit", "plot_reliability", "pool_curves", "pooled_reliability", "Pools", "Power",
    "power_of", "PromptAccuracy", "PromptBon", "PromptPicks", "ProxySummary", "published_picks", "PublishedPick",
    "pyplot", "Reliability", "reliability", "rows_of", "save_figure", "score_columns", "se_at", "SequentialTest",
    "simulate_units", "spending_bounds", "standardize", "sun_metrics", "SUN_N", "SunMetrics", "tie_average",
    "top_picks", "Unit", "verdict", "VERDICTS"
]
