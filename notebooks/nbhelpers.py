"""What the four notebooks share: where they cache, how they find the data, and the small real subset they run on.

A notebook runs with its own folder as the working directory (nbmake and Jupyter both do this), so `import nbhelpers`
finds this file and the relative paths below point into the project.
"""

import numpy as np
import polars as pl

import embrm

# The notebooks' own embedding cache (inside the project's ignored cache/): they share it, so only the first one to
# run embeds the subset; the CLI's cache next to it is never touched. Figures are written next to it.
CACHE_DIR = "../cache/notebooks"
FIG_DIR = f"{CACHE_DIR}/figures"
SHARED_DATA = "../../shared/data"  # the shared data folder next to the project


def load_dataset(name: str = "alpaca-eval-models") -> embrm.Dataset:
    """embrm.load_dataset from $EMBRM_DATA_DIR (else embrm's default, ~/.cache/embrm/data), else SHARED_DATA."""
    try:
        return embrm.load_dataset(name)
    except embrm.EmbrmError:
        return embrm.load_dataset(name, data_dir=SHARED_DATA)


def small_subset(ds: embrm.Dataset, n_prompts: int = 24, n_models: int = 12, seed: int = 0) -> embrm.Dataset:
    """n_prompts random prompts x n_models usable models spread evenly over the leaderboard (by mean gold)."""
    R = ds.without_excluded().responses  # the dataset's declared exclusion (its hacking probes) dropped
    ranked = R.group_by("model").agg(pl.col("gold").mean()).sort("gold", "model")["model"]
    models = ranked.gather([round(i * (len(ranked) - 1) / (n_models - 1)) for i in range(n_models)])
    prompts = R["prompt_id"].unique().sort().sample(n_prompts, seed=seed)
    keep = pl.col("model").is_in(models.implode()) & pl.col("prompt_id").is_in(prompts.implode())
    return ds.filter(keep, name=f"{ds.name}-small")


def embed_answers(ds: embrm.Dataset):
    """The packaged MiniLM's embeddings of each (prompt, first 300 characters of the answer), cached in CACHE_DIR.

    The embedder sees a short prefix (seconds on a laptop CPU) while `ds` keeps the full answers, so the length
    baseline measures the real answer length."""
    short = ds.responses.with_columns(pl.col("response").str.slice(0, 300))
    return embrm.EmbedderConfig(dtype="float32").embed(short, cache_dir=CACHE_DIR, progress=False)


def small_real_subset() -> tuple[embrm.Dataset, np.ndarray]:
    """The notebooks' real subset of alpaca-eval-models and its (n, 384) float32 embeddings."""
    small = small_subset(load_dataset("alpaca-eval-models"))
    return small, embed_answers(small).X
