"""The one path from a dataset to a result: a Protocol (learner, labels, aggregations, grid) walked by split ->
training_pairs -> fit -> evaluate. Every command, study job, method and notebook goes through it; a method that
needs a variant takes it from here too: label_pairs (the annotator on given pairs), fit_pairs (the fit step on
pairs it drew).
"""

from embrm.pipeline._protocol import (
    CALIBRATED,
    DEFAULT_AGGREGATIONS,
    DEFAULT_LEARNERS,
    N_GRIDS,
    LabelConfig,
    Learner,
    Protocol,
    checked_n_grid,
)
from embrm.pipeline._steps import (
    ExperimentResult,
    FittedModel,
    SavedModel,
    check_aligned,
    evaluate,
    fit,
    fit_pairs,
    label_pairs,
    load_model,
    model_embeddings,
    pool_lc,
    proxies,
    run_experiment,
    run_experiments,
    score,
    split,
    training_pairs,
)

__all__ = [
    "CALIBRATED", "check_aligned", "checked_n_grid", "DEFAULT_AGGREGATIONS", "DEFAULT_LEARNERS", "evaluate",
    "ExperimentResult", "fit", "fit_pairs", "FittedModel", "label_pairs", "LabelConfig", "Learner", "load_model",
    "model_embeddings", "N_GRIDS", "pool_lc", "Protocol", "proxies", "run_experiment", "run_experiments", "SavedModel",
    "score", "split", "training_pairs"
]
