"""Embedder backends: "st" (sentence-transformers), "hf" (causal-LM hidden state), "openai" (HTTP endpoint),
"imported" (vectors registered by `embrm import`; never embeds).

    emb = make_embedder("st")                       # packaged all-MiniLM-L6-v2, offline
    emb = make_embedder("hf", "smollm2", layer=-1)  # SmolLM2-135M GGUF, last-token pooling
    emb = make_embedder("openai", "text-embedding-3-small", dimensions=256)
    batch = emb.embed(texts)                        # EmbedBatch(vectors, n_tokens, truncated, response_cut)
    batch = emb.embed(texts, response_starts)       # too long: st/hf cut the prompt's start, not the response
"""

from __future__ import annotations

import importlib
import inspect

from embrm.core import EmbrmError
from embrm.embedding.backends._base import VERBOSE_ENV, EmbedBatch, Embedder

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# backend -> (module, class); imported lazily so `import embrm` does not pull in torch or httpx.
BACKENDS = {
    "st": ("embrm.embedding.backends._st", "STEmbedder"),
    "hf": ("embrm.embedding.backends._hf", "HFEmbedder"),
    "openai": ("embrm.embedding.backends._openai", "OpenAIEmbedder"),
    "imported": ("embrm.embedding.backends._imported", "ImportedEmbedder"),
}

__all__ = ["VERBOSE_ENV", "BACKENDS", "DEFAULT_MODEL", "EmbedBatch", "Embedder", "embedder_class", "make_embedder"]


def embedder_class(backend: str) -> type[Embedder]:
    if backend not in BACKENDS:
        raise EmbrmError(f"unknown embedder backend {backend!r}: use one of {', '.join(BACKENDS)}")
    module, name = BACKENDS[backend]
    return getattr(importlib.import_module(module), name)


def make_embedder(backend: str = "st", model: str | None = None, **options) -> Embedder:
    """Build an embedder without loading its model (loading happens on the first embed() / dim)."""
    cls = embedder_class(backend)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params) - {"model"})
    if unknown or "model" in options:
        valid = ", ".join(p for p in params if p != "model")
        bad = ", ".join(unknown) or "model (pass it positionally)"
        raise EmbrmError(f"unknown option(s) {bad} for backend {backend!r}: valid options are {valid}")
    return cls(model, **options)
