"""EmbedRoute: the one entry that picks how a dataset's missing texts get embedded (this process, one shard of N,
Ray tasks, several views of one forward pass) from the runner options, checked before any data is read.

    (outcome,) = EmbedRoute(runner="ray", workers=4).embed(ds, config, cache_dir="/shared/cache")
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from embrm.core import EmbrmError, OneOf, check_value
from embrm.data import Dataset
from embrm.embedding._embed import DEFAULT_CACHE_DIR, EMBEDDER_RULES, EmbedderConfig, ShardResult, embed_views
from embrm.embedding._ray import WORKERS, embed_on_ray
from embrm.embedding._shards import WHOLE, Shard

RUNNERS = OneOf(("local", "ray"))  # where work runs: this process (and processes started by hand) | Ray tasks


@dataclass(frozen=True)
class EmbedRoute:
    """How a dataset's missing texts get embedded, checked before any data is read:

    views    (layer, pooling) pairs of one hf model (or their text '-1:last,10:max'): one forward pass per batch
             fills one cache per view; in this process, or as one shard
    shard    Shard I/N (or its text 'I/N'): this process embeds one of N shares into the shared cache; the last
             to finish merges
    runner   "local" (this process) | "ray" (`workers` Ray tasks, one shard each, at `address`)

    embed() returns one ShardResult per view (one without views): `result` is the dataset's EmbedResult once every
    text is cached (None for a shard whose siblings have not finished). An error names its field (EmbrmError.field).
    """

    runner: str = "local"
    shard: Shard | str | None = None
    workers: int | None = None
    address: str | None = None
    views: tuple | str = ()

    def __post_init__(self):
        check_value("runner", self.runner, RUNNERS)
        if self.runner == "ray" and self.shard is not None:
            raise EmbrmError("shard is for separate processes; runner ray makes its own shards (workers N)",
                             field="shard")
        for name in ("workers", "address"):
            if self.runner == "local" and getattr(self, name) is not None:
                raise EmbrmError(f"{name} is for runner ray: use runner ray, or start processes with shard I/N",
                                 field=name)
        check_value("workers", self.workers, WORKERS)
        if self.views and self.runner != "local":
            raise EmbrmError("views run in this process (or one shard of them): leave out runner ray", field="views")
        object.__setattr__(self, "shard", Shard.parse(self.shard) if isinstance(self.shard, str) else self.shard)
        object.__setattr__(self, "views", parsed_views(self.views))

    def embed(self, data: Dataset | pl.DataFrame, config: EmbedderConfig, cache_dir: str | Path = DEFAULT_CACHE_DIR,
              progress: bool | None = None) -> list[ShardResult]:
        shard = self.shard or WHOLE
        if self.views:
            configs = [replace(config, layer=layer, pooling=pooling) for layer, pooling in self.views]
            return embed_views(data, configs, cache_dir=cache_dir, shard=shard, progress=progress)
        if shard != WHOLE:
            return [config.embed_shard(data, shard, cache_dir, progress=progress)]
        if self.runner == "ray":
            result = embed_on_ray(data, config, cache_dir=cache_dir, workers=self.workers, address=self.address,
                                  progress=progress)
        else:
            result = config.embed(data, cache_dir, progress=progress)
        return [ShardResult(WHOLE, result.n_embedded, 0, result.cache_dir, result.fingerprint, result.seconds,
                            result)]


MAX_VIEWS = 256  # (layer, pooling) pairs filled by one forward pass


def parsed_views(views: tuple | list | str) -> tuple[tuple[int, str], ...]:
    """'-1:last,10:max' (or [(-1, 'last'), (10, 'max')]) -> ((-1, 'last'), (10, 'max'))."""
    if not isinstance(views, str):
        return _checked_views(tuple((layer, pooling) for layer, pooling in views))
    try:
        pairs = [item.strip().rsplit(":", 1) for item in views.split(",") if item.strip()]
        parsed = tuple((int(layer), pooling) for layer, pooling in pairs)
    except ValueError:
        parsed = ()
    if not parsed:
        raise EmbrmError(f"views {views!r}: write LAYER:POOLING pairs separated by commas, e.g. -1:last,10:max",
                         field="views")
    return _checked_views(parsed)


def _checked_views(views: tuple) -> tuple[tuple[int, str], ...]:
    if len(views) > MAX_VIEWS:
        raise EmbrmError(f"views: {len(views)} views; at most {MAX_VIEWS} in one pass (each keeps a cache part per "
                         f"batch in memory)", field="views")
    for layer, _ in views:
        check_value(f"views: layer {layer}", layer, EMBEDDER_RULES["layer"], field="views")
    return views


__all__ = ["RUNNERS", "EmbedRoute", "parsed_views"]
