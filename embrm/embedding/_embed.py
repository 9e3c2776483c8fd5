"""Embed a dataset's responses through the cache: render -> key -> embed only missing keys -> aligned matrix.

The text embedded for a response is `template.format(prompt=..., response=...)`; the default template is
DEFAULT_TEMPLATE. The template is part of the cache fingerprint, so changing it never mixes vectors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import string
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Integer, Progress, Rows, check_value
from embrm.data import Dataset
from embrm.embedding._cache import EmbeddingCache, text_keys
from embrm.embedding._chat import NO_TEMPLATE, ChatTemplate
from embrm.embedding._shards import WHOLE, Shard, record_plan, shard_batches
from embrm.embedding.backends import Embedder, make_embedder

DEFAULT_TEMPLATE = "{prompt}\n\n{response}"
CHAT = "chat"  # the model's own chat rendering of a user turn and an assistant turn (embrm.embedding._chat)
TEMPLATE_NAMES = {"plain": DEFAULT_TEMPLATE, "default": DEFAULT_TEMPLATE}
DEFAULT_CACHE_DIR = "cache"
# The sizes of an embedder's work, checked when it is described (option, study key, API): a batch is one cache part
# held in memory; a window or token budget beyond these is no model's.
EMBEDDER_RULES = {
    "batch_size": Integer(1, 65_536),
    "max_length": Integer(1, 1_048_576, none=True),
    "max_tokens": Integer(1, 1 << 30, none=True),
    "layer": Integer(-4096, 4095),
}


@dataclass
class EmbedResult:
    X: np.ndarray  # (n_responses, d) float32, aligned with the responses table
    keys: list[str]  # the cache key of each row
    n_texts: int
    n_unique: int
    n_embedded: int
    n_cached: int
    dim: int
    cache_dir: str
    fingerprint: str
    spec: dict
    seconds: float
    n_truncated: int = 0  # texts cut to the embedder's window (the prompt's start goes first)
    n_response_cut: int = 0  # ... of which the response itself lost tokens (longer than the window)
    indistinguishable: list[str] = field(default_factory=list)  # prompt ids whose distinct responses got one vector
    precision: str = ""  # how the embedder computed them (Embedder.precision: what dtype "auto" chose, and why)

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in
                ("n_texts", "n_unique", "n_embedded", "n_cached", "dim", "cache_dir", "fingerprint", "seconds",
                 "n_truncated", "n_response_cut", "indistinguishable", "precision")}

    def warnings(self) -> list[str]:
        """What a researcher must know about these vectors, one line each."""
        lines = []
        if self.n_response_cut:
            lines.append(f"{self.n_response_cut} of {self.n_texts} responses lost tokens to the embedder's window "
                         f"(their ends are not seen): a longer --max-length or another model sees them")
        if self.indistinguishable:
            shown = ", ".join(self.indistinguishable[:5]) + (" ..." if len(self.indistinguishable) > 5 else "")
            lines.append(f"{len(self.indistinguishable)} prompt(s) whose different responses all got the same vector "
                         f"(no reward can tell them apart): {shown}")
        return lines


@dataclass(frozen=True)
class EmbedderConfig:
    """Which embedder and text template: built from the CLI options, a study's [embedder] table or a notebook.

    Options that a backend does not use (layer/pooling outside hf, base_url/api_key_env outside openai, dtype and
    max_length on openai) are left out when it is built, so one set of options serves every backend."""

    backend: str = "st"
    model: str | None = None
    dtype: str = "auto"
    max_length: int | None = None
    layer: int = -1
    pooling: str = "last"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    template: str = DEFAULT_TEMPLATE
    batch_size: int = 64
    device: str = "auto"
    max_tokens: int | None = None  # hf: token budget per forward batch (rows x longest row); vectors unchanged

    def __post_init__(self):  # named templates are stored as what they stand for: one cache per text form
        object.__setattr__(self, "template", TEMPLATE_NAMES.get(self.template, self.template))
        for name, rule in EMBEDDER_RULES.items():
            check_value(name, getattr(self, name), rule)
        if self.template != CHAT:  # a chat template is the model's own: checked when its tokenizer loads
            template_halves(self.template)

    def build(self):
        if self.backend == "openai":
            options = dict(base_url=self.base_url, api_key_env=self.api_key_env)
        else:
            options = dict(dtype=self.dtype, max_length=self.max_length, device=self.device)
            if self.backend == "hf":
                options.update(layer=self.layer, pooling=self.pooling, max_tokens=self.max_tokens)
        return make_embedder(self.backend, self.model, **{k: v for k, v in options.items() if v is not None})

    def embed(self, data, cache_dir: str | Path = DEFAULT_CACHE_DIR, progress: bool | None = None) -> EmbedResult:
        return embed_dataset(data, self.build(), cache_dir=cache_dir, template=self.template,
                             batch_size=self.batch_size, progress=progress)

    def embed_shard(self, data, shard: Shard, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                    progress: bool | None = None) -> ShardResult:
        return embed_shard(data, self.build(), shard, cache_dir=cache_dir, template=self.template,
                           batch_size=self.batch_size, progress=progress)


def render(responses: pl.DataFrame, template: str = DEFAULT_TEMPLATE,
           chat: ChatTemplate | None = None) -> tuple[list[str], list[int]]:
    """The exact texts sent to the model, and where each response starts in its text (for response pooling).
    template "chat" renders with the model's chat template (`chat`, from chat_template_of)."""
    template = TEMPLATE_NAMES.get(template, template)
    if template == CHAT:
        if chat is None:
            raise EmbrmError("--template chat needs the model's chat template (see chat_template_of in "
                             "embrm/embedding/_embed.py)")
        return chat.render(responses["prompt"].to_list(), responses["response"].to_list())
    head, tail = template_halves(template)
    prompts, answers = responses["prompt"].to_list(), responses["response"].to_list()
    prefixes = [head.format(prompt=p) for p in prompts]
    texts = [pre + a + tail.format(prompt=p) for pre, a, p in zip(prefixes, answers, prompts)]
    return texts, [len(p) for p in prefixes]


def template_halves(template: str) -> tuple[str, str]:
    """A template as (head, tail): format strings in {prompt} alone, on either side of its one {response} field.
    Parsed as str.format parses it, so '{{prompt}}' is the literal text it renders to, not a field."""
    fix = "use {prompt} and {response} (each a field; literal braces as {{ }}), or 'chat' or 'plain'"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise EmbrmError(f"template {template!r}: {e}: {fix}", field="template") from None
    halves, fields = ([], []), []
    for literal, name, spec, conversion in parts:
        half = halves[fields.count("response")]
        half.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        fields.append(name)
        if name == "prompt":
            half.append("{prompt" + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
        elif name != "response" or spec or conversion:
            raise EmbrmError(f"template {template!r}: field {{{name}}} is not allowed: {fix}", field="template")
    if fields.count("response") != 1 or "prompt" not in fields:
        raise EmbrmError(f"template {template!r} must hold {{response}} once and {{prompt}} at least once (as "
                         f"fields, not escaped): {fix}", field="template")
    try:
        head, tail = ("".join(h) for h in halves)
        head.format(prompt=""), tail.format(prompt="")
    except ValueError as e:  # a bad format spec on {prompt}
        raise EmbrmError(f"template {template!r}: {e}: {fix}", field="template") from None
    return head, tail


def chat_template_of(embedder) -> ChatTemplate:
    """The embedder's chat template (loads its tokenizer only); one line when its backend or model has none."""
    method = getattr(embedder, "chat_template", None)
    if method is None:
        raise EmbrmError(f"--template chat: the {getattr(embedder, 'backend', '?')} backend renders no chat "
                         f"template (the hf backend does): {NO_TEMPLATE}")
    return method()


def cache_spec(embedder, template: str, chat: ChatTemplate | None = None,
               view: tuple[int, str] | None = None) -> dict:
    """Everything that determines a cached vector: the embedder's own spec plus the text template (and, for
    "chat", the chat template's source, special tokens and date, so the texts can be rendered without a model)."""
    template = TEMPLATE_NAMES.get(template, template)
    spec = embedder.view_spec(*view) if view is not None else embedder.spec()
    return {**spec, "template": template, **(chat.spec() if chat is not None else {})}


def embed_texts(texts: list[str], embedder, cache: EmbeddingCache | list[EmbeddingCache], *,
                response_starts: list[int] | None = None, batch_size: int = 64, progress: bool | None = None,
                label: str = "embed", shard: Shard = WHOLE,
                views: list[tuple[int, str]] | None = None) -> tuple[list[str], int]:
    """Embed this shard's texts that the cache lacks (embrm.embedding._shards), one atomic part per batch. With `views`
    ((layer, pooling) pairs, one cache each), one forward pass per batch fills every view's cache.
    Returns (keys, n_embedded)."""
    caches = cache if isinstance(cache, list) else [cache]
    keys = text_keys(texts)
    have = [c.index().select("key") for c in caches]
    done = functools.reduce(lambda a, b: a.join(b, on="key", how="semi"), have)  # cached in every view
    lengths = pl.Series(texts, dtype=pl.Utf8).str.len_chars().to_numpy()
    batches = shard_batches(keys, lengths, batch_size, shard, done)
    if batches and shard.count > 1:
        record_plan(caches, keys, batch_size, shard)  # shards must cut one plan
    n_embedded = sum(map(len, batches))
    if batches:
        with Progress(n_embedded, label, "texts", progress) as bar:
            for batch in batches:
                chunk = [texts[i] for i in batch]
                starts = [response_starts[i] for i in batch] if response_starts else None
                outs = embedder.embed_views(chunk, starts, views) if views else [embedder.embed(chunk, starts)]
                for c, cached, out in zip(caches, have, outs):
                    _write_missing(c, cached, [keys[i] for i in batch], out)
                bar.advance(len(batch))
    if shard.count == 1:
        for c in caches:
            c.settle()  # also merges the parts a killed run left (shards merge in embed_shard, once complete)
    return keys, n_embedded


def _write_missing(cache: EmbeddingCache, cached: pl.DataFrame, keys: list[str], out) -> None:
    """One part with the rows of `out` whose keys the cache lacked (a view may hold texts the others lack)."""
    new = ~pl.Series(keys).is_in(cached["key"].implode()).to_numpy()
    if not new.any():
        return
    flags = [None if f is None else np.asarray(f)[new] for f in (out.truncated, getattr(out, "response_cut", None))]
    cache.write_part([k for k, n in zip(keys, new) if n], out.vectors[new],
                     None if out.n_tokens is None else np.asarray(out.n_tokens)[new], *flags)


@dataclass
class ShardResult:
    """What one shard did; `result` is the whole dataset's EmbedResult once every shard's texts are cached."""

    shard: Shard
    n_embedded: int
    n_missing: int  # texts of the other shards not cached yet
    cache_dir: str
    fingerprint: str
    seconds: float
    result: EmbedResult | None = None

    def summary(self) -> dict:
        return {"shard": str(self.shard), "n_embedded": self.n_embedded, "n_missing": self.n_missing,
                "complete": self.result is not None, "cache_dir": self.cache_dir, "fingerprint": self.fingerprint,
                "seconds": self.seconds}


def embed_dataset(data: Dataset | pl.DataFrame, embedder=None, *, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                  template: str = DEFAULT_TEMPLATE, batch_size: int = 64,
                  progress: bool | None = None) -> EmbedResult:
    """The (n, d) float32 embedding matrix aligned with the dataset's responses, embedding only what is missing.

    A warm call (everything cached) never loads the model.
    """
    if isinstance(data, Dataset) and data.vectors is not None:
        return carried_vectors(data)
    return embed_shard(data, embedder, WHOLE, cache_dir=cache_dir, template=template, batch_size=batch_size,
                       progress=progress).result


def embed_shard(data: Dataset | pl.DataFrame, embedder, shard: Shard, *, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                template: str = DEFAULT_TEMPLATE, batch_size: int = 64, progress: bool | None = None) -> ShardResult:
    """Embed one shard's share of the dataset's missing texts (embrm.embedding.Shard: N processes, one cache). The
    last shard to finish merges the cache and gets the whole EmbedResult; the others get result=None."""
    embedder = embedder if embedder is not None else make_embedder()
    return _embed(data, embedder, None, shard, cache_dir, template, batch_size, progress)[0]


def embed_views(data: Dataset | pl.DataFrame, configs: list[EmbedderConfig], *,
                cache_dir: str | Path = DEFAULT_CACHE_DIR, progress: bool | None = None,
                shard: Shard = WHOLE) -> list[ShardResult]:
    """Several layers x poolings of one causal LM from one forward pass per batch: one cache (fingerprint) per
    config, each equal to what `config.embed(data)` caches. The configs may differ only in layer and pooling."""
    base = replace(configs[0], layer=-1, pooling="last")
    if any(replace(c, layer=-1, pooling="last") != base for c in configs):
        raise EmbrmError("embedding several views in one pass needs configs that differ only in layer and pooling")
    embedder = base.build()
    if not hasattr(embedder, "embed_views"):
        raise EmbrmError(f"the {base.backend} backend has one view per model: several layers/poolings need the hf "
                         f"backend")
    views = [(c.layer, c.pooling) for c in configs]
    if len(set(views)) < len(views):
        raise EmbrmError(f"views {views}: each layer/pooling pair once", field="views")
    return _embed(data, embedder, views, shard, cache_dir, base.template, base.batch_size, progress)


def view_groups(configs: list[EmbedderConfig]) -> list[list[EmbedderConfig]]:
    """The hf configs that share one model and differ only in layer/pooling (groups of two or more): each group
    is one embed_views call instead of one forward pass per config."""
    groups: dict[EmbedderConfig, list[EmbedderConfig]] = {}
    for c in dict.fromkeys(configs):
        if c.backend == "hf":
            groups.setdefault(replace(c, layer=-1, pooling="last"), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def _embed(data, embedder, views, shard: Shard, cache_dir, template: str, batch_size: int,
           progress: bool | None) -> list[ShardResult]:
    """The one path: render, open one cache per view, embed this shard's missing texts, then (every text present)
    merge and gather each view's aligned matrix."""
    start = time.perf_counter()
    responses = data.responses if isinstance(data, Dataset) else data
    if batch_size < 1:
        raise EmbrmError(f"--batch-size must be >= 1 (got {batch_size})")
    texts, starts, caches = dataset_caches(responses, embedder, template, cache_dir, views)
    name = data.name if isinstance(data, Dataset) else "responses"
    label = f"embed {name}" + (f" (shard {shard})" if shard.count > 1 else "")
    keys, n_embedded = embed_texts(texts, embedder, caches, response_starts=starts, batch_size=batch_size,
                                   progress=progress, label=label, shard=shard, views=views)
    outcomes = [_settled(c, responses, keys, n_embedded, shard) for c in caches]
    precision = embedder.precision() if isinstance(embedder, Embedder) else str(embedder.spec().get("dtype", ""))
    for outcome in outcomes:
        outcome.seconds = round(time.perf_counter() - start, 3)
        if outcome.result is not None:
            outcome.result.seconds, outcome.result.precision = outcome.seconds, precision
    return outcomes


def dataset_caches(responses: pl.DataFrame, embedder, template: str, cache_dir,
                   views: list[tuple[int, str]] | None = None) -> tuple[list[str], list[int], list[EmbeddingCache]]:
    """(texts, response starts, one cache per view) of the responses as `embedder` embeds them under `template`."""
    chat = chat_template_of(embedder) if TEMPLATE_NAMES.get(template, template) == CHAT else None
    texts, starts = render(responses, template, chat)
    return texts, starts, [EmbeddingCache(cache_dir, cache_spec(embedder, template, chat, v)) for v in views or [None]]


def _settled(cache: EmbeddingCache, responses: pl.DataFrame, keys: list[str], n_embedded: int,
             shard: Shard) -> ShardResult:
    outcome = ShardResult(shard, n_embedded, 0, str(cache.path), cache.fingerprint, 0.0)
    # Shards: look under the writer lock, where merges happen, so another shard's merge never removes a part
    # while this one reads; the first shard to see every text merges (settle), the others find one part.
    with cache.writing() if shard.count > 1 else contextlib.nullcontext():
        outcome.n_missing = len(cache.missing(keys)) if shard.count > 1 else 0
        if not outcome.n_missing:
            cache.settle()  # the parts of the other shards (a no-op for a single run: embed_texts merged)
            outcome.result = _gathered(responses, keys, cache, n_embedded)
    return outcome


def _gathered(responses: pl.DataFrame, keys: list[str], cache: EmbeddingCache, n_embedded: int) -> EmbedResult:
    X, truncated, response_cut = cache.gather(keys, "embedding", "truncated", "response_cut")
    n_unique = len(set(keys))
    return EmbedResult(X, keys, len(keys), n_unique, n_embedded, n_unique - n_embedded, X.shape[1],
                       str(cache.path), cache.fingerprint, cache.spec, 0.0,
                       int(truncated.sum()), int(response_cut.sum()), indistinguishable_prompts(responses, X))


def carried_vectors(ds: Dataset) -> EmbedResult:
    """The vectors a dataset comes with (a generated pool, or an array dataset's memory-mapped files as a
    embrm.core.Rows, left on disk), in the form embedding returns: nothing is embedded or cached; the fingerprint is
    a digest of the vectors themselves (of the files' SHA-256 for arrays)."""
    X = ds.vectors if isinstance(ds.vectors, Rows) else np.ascontiguousarray(ds.vectors, dtype=np.float32)
    if X.ndim != 2 or len(X) != len(ds.responses):
        raise EmbrmError(f"{ds.name}: its vectors have shape {X.shape} for {len(ds.responses)} responses: one row "
                         f"per response")
    digest = X.digest if isinstance(X, Rows) else hashlib.blake2b(X.tobytes(), digest_size=16).hexdigest()
    spec = {"backend": "carried", "model": ds.name, "dim": int(X.shape[1])}
    return EmbedResult(X, ds.responses["response_id"].to_list(), len(X), len(X), 0, len(X), int(X.shape[1]), "",
                       f"carried-{digest}", spec, 0.0)


def indistinguishable_prompts(responses: pl.DataFrame, X: np.ndarray) -> list[str]:
    """Prompts with at least two different responses whose vectors are all identical: every reward ties on them
    (e.g. a long prompt pushed the responses out of the embedder's window). Exact: each row is compared with the
    first row of its prompt."""
    if len(responses) == 0:
        return []
    first = (responses.select("prompt_id").with_row_index("row")
             .with_columns(first=pl.col("row").first().over("prompt_id"))["first"].to_numpy())
    same = (X == X[first]).all(axis=1)
    rows = (responses.select("prompt_id", "response").with_columns(same=pl.Series(same))
            .group_by("prompt_id").agg(pl.col("response").n_unique().alias("texts"), pl.col("same").all()))
    return rows.filter((pl.col("texts") > 1) & pl.col("same"))["prompt_id"].sort().to_list()


def cached_embeddings(data: Dataset | pl.DataFrame, spec: dict,
                      cache_dir: str | Path = DEFAULT_CACHE_DIR) -> np.ndarray:
    """The aligned matrix for an embedder known only by its cache spec (e.g. from a saved model's manifest).

    Needs no model: every text must already be cached.
    """
    if isinstance(data, Dataset) and data.vectors is not None:
        return carried_vectors(data).X
    responses = data.responses if isinstance(data, Dataset) else data
    texts, _ = render(responses, spec["template"], ChatTemplate.from_spec(spec) if spec["template"] == CHAT else None)
    cache = EmbeddingCache(cache_dir, spec)
    keys = text_keys(texts)
    missing = cache.missing(keys)
    if missing:
        name = data.name if isinstance(data, Dataset) else "these responses"
        raise EmbrmError(f"{len(missing)} of {len(set(keys))} texts of {name} are not in {cache.path} "
                         f"(embedder {spec.get('backend')}:{spec.get('model')}): run `embrm embed` on it with "
                         f"the same --backend/--model/--template options first")
    return cache.lookup(keys)
