"""embrm: embed (prompt, response) texts once, then do reward-model research on a CPU.

    import embrm
    ds = embrm.load_dataset("alpaca-eval-models")           # columns, excluded probes and attachments declared
    X = embrm.EmbedderConfig().embed(ds).X                  # packaged MiniLM, cached to Parquet
    result = embrm.run_experiment(ds, X, embrm.Protocol(embrm.Learner("mlp", length_control="posthoc")))
    result.evaluation.bon["pool"].table()                   # Best-of-n per proxy on held-out prompts
    result.evaluation.bon["pool-lc"].table()                # ... judged by the length-controlled gold

The CLI (`embrm ...`) is a thin layer over these names; every command, study job and method walks
embrm.pipeline.
"""

from embrm.augment import rrm_dataset
from embrm.data import Dataset
from embrm.datasets import DatasetSpec, Exclusion, load_dataset
from embrm.embed import EmbedderConfig, cached_embeddings, embed_dataset
from embrm.errors import EmbrmError
from embrm.experiment import StudyResult, run_study
from embrm.findings import Finding
from embrm.length import LengthCorrection, controlled_gold, length_feature
from embrm.methods import REGISTRY as METHODS
from embrm.methods import MethodResult, run_method
from embrm.overopt import overopt_dataset
from embrm.pipeline import (
                            ExperimentResult,
                            FittedModel,
                            evaluate,
                            fit,
                            load_model,
                            run_experiment,
                            split,
                            training_pairs,
)
from embrm.protocol import DEFAULT_LEARNERS, LabelConfig, Learner, Protocol
from embrm.study import Study, load_study

__version__ = "0.2.0"
__all__ = [
    "DEFAULT_LEARNERS", "Dataset", "DatasetSpec", "EmbedderConfig", "EmbrmError", "Exclusion", "ExperimentResult",
    "Finding", "FittedModel", "LabelConfig", "Learner", "LengthCorrection", "METHODS", "MethodResult", "Protocol",
    "Study", "StudyResult", "cached_embeddings", "controlled_gold", "embed_dataset", "evaluate", "fit",
    "length_feature", "load_dataset", "load_model", "load_study", "overopt_dataset", "rrm_dataset", "run_experiment",
    "run_method",
    "run_study", "split", "training_pairs",
]
