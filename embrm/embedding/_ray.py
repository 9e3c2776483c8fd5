"""Embedding on Ray: the shards of embrm.embedding._shards as Ray tasks, one model load per task, into one shared cache.

    result = embed_on_ray(ds, EmbedderConfig(backend="hf", model="smollm2"), cache_dir="/shared/cache", workers=4)

Every task builds the embedder once and embeds shard i/N of the dataset's missing texts; each batch is an atomic
cache part, so a failed task loses at most one batch and a second call resumes. A task asks for one GPU when the
cluster has GPUs (Ray then gives it its own device), else one CPU. The cache directory must be reachable by every
worker under the same path (a local Ray, or a shared filesystem on a cluster). The result equals a single-process
run: the shards send the model exactly the batches one process would.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import polars as pl

from embrm.core import EmbrmError, Integer, Progress, check_value
from embrm.data import Dataset
from embrm.embedding._cache import text_keys
from embrm.embedding._embed import (
    DEFAULT_CACHE_DIR,
    EmbedderConfig,
    EmbedResult,
    ShardResult,
    carried_vectors,
    dataset_caches,
    embed_shard,
)
from embrm.embedding._shards import Shard

POLL_SECONDS = 2.0  # how often the driver counts the texts the shards have cached (the progress bar)
WORKERS = Integer(1, 1024, none=True)  # Ray tasks (None: the cluster's GPUs, else its CPUs)


def require_ray():
    try:
        import ray
    except ImportError:
        raise EmbrmError("--runner ray needs Ray: pip install 'embrm[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Ray, connected to `address` (a running cluster), the session already open in this process, or a local Ray
    with `num_cpus` started here and shut down on exit."""
    ray = require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        opts = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
        ray.init(log_to_driver=False, configure_logging=False, **opts)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _embed_task(responses: pl.DataFrame, name: str, config: EmbedderConfig, shard: Shard, cache_dir: str) -> dict:
    data = Dataset(name, responses) if name else responses
    return embed_shard(data, config.build(), shard, cache_dir=cache_dir, template=config.template,
                       batch_size=config.batch_size, progress=False).summary()


def embed_on_ray(data: Dataset | pl.DataFrame, config: EmbedderConfig, *, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                 workers: int | None = None, address: str | None = None,
                 progress: bool | None = None) -> EmbedResult:
    """The dataset's EmbedResult, its missing texts embedded by `workers` Ray tasks (default: one per GPU of the
    cluster, else one per CPU)."""
    if isinstance(data, Dataset) and data.vectors is not None:
        return carried_vectors(data)
    check_value("workers", workers, WORKERS)
    start = time.perf_counter()
    responses = data.responses if isinstance(data, Dataset) else data
    name = data.name if isinstance(data, Dataset) else ""
    cache_dir = str(Path(cache_dir).resolve())  # workers may start elsewhere
    # a bad option fails here, once, not in every task; the cache is watched for the progress count
    texts, _, (cache,) = dataset_caches(responses, config.build(), config.template, cache_dir)
    todo, listed = len(cache.missing(text_keys(texts))), cache.listed_rows()
    with ray_session(address, workers) as ray:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = workers or gpus or int(ray.cluster_resources().get("CPU", 1))
        task = ray.remote(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0, max_retries=0)(_embed_task)
        ref = ray.put(responses)
        pending = [task.remote(ref, name, config, Shard(i + 1, n), cache_dir) for i in range(n)]
        n_embedded = 0
        with Progress(todo, f"embed {name or 'responses'} on Ray ({n} shards)", "texts", progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                n_embedded += sum(_task_outcome(ray, r)["n_embedded"] for r in done)
                bar.advance(max(0, min(todo, cache.listed_rows() - listed) - bar.completed))
    # Every shard has finished, so the cache is complete (and merged): this reads it, never loading the model.
    outcome = embed_shard(data, config.build(), Shard(), cache_dir=cache_dir, template=config.template,
                          batch_size=config.batch_size, progress=False)
    result = outcome.result
    result.n_embedded = n_embedded + outcome.n_embedded
    result.n_cached = result.n_unique - result.n_embedded
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def _task_outcome(ray, ref) -> dict:
    """A task's summary; its EmbrmError as the same one line, anything else named in one line too."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
        if isinstance(cause, EmbrmError):
            raise EmbrmError(str(cause).splitlines()[-1] if "\n" in str(cause) else str(cause)) from None
        first = (str(getattr(e, "cause", None) or e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise EmbrmError(f"a Ray embedding task failed ({first}): finished batches are cached; run the same "
                         f"command again to resume") from None


__all__ = ["ShardResult", "embed_on_ray", "ray_session"]
