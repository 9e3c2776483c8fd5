"""Run a study's jobs: each fits one ensemble on cached embeddings and evaluates it; results are kept per job.

    results = run_jobs(study, jobs, out_dir / "jobs", specs, cache_dir, workers=2)           # local processes
    results = run_jobs(study, jobs, out_dir / "jobs", specs, cache_dir, backend="ray")       # a local Ray, or address=

`specs` maps each embedder's name (None: the study's one [embedder]) to its cache spec: a job reads the vectors
of its own embedder.

A job's result is one JSON file (metrics, per-proxy Best-of-n summaries) and one Parquet file (curves), each written
atomically (a temporary file renamed over it) under `jobs/`, the JSON last; a job whose files exist with the same
digest and read back whole is not run again, so an interrupted study resumes where it stopped (a damaged result
is reported in one line and its job runs again). Workers read embeddings from the Parquet cache themselves
(zero-copy) instead of being sent them, run single-threaded so that W workers use W cores, and end with the
process that started them, even when it is SIGKILLed.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from embrm.core import EmbrmError, Integer, OneOf, Progress, check_value, write_atomic
from embrm.data import DatasetSpec, load_dataset, rrm_dataset
from embrm.embedding import cached_embeddings
from embrm.pipeline import run_experiment
from embrm.studies._config import Job, Study

RESULT_VERSION = 6  # 6: calibration metrics and the conformal bound's coverage; 5: Best-of-n on a grid of n, ...
BACKENDS = OneOf(("local", "ray"))
WORKERS = Integer(1, 1024)  # parallel jobs; more processes than this would only fight over memory


# ----------------------------------------------------------------------------- one job (runs in a worker)

@lru_cache(maxsize=8)
def _dataset(spec: DatasetSpec, data_dir: str | None):
    return load_dataset(spec, data_dir)


@lru_cache(maxsize=8)
def _embeddings(spec: DatasetSpec, data_dir: str | None, embed_spec_json: str, cache_dir: str) -> np.ndarray:
    return cached_embeddings(_dataset(spec, data_dir), json.loads(embed_spec_json), cache_dir)


@lru_cache(maxsize=8)
def _augment(spec: DatasetSpec, data_dir: str | None, embed_spec_json: str, cache_dir: str) -> np.ndarray:
    """Embeddings of RRM's augmentation texts (embrm.data._augment.rrm_dataset), cached by `embrm run` beforehand."""
    return cached_embeddings(rrm_dataset(_dataset(spec, data_dir)), json.loads(embed_spec_json), cache_dir)


def run_job(job: Job, study: Study, spec_json: str, cache_dir: str, data_dir: str | None, threads: int = 1) -> dict:
    """The job's experiment (embrm.pipeline._steps.run_experiment). Returns {"result": JSON-able dict, "curves": columns}."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    ds = _dataset(job.dataset, data_dir)
    if job.kind == "human" and ds.pairs is None:
        raise EmbrmError(f"{job.dataset.label}: human_pairs needs a pairwise dataset (chosen/rejected)")
    X = _embeddings(job.dataset, data_dir, spec_json, str(cache_dir))
    augment = (_augment(job.dataset, data_dir, spec_json, str(cache_dir)) if job.learner.length_control == "rrm"
               else None)
    protocol = job.protocol(study)
    with threadpool_limits(threads, user_api="blas"):  # numpy's BLAS too: W workers, W cores (no oversubscription)
        result = run_experiment(ds, X, protocol, augment=augment, threads=threads, progress=False)
    out, frame = result.to_dict(), result.frame()
    out.update(key=job.key, kind=job.kind, dataset=job.group, learner=job.learner.name,
               head=job.learner.head, mode=job.learner.mode, length_control=job.learner.length_control, k=protocol.k,
               seed=job.seed, noise=job.noise.name if job.noise else "human", seconds=time.perf_counter() - start,
               version=RESULT_VERSION, curves_rows=frame.height)  # a resume checks the curves file against it
    if job.embedder is not None:  # a study comparing embedders: `dataset` is `<dataset>@<embedder>`
        out.update(embedder=job.embedder, dataset_label=job.dataset.label)
    return {"result": out, "curves": None if frame.is_empty() else frame.to_dict(as_series=False)}


# ----------------------------------------------------------------------------- storing and resuming

def result_paths(jobs_dir: Path, job: Job, study: Study) -> tuple[Path, Path]:
    stem = job.key.replace("/", "__") + "-" + job.digest(study)
    return jobs_dir / f"{stem}.json", jobs_dir / f"{stem}.parquet"


def save_result(jobs_dir: Path, job: Job, study: Study, out: dict) -> None:
    """Curves first, then the JSON (written last): a JSON on disk means a complete job."""
    jpath, cpath = result_paths(jobs_dir, job, study)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    if out["curves"] is not None:
        frame = pl.DataFrame(out["curves"]).with_columns(key=pl.lit(job.key))
        write_atomic(cpath, frame.write_parquet)
    text = json.dumps(out["result"], indent=1, default=_json_default)
    write_atomic(jpath, text)


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def load_result(jobs_dir: Path, job: Job, study: Study, inputs: str | None = None) -> dict | None:
    """The job's stored result, or None when the job must run: no result yet, one from another embrm version, one
    computed from other inputs (other vectors or data under the same names: `inputs` is their digest), or a damaged
    one (truncated, unreadable: reported in one line on stderr; the job runs again)."""
    jpath, cpath = result_paths(jobs_dir, job, study)
    if not jpath.exists():
        return None
    try:
        result = json.loads(jpath.read_text(encoding="utf-8"))
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _damaged(jpath, job, e)
    if result.get("version") != RESULT_VERSION or result.get("inputs") != inputs:
        return None
    rows = result.get("curves_rows")
    try:
        found = pl.read_parquet(cpath).height if cpath.exists() else 0
    except (OSError, pl.exceptions.PolarsError) as e:
        return _damaged(cpath, job, e)
    if rows is not None and found != rows:
        return _damaged(cpath, job, f"{found} curve rows, {rows} expected")
    return result


def _damaged(path: Path, job: Job, why) -> None:
    why = " ".join(str(why).split())[:200] or type(why).__name__
    print(f"{path}: damaged result ({why}): running job {job.key} again", file=sys.stderr, flush=True)
    return None


# ----------------------------------------------------------------------------- executors

def check_run_options(workers: int, backend: str) -> None:
    check_value("backend (--backend)", backend, BACKENDS)
    check_value("workers (--workers)", workers, WORKERS)


def run_jobs(study: Study, jobs: list[Job], jobs_dir: Path, specs: dict, cache_dir, *, data_dir=None,
             workers: int = 2, backend: str = "local", address: str | None = None, progress: bool | None = None,
             inputs: dict[str, str] | None = None) -> list[dict]:
    """Run the jobs not already done (resume), with a progress display; returns every job's result. `specs` maps an
    embedder's name (None for the one [embedder]) to its cache spec; `inputs` maps a job's group (Job.group: the
    dataset's label, `<dataset>@<embedder>` when comparing embedders) to the digest of its vectors and data
    (experiment.inputs_digest): a stored result computed from other inputs is not reused."""
    jobs_dir, inputs = Path(jobs_dir), inputs or {}
    check_run_options(workers, backend)
    results = {j.key: r for j in jobs if (r := load_result(jobs_dir, j, study, inputs.get(j.group))) is not None}
    todo = [(j, json.dumps(specs[j.embedder], sort_keys=True)) for j in jobs if j.key not in results]
    args = (str(cache_dir), None if data_dir is None else str(data_dir))
    label = f"jobs ({len(results)} of {len(jobs)} already done)" if results else "jobs"
    with Progress(len(todo), label, "jobs", progress) as bar:
        if backend == "ray":
            done = _run_ray(study, todo, args, workers, address, bar)
        else:
            done = _run_local(study, todo, args, workers, bar)
        for job, out in done:
            out["result"]["inputs"] = inputs.get(job.group)
            save_result(jobs_dir, job, study, out)
            results[job.key] = out["result"]
            bar.advance()
    return [results[j.key] for j in jobs]


def _run_local(study, todo, args, workers, bar):
    if workers <= 1 or len(todo) <= 1:
        for job, spec_json in todo:
            bar.set_description("1 running")
            yield job, run_job(job, study, spec_json, *args,
                               threads=max(1, os.cpu_count() or 1) if workers <= 1 else 1)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_end_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(run_job, job, study, spec_json, *args): job for job, spec_json in todo}
        bar.set_description(f"{min(workers, len(todo))} running")
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                yield job, _outcome(fut, job)
            bar.set_description(f"{min(workers, len(pending))} running")


def _outcome(fut, job: Job) -> dict:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool:
        raise EmbrmError(f"a worker process died (killed, or out of memory?) while running {job.key}: finished "
                         f"jobs are kept; re-run to resume, with fewer --workers if memory is short") from None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _end_with_parent(parent: int) -> None:
    """Every worker's initializer: the worker ends when the process that started it does. A SIGKILLed parent runs
    no cleanup; its workers would wait on their task queue for ever (the issue saw them alive 120 s later), and
    with them the multiprocessing resource tracker, which exits only when the last process holding its pipe has.
    On Linux the kernel kills the worker when its parent dies (PR_SET_PDEATHSIG; strictly when the parent THREAD
    that started it ends: the one running run_jobs, which outlives the pool); a watchdog thread covers other
    systems and the moments before prctl."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="embrm-watch-parent").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is re-parented (to init or a subreaper)
        time.sleep(1.0)
    os._exit(1)


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
        refs = {remote.remote(job, study, spec_json, *args): job for job, spec_json in todo}
        bar.set_description(f"{min(workers, len(refs))} running")
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                yield refs.pop(ref), ray.get(ref)
            bar.set_description(f"{min(workers, len(refs))} running")
    finally:
        if started_here:
            ray.shutdown()
