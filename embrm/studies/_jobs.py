"""Run a study's jobs: each fits one ensemble on cached embeddings and evaluates it; results are kept per job.

    results = run_jobs(study, jobs, ResultStore(out_dir), specs, cache_dir, workers=2)       # local processes
    results = run_jobs(study, jobs, ResultStore(out_dir), specs, cache_dir, runner="ray")    # a local Ray, or address=

`specs` maps each embedder's name (None: the study's one [embedder]) to its cache spec: a job reads the vectors
of its own embedder.

A job's result is a JobResult (embrm.studies._store): the ResultStore writes it under `jobs/` (one JSON, one Parquet
of curves) and reads it back; a job whose files exist with the same digest and read back whole is not run again, so
an interrupted study resumes where it stopped (a damaged result is reported in one line and its job runs again).
Workers read embeddings from the Parquet cache themselves (zero-copy) instead of being sent them, run on the thread
policy's count (embrm.core.fit_threads: 1 unless $EMBRM_THREADS) so that W workers use W cores, and end with the
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
from dataclasses import replace
from functools import lru_cache

import numpy as np

from embrm.core import EmbrmError, Integer, Progress, check_value
from embrm.data import DatasetSpec, load_dataset, rrm_dataset
from embrm.embedding import RUNNERS, cached_embeddings
from embrm.pipeline import run_experiment
from embrm.rl import run_plan
from embrm.studies._config import Job, Study
from embrm.studies._store import JobResult, ResultStore

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
    """Embeddings of RRM's augmentation texts (embrm.data.rrm_dataset), cached by `embrm run` beforehand."""
    return cached_embeddings(rrm_dataset(_dataset(spec, data_dir)), json.loads(embed_spec_json), cache_dir)


def run_job(job: Job, study: Study, spec_json: str, cache_dir: str, data_dir: str | None,
            threads: int | None = None) -> JobResult:
    """The job's experiment (embrm.pipeline.run_experiment) as a JobResult carrying its curves to the store. It runs
    on the thread policy's count (embrm.core.fit_threads), as `embrm fit` and `embrm bon-sim` do: W workers use W
    cores, and a job's numbers are those of the CLI with the same settings, bit for bit."""
    start = time.perf_counter()
    ds = _dataset(job.dataset, data_dir)
    if job.kind == "human" and ds.pairs is None:
        raise EmbrmError(f"{job.dataset.label}: human_pairs needs a pairwise dataset (chosen/rejected)")
    X = _embeddings(job.dataset, data_dir, spec_json, str(cache_dir))
    augment = (_augment(job.dataset, data_dir, spec_json, str(cache_dir)) if job.learner.length_control == "rrm"
               else None)
    protocol = job.protocol(study)
    result = run_experiment(ds, X, protocol, augment=augment, threads=threads, progress=False)
    fitted = result.fit
    rl = None
    if study.rl is not None and job.kind == "pool":
        plan = replace(study.rl, config=replace(study.rl.config, seed=job.seed))  # each seed its own samples
        ran = run_plan(plan, ds, X, fitted.ensemble, fitted.split, fitted.protocol, scores=fitted.scores,
                       threads=threads)
        rl = {policy: {"skipped": r} if isinstance(r, str) else
              {"summary": r.to_dict(), "runs": [run.to_dict() for run in r.runs]} for policy, r in ran.items()}
    return JobResult(job.key, job.kind, job.group, job.learner.name, job.noise.name if job.noise else "human", job.seed,
                     protocol.k, fitted.protocol, fitted.n_train_pairs, fitted.label_accuracy, result.evaluation,
                     time.perf_counter() - start, 0, embedder=job.embedder,
                     dataset_label=job.dataset.label if job.embedder is not None else None, rl=rl,
                     curves=result.frame())


# ----------------------------------------------------------------------------- executors

def check_run_options(workers: int, runner: str) -> None:
    check_value("runner (--runner)", runner, RUNNERS, field="runner")
    check_value("workers (--workers)", workers, WORKERS)


def run_jobs(study: Study, jobs: list[Job], store: ResultStore, specs: dict, cache_dir, *, data_dir=None,
             workers: int = 2, runner: str = "local", address: str | None = None, progress: bool | None = None,
             inputs: dict[str, str] | None = None) -> list[JobResult]:
    """Run the jobs not already done (resume), with a progress display; returns every job's result. `specs` maps an
    embedder's name (None for the one [embedder]) to its cache spec; `inputs` maps a job's group (Job.group: the
    dataset's label, `<dataset>@<embedder>` when comparing embedders) to the digest of its vectors and data
    (experiment.inputs_digest): a stored result computed from other inputs is not reused."""
    inputs = inputs or {}
    check_run_options(workers, runner)
    results = {j.key: r for j in jobs if (r := store.load(j, study, inputs.get(j.group))) is not None}
    todo = [(j, json.dumps(specs[j.embedder], sort_keys=True)) for j in jobs if j.key not in results]
    args = (str(cache_dir), None if data_dir is None else str(data_dir))
    label = f"jobs ({len(results)} of {len(jobs)} already done)" if results else "jobs"
    with Progress(len(todo), label, "jobs", progress) as bar:
        if runner == "ray":
            done = _run_ray(study, todo, args, workers, address, bar)
        else:
            done = _run_local(study, todo, args, workers, bar)
        for job, result in done:
            result.inputs = inputs.get(job.group)
            results[job.key] = store.save(job, study, result)
            bar.advance()
    return [results[j.key] for j in jobs]


def _run_local(study, todo, args, workers, bar):
    if workers <= 1 or len(todo) <= 1:
        for job, spec_json in todo:
            bar.set_description("1 running")
            yield job, run_job(job, study, spec_json, *args)
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


def _outcome(fut, job: Job) -> JobResult:
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
        raise EmbrmError("--runner ray needs Ray: pip install 'embrm[ray]'") from None
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
