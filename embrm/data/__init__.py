"""What the data is: readers into a Dataset (responses + human pairs), the dataset registry and declarations,
labels and simulated annotators, prompt splits, RRM augmentation, generated datasets (overopt, synthetic pools) and
array datasets (embedding + gold arrays without texts, Sun et al.'s release layout, read from disk in blocks).
"""

from embrm.data._array_dataset import ArraySource, load_array_dataset
from embrm.data._arrays import ARRAY_FORMATS, ArraySplit, check_array_file, file_digest, open_array, read_split
from embrm.data._augment import AUG_COLUMNS, rrm_dataset, rrm_pairs
from embrm.data._dataset import Dataset
from embrm.data._labels import (
    MIN_PAIRS_FOR_SPLIT,
    label_given_pairs,
    pair_indices,
    simulate_pairs,
    split_pairs,
    split_prompts,
)
from embrm.data._overopt import OveroptTruth, ideal_proxy_curve, overopt_dataset, overopt_truth
from embrm.data._registry import (
    GENERATORS,
    REGISTRY,
    DatasetSpec,
    Exclusion,
    dataset_spec,
    existing_data_dir,
    half_of,
    load_dataset,
    spec_from_table,
)
from embrm.data._sun_layout import SunLayout, planted_gold, write_sun_layout
from embrm.data._synthetic import synthetic_pool

__all__ = [
    "ARRAY_FORMATS", "ArraySource", "ArraySplit", "check_array_file", "file_digest", "load_array_dataset", "open_array",
    "planted_gold",
    "read_split", "SunLayout", "write_sun_layout", "AUG_COLUMNS", "Dataset", "dataset_spec", "DatasetSpec", "Exclusion", "existing_data_dir", "GENERATORS",
    "half_of", "ideal_proxy_curve", "label_given_pairs", "load_dataset", "MIN_PAIRS_FOR_SPLIT", "overopt_dataset",
    "overopt_truth", "OveroptTruth", "pair_indices", "REGISTRY", "rrm_dataset", "rrm_pairs", "simulate_pairs", "spec_from_table",
    "split_pairs", "split_prompts", "synthetic_pool"
]
