"""Active labelling with a budget: which preference pairs to label next, for a Bayesian linear BT reward model
(``embrm.rewards.heads._laplace.LaplaceBT``) over cached embeddings, simulated from gold.

    from embrm.active import ActiveConfig, run_active
    result = run_active(ds, X, ActiveConfig(strategies=("random", "dopt", "bald"), rounds=10, batch=50))
    print(result.markdown()); result.write("results/active")

Strategies (``STRATEGIES``; each documented with its source in ``embrm.active._strategies``): random,
disagreement (query by committee), dopt and dopt_past (greedy D-optimal design without / with the past labels,
Shen, Sun et al. 2025), bald (Houlsby et al. 2011), dts (double Thompson sampling, Wu & Liu 2016) and maxminlcb
(Pásztor et al. 2024). The campaign (``embrm.active._campaign``): candidates, common-random-number labels, the
shared seed set, rounds of selection and warm-started refits, held-out curves and effects vs random.
"""

from embrm.active._campaign import ActiveConfig, ActiveResult, annotate, build_candidates, run_active
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

__all__ = [
    'ActiveConfig',
    'ActiveResult',
    'Candidates',
    'SELECTORS',
    'STRATEGIES',
    'State',
    'annotate',
    'bald',
    'build_candidates',
    'disagreement',
    'dopt',
    'dopt_past',
    'dts',
    'greedy_dopt',
    'log_det_gain',
    'maxminlcb',
    'random_pairs',
    'run_active',
    'select',
]
