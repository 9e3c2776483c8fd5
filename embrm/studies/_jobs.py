"""Run a study's jobs: each fits one ensemble on cached embeddings and evaluates it; results are kept per job.
Jobs whose protocols share a member fit (mlp and mlp.posthoc of one dataset, labels and seed) run as one task that
fits once (tasks_of; embrm.pipeline.run_experiments): the same numbers as one job at a time.

    results = run_jobs(study, jobs, ResultStore(out_dir), specs, cache_dir, workers=2)       # local processes
    results = run_jobs(study, jobs, ResultStore(out_dir), specs, cache_dir, runner="ray")    # a local Ray, or address=

`specs` maps each embedder's name (None: the study's one [embedder]) to its cache spec: a job reads the vectors
of its own embedder.

A job's result is a JobResult (embrm.studies._store): the ResultStore writes it under `jobs/` (one JSON, one Parquet
of curves) and reads it back; a job whose files exist with the same digest and read back whole is not run again, so
an interrupted study resumes where it stopped (a damaged result is reported in one line and its job runs again).
Local workers load the vectors `embrm run` read while embedding from .npy files written once (a replication half's
are rows of its whole dataset's); Ray workers read the Parquet cache themselves. Workers run on the thread policy's
count (embrm.core.fit_threads: 1 unless $EMBRM_THREADS) so that W workers use W cores, and end with the process that
started them, even when it is SIGKILLed. The study's methods run on the same workers, beside the jobs (`beside`).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from embrm.active import ActiveConfig, ActiveResult, run_active
from embrm.core import EmbrmError, Integer, Progress, check_value
from embrm.data import DatasetSpec, load_dataset, rrm_dataset
from embrm.embedding import RUNNERS, cached_embeddings
from embrm.methods import MethodResult, run_method
from embrm.pipeline import run_experiments
from embrm.rl import run_plan
from embrm.studies._config import Job, Study
from embrm.studies._store import JobResult, ResultStore

WORKERS = Integer(1, 1024)  # parallel jobs; more processes than this would only fight over memory


# ----------------------------------------------------------------------------- one task (runs in a worker)

# Vectors `embrm run` read while embedding, so that no worker reads the Parquet cache again: {(dataset spec, cache
# spec JSON, rrm?): (n, d) float32, or the .npy file a local worker loads it from}. Empty: read the cache.
_GIVEN: dict = {}


def _given(key) -> np.ndarray | None:
    given = _GIVEN.get(key)
    # mapped, read-only: the workers share the page cache's one copy, as they would a cache read
    return np.asarray(np.load(given, mmap_mode="r")) if isinstance(given, str) else given


@lru_cache(maxsize=16)
def _dataset(spec: DatasetSpec, data_dir: str | None):
    return load_dataset(spec, data_dir)


@lru_cache(maxsize=16)
def _embeddings(spec: DatasetSpec, data_dir: str | None, embed_spec_json: str, cache_dir: str) -> np.ndarray:
    ds = _dataset(spec, data_dir)
    if spec.half and ds.vectors is None:  # a half's rows of its whole dataset's matrix (filtered in order)
        whole = replace(spec, half=0)
        rows = _dataset(whole, data_dir).responses["response_id"].is_in(ds.responses["response_id"].implode())
        return _embeddings(whole, data_dir, embed_spec_json, cache_dir)[rows.to_numpy()]
    given = _given((spec, embed_spec_json, False))
    return given if given is not None else cached_embeddings(ds, json.loads(embed_spec_json), cache_dir)


@lru_cache(maxsize=16)
def _augment(spec: DatasetSpec, data_dir: str | None, embed_spec_json: str, cache_dir: str) -> np.ndarray:
    """Embeddings of RRM's augmentation texts (embrm.data.rrm_dataset), cached by `embrm run` beforehand."""
    given = _given((spec, embed_spec_json, True))
    return given if given is not None else cached_embeddings(rrm_dataset(_dataset(spec, data_dir)),
                                                             json.loads(embed_spec_json), cache_dir)


@lru_cache(maxsize=16)
def _lcs(spec: DatasetSpec, data_dir: str | None) -> dict:
    """The pool's length-controlled golds, filled in by run_experiments: fitted once per worker, not per job."""
    return {}


def tasks_of(jobs: list[Job], study: Study) -> list[list[Job]]:
    """The jobs grouped into tasks, in order of first appearance: the jobs of one dataset and embedder whose
    protocols share a member fit (Protocol.member_fit: mlp and mlp.posthoc) run in one task, fitted once."""
    tasks: dict = {}
    for job in jobs:
        tasks.setdefault((job.kind, job.dataset, job.embedder, job.protocol(study).member_fit), []).append(job)
    return list(tasks.values())


def run_task(jobs: list[Job], study: Study, spec_json: str, cache_dir: str, data_dir: str | None,
             threads: int | None = None) -> list[JobResult]:
    """The jobs' experiments (embrm.pipeline.run_experiments: one dataset and embedder, their shared member fit
    once) as JobResults carrying their curves to the store. It runs on the thread policy's count
    (embrm.core.fit_threads), as `embrm fit` and `embrm bon-sim` do: W workers use W cores, and a job's numbers are
    those of the CLI with the same settings, bit for bit."""
    first = jobs[0]
    ds = _dataset(first.dataset, data_dir)
    if first.kind == "human" and ds.pairs is None:
        raise EmbrmError(f"{first.dataset.label}: human_pairs needs a pairwise dataset (chosen/rejected)")
    X = _embeddings(first.dataset, data_dir, spec_json, str(cache_dir))
    augment = (_augment(first.dataset, data_dir, spec_json, str(cache_dir))
               if any(j.learner.length_control == "rrm" for j in jobs) else None)
    results = run_experiments(ds, X, [j.protocol(study) for j in jobs], augment=augment, threads=threads,
                              progress=False, lcs=_lcs(first.dataset, data_dir))
    return [_job_result(job, study, ds, X, result, threads) for job, result in zip(jobs, results)]


def run_job(job: Job, study: Study, spec_json: str, cache_dir: str, data_dir: str | None,
            threads: int | None = None) -> JobResult:
    """One job as a task of its own (run_task)."""
    return run_task([job], study, spec_json, cache_dir, data_dir, threads)[0]


def _job_result(job: Job, study: Study, ds, X, result, threads: int | None) -> JobResult:
    """A job's JobResult from its experiment, with the study's [rl] runs on its reward."""
    start = time.perf_counter()
    fitted = result.fit
    rl = None
    if study.rl is not None and job.kind == "pool":
        plan = replace(study.rl, config=replace(study.rl.config, seed=job.seed))  # each seed its own samples
        ran = run_plan(plan, ds, X, fitted.ensemble, fitted.split, fitted.protocol, scores=fitted.scores,
                       threads=threads)
        rl = {policy: {"skipped": r} if isinstance(r, str) else
              {"summary": r.to_dict(), "runs": [run.to_dict() for run in r.runs]} for policy, r in ran.items()}
    return JobResult(job.key, job.kind, job.group, job.learner.name, job.noise.name if job.noise else "human", job.seed,
                     fitted.protocol.k, fitted.protocol, fitted.n_train_pairs, fitted.label_accuracy,
                     result.evaluation, result.seconds + time.perf_counter() - start, 0, embedder=job.embedder,
                     dataset_label=job.dataset.label if job.embedder is not None else None, rl=rl,
                     curves=result.frame())


def method_task(name: str, spec: DatasetSpec, spec_json: str, cache_dir: str, data_dir: str | None,
                seed: int) -> MethodResult:
    """One of the study's methods (embrm.methods.run_method) on a pool, run by a worker beside the jobs."""
    X = _embeddings(spec, data_dir, spec_json, cache_dir)
    return run_method(name, _dataset(spec, data_dir), X, seed=seed, progress=False)


def active_task(spec: DatasetSpec, spec_json: str, cache_dir: str, data_dir: str | None,
                config: ActiveConfig) -> ActiveResult:
    """The study's active labelling campaign (embrm.active.run_active) on a pool, run by a worker beside the jobs."""
    result = run_active(_dataset(spec, data_dir), _embeddings(spec, data_dir, spec_json, cache_dir), config,
                        progress=False)
    result.dataset = spec.label  # the report links its files by the study's (plain) name of the pool
    return result


# ----------------------------------------------------------------------------- executors

def check_run_options(workers: int, runner: str) -> None:
    check_value("runner (--runner)", runner, RUNNERS, field="runner")
    check_value("workers (--workers)", workers, WORKERS)


@dataclass
class Call:
    """One call for the workers: fn(*args), its result handed to done(result) in the process running run_jobs;
    `what` names it when a worker dies running it."""

    fn: Callable
    args: tuple
    done: Callable
    what: str


def run_jobs(study: Study, jobs: list[Job], store: ResultStore, specs: dict, cache_dir, *, data_dir=None,
             workers: int = 2, runner: str = "local", address: str | None = None, progress: bool | None = None,
             inputs: dict[str, str] | None = None, vectors: dict | None = None,
             beside: list[Call] | None = None) -> list[JobResult]:
    """Run the jobs not already done (resume), with a progress display; returns every job's result. `specs` maps an
    embedder's name (None for the one [embedder]) to its cache spec; `inputs` maps a job's group (Job.group: the
    dataset's label, `<dataset>@<embedder>` when comparing embedders) to the digest of its vectors and data
    (experiment.inputs_digest): a stored result computed from other inputs is not reused. `vectors`: matrices
    already read ({(dataset spec, cache spec JSON, rrm?): X}) that local workers take instead of reading the cache.
    `beside`: calls that need no job's result (the study's methods), run first on the same workers."""
    inputs = inputs or {}
    check_run_options(workers, runner)
    results = {j.key: r for j in jobs if (r := store.load(j, study, inputs.get(j.group))) is not None}
    todo = tasks_of([j for j in jobs if j.key not in results], study)
    paths = (str(cache_dir), None if data_dir is None else str(data_dir))
    label = f"jobs ({len(results)} of {len(jobs)} already done)" if results else "jobs"
    with Progress(sum(map(len, todo)), label, "jobs", progress) as bar:
        def saved(task: list[Job], outcome: list[JobResult]) -> None:
            for job, result in zip(task, outcome):
                result.inputs = inputs.get(job.group)
                results[job.key] = store.save(job, study, result)
                bar.advance()

        calls = [*(beside or []), *(Call(run_task, (task, study, json.dumps(specs[task[0].embedder], sort_keys=True),
                                                    *paths), partial(saved, task), task[0].key) for task in todo)]
        run = _run_ray(calls, workers, address, bar) if runner == "ray" else \
            _run_local(calls, workers, bar, vectors or {})
        for call, outcome in run:
            call.done(outcome)
    return [results[j.key] for j in jobs]


def _run_local(calls: list[Call], workers: int, bar, vectors: dict):
    if workers <= 1 or len(calls) <= 1:
        _GIVEN.update(vectors)
        try:
            for call in calls:
                bar.set_description("1 running")
                yield call, call.fn(*call.args)
        finally:
            _GIVEN.clear()
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # the vectors go to the workers as files: a spawned worker's start-up arguments pass through a pipe that a
    # worker dying mid-read would leave the parent blocked on for ever
    with tempfile.TemporaryDirectory(prefix="embrm-vectors-") as folder, \
            ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                                initargs=(os.getpid(), _saved(vectors, Path(folder)))) as pool:
        pending = {pool.submit(call.fn, *call.args): call for call in calls}
        bar.set_description(f"{min(workers, len(calls))} running")
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                call = pending.pop(fut)
                yield call, _outcome(fut, call)
            bar.set_description(f"{min(workers, len(pending))} running")


def _outcome(fut, call: Call):
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool:
        raise EmbrmError(f"a worker process died (killed, or out of memory?) while running {call.what}: finished "
                         f"jobs are kept; re-run to resume, with fewer --workers if memory is short") from None


def _saved(vectors: dict, folder: Path) -> dict:
    """The vectors as .npy files in folder: {key: path}."""
    paths = {}
    for i, (key, X) in enumerate(vectors.items()):
        paths[key] = str(folder / f"{i}.npy")
        np.save(paths[key], X)
    return paths


def _start_worker(parent: int, vectors: dict) -> None:
    """Every local worker's initializer: end with the parent, and keep where the vectors it was handed are."""
    _end_with_parent(parent)
    _GIVEN.update(vectors)


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


def _run_ray(calls: list[Call], workers: int, address: str | None, bar):
    try:
        import ray
    except ImportError:
        raise EmbrmError("--runner ray needs Ray: pip install 'embrm[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        opts = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        ray.init(log_to_driver=False, configure_logging=False, **opts)
    try:
        remote = {fn: ray.remote(num_cpus=1)(fn) for fn in {call.fn for call in calls}}
        refs = {remote[call.fn].remote(*call.args): call for call in calls}
        bar.set_description(f"{min(workers, len(refs))} running")
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                yield refs.pop(ref), ray.get(ref)
            bar.set_description(f"{min(workers, len(refs))} running")
    finally:
        if started_here:
            ray.shutdown()
