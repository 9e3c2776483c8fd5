"""embrm: embed (prompt, response) texts once, then do reward-model research on a CPU.

    import embrm
    ds = embrm.load_dataset("alpaca-eval-models")           # columns, excluded probes and attachments declared
    X = embrm.EmbedderConfig().embed(ds).X                  # packaged MiniLM, cached to Parquet
    result = embrm.run_experiment(ds, X, embrm.Protocol(embrm.Learner("mlp", length_control="posthoc")))
    result.evaluation.bon["pool"].table()                   # Best-of-n per proxy on held-out prompts
    result.evaluation.bon["pool-lc"].table()                # ... judged by the length-controlled gold

The CLI (`embrm ...`) is a thin layer over these names; every command, study job and method walks
embrm.pipeline. The packages, lowest first (a package imports only those before it):

    core -> data -> embedding -> evaluation -> rewards -> pipeline -> methods, active -> studies -> cli
"""

from embrm import _compat
from embrm.core import EmbrmError
from embrm.data import Dataset, DatasetSpec, Exclusion, load_dataset, overopt_dataset, rrm_dataset
from embrm.embedding import EmbedderConfig, cached_embeddings, embed_dataset
from embrm.methods import REGISTRY as METHODS
from embrm.methods import MethodResult, run_method
from embrm.pipeline import (
    DEFAULT_LEARNERS,
    ExperimentResult,
    FittedModel,
    LabelConfig,
    Learner,
    Protocol,
    evaluate,
    fit,
    load_model,
    run_experiment,
    split,
    training_pairs,
)
from embrm.rewards import LengthCorrection, controlled_gold, length_feature
from embrm.studies import Finding, Study, StudyResult, load_study, run_study

__version__ = "0.2.0"
__all__ = [
    "DEFAULT_LEARNERS", "Dataset", "DatasetSpec", "EmbedderConfig", "EmbrmError", "Exclusion", "ExperimentResult",
    "Finding", "FittedModel", "LabelConfig", "Learner", "LengthCorrection", "METHODS", "MethodResult", "Protocol",
    "Study", "StudyResult", "cached_embeddings", "controlled_gold", "embed_dataset", "evaluate", "fit",
    "length_feature", "load_dataset", "load_model", "load_study", "overopt_dataset", "rrm_dataset", "run_experiment",
    "run_method", "run_study", "split", "training_pairs",
]

_compat.install()  # the pre-0.2 module paths, deprecated
