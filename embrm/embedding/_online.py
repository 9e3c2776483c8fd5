"""Vectors for texts that arrive one request at a time (a reward server, a reward function inside an RL trainer):
the embedder a cache spec describes, rebuilt live, in front of that cache.

    online = OnlineVectors(model.embed_spec, cache_dir="cache")
    X, n_new = online.vectors(prompts, responses)      # (n, d) float32, the texts rendered as the model saw them

A text is looked up by its content address (embrm.embedding._cache.text_key of the rendered text) in memory (the
last `memory` new texts, least recently used dropped first), then in the on-disk cache (read only: a server never
races `embrm embed` for the cache's writer lock), and only then embedded. The live embedder must reproduce the spec
the vectors were cached under, else the model would score vectors of another embedder: a mismatch is one line.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError
from embrm.embedding._cache import EmbeddingCache, fingerprint_of, text_keys
from embrm.embedding._chat import ChatTemplate
from embrm.embedding._embed import CHAT, DEFAULT_CACHE_DIR, EmbedderConfig, render
from embrm.embedding.backends import embedder_class, make_embedder

DEFAULT_MEMORY = 50_000  # new texts kept in memory (~77 MB at 384-d)
# spec keys that describe the text form (cache_spec adds them to the embedder's own spec), not the embedder
_TEXT_FORM = ("template", "chat_template", "special_tokens", "date_string", "chat")


def live_embedder(spec: dict, override: EmbedderConfig | None = None):
    """The embedder that made the vectors `spec` describes, built from the spec itself (its model, dtype, window,
    layer, pooling, ...); `override` names another live embedder for vectors made elsewhere (an `embrm import`
    of released arrays: the backend and model that reproduce them). Checked: the embedder's own spec must equal the
    stored one, except for an override of an imported spec, whose dimension must match."""
    backend = spec.get("backend")
    if override is not None:
        embedder = override.build()
        if backend != "imported" and _own(embedder.spec()) != _own(spec):
            raise EmbrmError(f"the embedder given ({override.backend}:{override.model}) is not the one the model's "
                             f"vectors came from ({backend}:{spec.get('model')}): drop the embedder options")
        return embedder
    if backend == "imported":
        raise EmbrmError(f"the model was fitted on imported vectors ({spec.get('model')}): nothing here can embed "
                         f"new texts like them: give the live embedder that made them (--backend, --model)")
    if backend not in ("st", "hf", "openai"):
        raise EmbrmError(f"the model's vectors came from backend {backend!r}, which cannot embed new texts: refit "
                         f"it on embeddings of an st, hf or openai embedder")
    params = inspect.signature(embedder_class(backend)).parameters
    options = {k: v for k, v in spec.items() if k in params and k != "model" and v is not None}
    embedder = make_embedder(backend, spec.get("model"), **options)
    stored, rebuilt = _own(spec), _own(embedder.spec())
    differ = sorted(k for k in stored.keys() | rebuilt.keys() if stored.get(k) != rebuilt.get(k))
    if differ:
        shown = ", ".join(f"{k} {stored.get(k)!r} here {rebuilt.get(k)!r}" for k in differ)
        raise EmbrmError(f"the embedder rebuilt from the model's spec differs from it ({shown}): serve on a "
                         f"machine where it resolves the same, or refit")
    return embedder


def _own(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in _TEXT_FORM}


class OnlineVectors:
    """(prompt, response) texts -> float32 vectors under a model's cache spec: memory, then the disk cache, then the
    live embedder. Thread-safe (one lock: a batch at a time, which is what an embedder wants anyway)."""

    def __init__(self, spec: dict, cache_dir: str | Path = DEFAULT_CACHE_DIR, *,
                 embedder: EmbedderConfig | None = None, memory: int = DEFAULT_MEMORY):
        if memory < 0:
            raise EmbrmError(f"memory = {memory}: give 0 or more texts to keep in memory")
        self.spec, self.memory = spec, int(memory)
        self.template = spec.get("template")
        if self.template is None:
            raise EmbrmError("the model's embedder spec has no text template: refit it with `embrm fit`")
        self.chat = ChatTemplate.from_spec(spec) if self.template == CHAT else None
        self.embedder = live_embedder(spec, embedder)
        cache = EmbeddingCache(cache_dir, spec)
        self.cache = cache if cache.path.exists() else None
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.counts = {"memory": 0, "disk": 0, "embedded": 0}

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.spec)

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    def vectors(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, int]:
        """(n, d) float32 vectors of the pairs, and how many texts had to be embedded."""
        texts, starts = render(pl.DataFrame({"prompt": prompts, "response": responses},
                                            schema={"prompt": pl.Utf8, "response": pl.Utf8}), self.template, self.chat)
        keys = text_keys(texts)
        first = {}  # each distinct text -> its first row
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        with self._lock:
            found = {k: self._recent[k] for k in first if k in self._recent}
            for k in found:
                self._recent.move_to_end(k)
            self.counts["memory"] += len(found)
            self._from_disk([k for k in first if k not in found], found)
            todo = [i for k, i in first.items() if k not in found]
            if todo:
                new = self.embedder.embed([texts[i] for i in todo], [starts[i] for i in todo]).vectors
                fresh = dict(zip((keys[i] for i in todo), np.asarray(new, np.float32)))
                found.update(fresh)
                self._remember(fresh)
                self.counts["embedded"] += len(todo)
            X = np.stack([found[k] for k in keys]) if keys else np.empty((0, self.dim), np.float32)
        return X, len(todo)

    def _from_disk(self, keys: list[str], found: dict) -> None:
        if self.cache is None or not keys:
            return
        have = pl.DataFrame({"key": keys}).join(self.cache.index(), on="key", how="semi")["key"].to_list()
        if have:
            for k, v in zip(have, self.cache.lookup(have)):
                found[k] = v
            self.counts["disk"] += len(have)

    def _remember(self, new: dict) -> None:
        if not self.memory:
            return
        self._recent.update(new)
        while len(self._recent) > self.memory:
            self._recent.popitem(last=False)

    def close(self) -> None:
        self.embedder.close()
