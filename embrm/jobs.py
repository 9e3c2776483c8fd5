"""Run a study's jobs: each fits one ensemble on cached embeddings and evaluates it; results are kept per job.

    results = run_jobs(study, jobs, out_dir / "jobs", spec, cache_dir, workers=2)            # local processes
    results = run_jobs(study, jobs, out_dir / "jobs", spec, cache_dir, backend="ray")        # a local Ray, or address=

A job's result is one JSON file (metrics, per-proxy Best-of-n summaries) and one Parquet file (curves), written
atomically under `jobs/`; a job whose files exist with the same digest is not run again, so an interrupted study
resumes where it stopped. Workers read embeddings from the Parquet cache themselves (zero-copy) instead of being
sent them, and run single-threaded so that W workers use W cores.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from embrm.datasets import DatasetSpec, load_dataset
from embrm.embed import cached_embeddings
from embrm.errors import EmbrmError
from embrm.pipeline import run_experiment
from embrm.progress import Progress
from embrm.study import Job, Study

RESULT_VERSION = 3


# ----------------------------------------------------------------------------- one job (runs in a worker)

@lru_cache(maxsize=8)
def _dataset(spec: DatasetSpec, data_dir: str | None):
    return load_dataset(spec, data_dir)


@lru_cache(maxsize=8)
def _embeddings(spec: DatasetSpec, data_dir: str | None, embed_spec_json: str, cache_dir: str) -> np.ndarray:
    return cached_embeddings(_dataset(spec, data_dir), json.loads(embed_spec_json), cache_dir)


def run_job(job: Job, study: Study, spec_json: str, cache_dir: str, data_dir: str | None, threads: int = 1) -> dict:
    """The job's experiment (embrm.pipeline.run_experiment). Returns {"result": JSON-able dict, "curves": columns}."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    ds = _dataset(job.dataset, data_dir)
    if job.kind == "human" and ds.pairs is None:
        raise EmbrmError(f"{job.dataset.label}: human_pairs needs a pairwise dataset (chosen/rejected)")
    X = _embeddings(job.dataset, data_dir, spec_json, str(cache_dir))
    result = run_experiment(ds, X, job.protocol(study), threads=threads, progress=False)
    out = result.to_dict()
    out.update(key=job.key, kind=job.kind, dataset=job.dataset.label, learner=job.learner.name,
               head=job.learner.head, mode=job.learner.mode, seed=job.seed,
               noise=job.noise.name if job.noise else "human", seconds=time.perf_counter() - start,
               version=RESULT_VERSION)
    frame = result.frame()
    return {"result": out, "curves": None if frame.is_empty() else frame.to_dict(as_series=False)}


# ----------------------------------------------------------------------------- storing and resuming

def result_paths(jobs_dir: Path, job: Job, study: Study) -> tuple[Path, Path]:
    stem = job.key.replace("/", "__") + "-" + job.digest(study)
    return jobs_dir / f"{stem}.json", jobs_dir / f"{stem}.parquet"


def save_result(jobs_dir: Path, job: Job, study: Study, out: dict) -> None:
    """Curves first, then the JSON (written last, atomically): a JSON on disk means a complete job."""
    jpath, cpath = result_paths(jobs_dir, job, study)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    if out["curves"] is not None:
        tmp = cpath.with_suffix(".parquet.tmp")
        pl.DataFrame(out["curves"]).with_columns(key=pl.lit(job.key)).write_parquet(tmp)
        os.replace(tmp, cpath)
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out["result"], indent=1, default=_json_default))
    os.replace(tmp, jpath)


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def load_result(jobs_dir: Path, job: Job, study: Study) -> dict | None:
    jpath, _ = result_paths(jobs_dir, job, study)
    if not jpath.exists():
        return None
    try:
        result = json.loads(jpath.read_text())
    except json.JSONDecodeError:
        return None
    return result if result.get("version") == RESULT_VERSION else None


# ----------------------------------------------------------------------------- executors

def run_jobs(study: Study, jobs: list[Job], jobs_dir: Path, spec: dict, cache_dir, *, data_dir=None, workers: int = 2,
             backend: str = "local", address: str | None = None, progress: bool | None = None) -> list[dict]:
    """Run the jobs not already done (resume), with a progress display; returns every job's result."""
    jobs_dir = Path(jobs_dir)
    results = {j.key: r for j in jobs if (r := load_result(jobs_dir, j, study)) is not None}
    todo = [j for j in jobs if j.key not in results]
    args = (json.dumps(spec, sort_keys=True), str(cache_dir), None if data_dir is None else str(data_dir))
    label = f"jobs ({len(results)} of {len(jobs)} already done)" if results else "jobs"
    with Progress(len(todo), label, "jobs", progress) as bar:
        if backend == "ray":
            done = _run_ray(study, todo, args, workers, address, bar)
        elif backend == "local":
            done = _run_local(study, todo, args, workers, bar)
        else:
            raise EmbrmError(f"--backend {backend!r}: use local or ray")
        for job, out in done:
            save_result(jobs_dir, job, study, out)
            results[job.key] = out["result"]
            bar.advance()
    return [results[j.key] for j in jobs]


def _run_local(study, todo, args, workers, bar):
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            bar.set_description("1 running")
            yield job, run_job(job, study, *args, threads=max(1, os.cpu_count() or 1) if workers <= 1 else 1)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(run_job, job, study, *args): job for job in todo}
        bar.set_description(f"{min(workers, len(todo))} running")
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                yield job, fut.result()
            bar.set_description(f"{min(workers, len(pending))} running")


def _run_ray(study, todo, args, workers, address, bar):
    try:
        import ray
    except ImportError:
        raise EmbrmError("--backend ray needs Ray: pip install 'embrm[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        opts = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        ray.init(log_to_driver=False, configure_logging=False, **opts)
    try:
        remote = ray.remote(num_cpus=1)(run_job)
        refs = {remote.remote(job, study, *args): job for job in todo}
        bar.set_description(f"{min(workers, len(refs))} running")
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                yield refs.pop(ref), ray.get(ref)
            bar.set_description(f"{min(workers, len(refs))} running")
    finally:
        if started_here:
            ray.shutdown()
