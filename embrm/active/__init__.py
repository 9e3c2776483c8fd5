"""Active labelling with a budget: which preference pairs to label next, for a Bayesian linear BT reward model
(``embrm.heads.laplace.LaplaceBT``) over cached embeddings, simulated from gold.

    from embrm.active import ActiveConfig, run_active
    result = run_active(ds, X, ActiveConfig(strategies=("random", "dopt", "bald"), rounds=10, batch=50))
    print(result.markdown()); result.write("results/active")

Strategies (``STRATEGIES``; each documented with its source in ``embrm.active.strategies``): random,
disagreement (query by committee), dopt and dopt_past (greedy D-optimal design without / with the past labels,
Shen, Sun et al. 2025), bald (Houlsby et al. 2011), dts (double Thompson sampling, Wu & Liu 2016) and maxminlcb
(Pásztor et al. 2024). The campaign (``embrm.active.campaign``): candidates, common-random-number labels, the
shared seed set, rounds of selection and warm-started refits, held-out curves and effects vs random.
"""

from embrm.active.campaign import ActiveConfig, ActiveResult, annotate, build_candidates, run_active
from embrm.active.strategies import SELECTORS, STRATEGIES, Candidates, State, greedy_dopt, select

__all__ = ["ActiveConfig", "ActiveResult", "run_active", "STRATEGIES", "SELECTORS", "select", "State",
           "Candidates", "build_candidates", "annotate", "greedy_dopt"]
