"""Vectors for a dataset, computed once: EmbedderConfig -> backends (st, hf, openai, imported), the checked
Parquet cache and its verification, shards and Ray, chat templates, and `embrm import` of precomputed arrays.
"""

from embrm.embedding._cache import EmbeddingCache
from embrm.embedding._embed import (
    CHAT,
    DEFAULT_CACHE_DIR,
    DEFAULT_TEMPLATE,
    EmbedderConfig,
    EmbedResult,
    cached_embeddings,
    embed_dataset,
    embed_views,
    render,
    template_halves,
    view_groups,
)
from embrm.embedding._importer import SUFFIXES, import_embeddings
from embrm.embedding._online import OnlineVectors, live_embedder
from embrm.embedding._ray import ShardResult, embed_on_ray, ray_session
from embrm.embedding._route import RUNNERS, EmbedRoute, parsed_views
from embrm.embedding._shards import WHOLE, Shard
from embrm.embedding._verify import cache_dirs, leftovers, repair, verify

__all__ = [
    "cache_dirs", "cached_embeddings", "CHAT", "DEFAULT_CACHE_DIR", "DEFAULT_TEMPLATE", "embed_dataset",
    "embed_on_ray", "embed_views", "EmbedderConfig", "EmbeddingCache", "EmbedResult", "EmbedRoute",
    "import_embeddings", "leftovers", "live_embedder", "OnlineVectors", "parsed_views", "ray_session", "render",
    "repair", "RUNNERS", "Shard", "ShardResult", "SUFFIXES", "template_halves", "verify", "view_groups", "WHOLE"
]
