"""Shared fixtures over the real data (read from ../shared/data, never copied into the project)."""

from dataclasses import replace

import polars as pl
import pytest

from realdata import DATA_DIR


@pytest.fixture(scope="session")
def models_subset(tmp_path_factory):
    """(Dataset, X): 30 prompts x 15 models of the real 58-model pool (answers cut to 300 characters), embedded
    once per session with the real packaged MiniLM into a temporary cache."""
    from embrm.datasets import load_dataset
    from embrm.embed import embed_dataset
    from embrm.embedders import make_embedder

    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    r = ds.responses
    models = r["model"].unique().sort().to_list()[:15]
    prompts = r["prompt_id"].unique().sort().to_list()[:30]
    r = r.filter(pl.col("prompt_id").is_in(prompts) & pl.col("model").is_in(models))
    ds = replace(ds, responses=r.with_columns(pl.col("response").str.slice(0, 300)))
    X = embed_dataset(ds, make_embedder("st"), cache_dir=tmp_path_factory.mktemp("subset-cache"), progress=False).X
    return ds, X
