"""Active labelling with a budget: which preference pairs to label next, for a Bayesian linear BT reward model
(``embrm.rewards.heads.LaplaceBT``) over cached embeddings, simulated from gold.

    from embrm.active import ActiveConfig, run_active
    result = run_active(ds, X, ActiveConfig(strategies=("random", "dopt", "bald"), rounds=10, batch=50))
    print(result.markdown()); result.write("results/active")
    result.summary["bald"].auc_vs_random                        # typed: an embrm.evaluation.Effect (None for random)

Strategies (``STRATEGIES``; each documented with its source in ``embrm.active._strategies``): random,
disagreement (query by committee), dopt and dopt_past (greedy D-optimal design without / with the past labels,
Shen, Sun et al. 2025), bald (Houlsby et al. 2011), dts (double Thompson sampling, Wu & Liu 2016) and maxminlcb
(Pásztor et al. 2024). The campaign (``embrm.active._campaign``): candidates, common-random-number labels, the
shared seed set, rounds of selection and warm-started refits, held-out curves and effects vs random.
"""

import warnings

import numpy as np

from embrm.active._campaign import (
    ActiveConfig,
    ActiveResult,
    ActiveSummary,
    StrategySummary,
    build_candidates,
    run_active,
)
from embrm.active._strategies import (
           SELECTORS,
           STRATEGIES,
           Candidates,
           State,
           bald,
           disagreement,
           dopt,
           dopt_past,
           dts,
           greedy_dopt,
           log_det_gain,
           maxminlcb,
           random_pairs,
           select,
)
from embrm.pipeline import LabelConfig, label_pairs


def annotate(pairs: np.ndarray, gold: np.ndarray, u: np.ndarray, *, beta: float | None = 10.0,
             flip: float | None = None, scale: float = 1.0) -> np.ndarray:
    """Deprecated (kept for one release): embrm.pipeline.label_pairs(pairs, gold, u, LabelConfig(...), scale)."""
    warnings.warn("embrm.active.annotate is deprecated: use embrm.pipeline.label_pairs with a LabelConfig",
                  DeprecationWarning, stacklevel=2)
    return label_pairs(pairs, gold, u, LabelConfig("simulated", beta, flip), scale)


__all__ = [
    "ActiveConfig", "ActiveResult", "ActiveSummary", "annotate", "bald", "build_candidates", "Candidates",
    "disagreement", "dopt", "dopt_past", "dts", "greedy_dopt", "log_det_gain", "maxminlcb", "random_pairs",
    "run_active", "select", "SELECTORS", "State", "STRATEGIES", "StrategySummary"
]
