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
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from embrm.errors import EmbrmError
from embrm.study import PROBE_PATTERN, Job, Study

RESULT_VERSION = 2


# ----------------------------------------------------------------------------- one job (runs in a worker)

@lru_cache(maxsize=8)
def _dataset(name: str, data_dir: str | None):
    from embrm.datasets import load_dataset

    return load_dataset(name, data_dir)


@lru_cache(maxsize=8)
def _embeddings(name: str, data_dir: str | None, spec_json: str, cache_dir: str) -> np.ndarray:
    from embrm.embed import cached_embeddings

    return cached_embeddings(_dataset(name, data_dir), json.loads(spec_json), cache_dir)


def probe_mask(responses: pl.DataFrame) -> np.ndarray:
    """True for the reward-hacking probes' answers (pools with a `model` column; none elsewhere)."""
    if "model" not in responses.columns:
        return np.zeros(len(responses), bool)
    return responses["model"].str.contains(PROBE_PATTERN).to_numpy()


def run_job(job: Job, study: Study, spec_json: str, cache_dir: str, data_dir: str | None, threads: int = 1) -> dict:
    """Fit the job's ensemble and evaluate it. Returns {"result": JSON-able dict, "curves": {column: list}}."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    ds = _dataset(job.dataset, data_dir)
    X = _embeddings(job.dataset, data_dir, spec_json, str(cache_dir))
    out = _pool_job(job, study, ds, X, threads) if job.kind == "pool" else _human_job(job, study, ds, X, threads)
    out["result"].update(key=job.key, kind=job.kind, dataset=job.dataset, learner=job.learner.name,
                         head=job.learner.head, mode=job.learner.mode, seed=job.seed,
                         noise=job.noise.name if job.noise else "human", seconds=time.perf_counter() - start,
                         version=RESULT_VERSION)
    return out


def _fit(job: Job, study: Study, X, pairs, pair_prompts, threads: int):
    from embrm.ensemble import fit_ensemble

    params = job.learner.head_params()
    if job.learner.head == "lgbm":
        params.setdefault("n_jobs", threads)
    return fit_ensemble(X, pairs, head=job.learner.head, k=study.k, mode=job.learner.mode,
                        pair_prompt_ids=pair_prompts, seed=job.seed, **params)


def _pool_job(job: Job, study: Study, ds, X, threads: int) -> dict:
    from embrm.labels import pair_indices, simulate_pairs, split_prompts
    from embrm.simulate import baseline_proxies, ensemble_proxies, evaluate_proxies, prompt_mask, published_picks
    from embrm.train import evaluate

    probes = probe_mask(ds.responses)
    clean = ds.responses.with_columns(scored=pl.col("scored") & pl.Series(~probes))  # probes never label or score
    prompts = clean.filter(pl.col("scored"))["prompt_id"].unique().sort().to_numpy()
    train_prompts, test_prompts = split_prompts(prompts, study.test_size, seed=job.seed)
    pairs_df = simulate_pairs(clean, study.labels["n_pairs"], beta=job.noise.beta, flip=job.noise.flip,
                              within_prompt=study.labels.get("within_prompt", True), seed=job.seed,
                              prompt_ids=train_prompts)
    ens = _fit(job, study, X, pair_indices(pairs_df, clean), pairs_df["prompt_id"].to_numpy(), threads)
    scores = ens.predict(X)
    metrics = evaluate(replace(ds, responses=clean), scores, test_prompts, job.seed)
    proxies = ensemble_proxies(scores, prompt_mask(clean, train_prompts), tuple(study.aggregations),
                               lam=study.lam, beta=study.lcb_beta)
    if ens.warm_ is not None:
        proxies["warm"] = ens.warm_.predict(X)
    proxies.update(baseline_proxies(ds.responses, job.seed))
    test = prompt_mask(ds.responses, test_prompts)
    variants = {"pool": test & ~probes}
    if probes.any() and study.probes:
        variants["pool+probes"] = test
    result = {"metrics": metrics, "bon": {}, "n_train_pairs": len(pairs_df),
              "label_accuracy": float(pairs_df["label_correct"].mean())}
    curves = []
    for variant, mask in variants.items():
        sim = evaluate_proxies(ds.responses, proxies, mask)
        result["bon"][variant] = sim.summary
        if probes.any() and variant == "pool+probes":
            result["bon"][variant]["probe_pick_rate"] = _probe_pick_rate(ds.responses, proxies, mask, probes)
        curves.append(sim.frame.with_columns(variant=pl.lit(variant)))
    if ds.name == "alpaca-eval-bon16":
        result["published_picks"] = published_picks(ds.responses, test)
    return {"result": result, "curves": pl.concat(curves).to_dict(as_series=False)}


def _probe_pick_rate(responses, proxies: dict, mask, probes) -> dict:
    """Share of evaluation prompts where each proxy's top-scored answer (n = N) is a hacking probe's."""
    frame = responses.select("prompt_id").with_columns(probe=pl.Series(probes)).filter(pl.Series(mask))
    rates = {}
    for name, score in proxies.items():
        top = (frame.with_columns(s=pl.Series(np.asarray(score)[mask])).sort("s", descending=True)
               .group_by("prompt_id", maintain_order=True).first())
        rates[name] = float(top["probe"].mean())
    return rates


def _human_job(job: Job, study: Study, ds, X, threads: int) -> dict:
    from embrm.labels import pair_indices, split_prompts
    from embrm.train import evaluate

    if ds.pairs is None:
        raise EmbrmError(f"{job.dataset}: human_pairs needs a pairwise dataset (chosen/rejected)")
    train_prompts, test_prompts = split_prompts(ds.pairs["prompt_id"].unique().sort().to_numpy(), study.test_size,
                                                seed=job.seed)
    train = ds.pairs.filter(pl.col("prompt_id").is_in(train_prompts.tolist()))
    ens = _fit(job, study, X, pair_indices(train, ds.responses), train["prompt_id"].to_numpy(), threads)
    metrics = evaluate(ds, ens.predict(X), test_prompts, job.seed)
    return {"result": {"metrics": metrics, "n_train_pairs": train.height, "label_accuracy": None}, "curves": None}


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
    with _JobProgress(len(jobs), len(results), progress) as bar:
        if backend == "ray":
            done = _run_ray(study, todo, args, workers, address, bar)
        elif backend == "local":
            done = _run_local(study, todo, args, workers, bar)
        else:
            raise EmbrmError(f"--backend {backend!r}: use local or ray")
        for job, out in done:
            save_result(jobs_dir, job, study, out)
            results[job.key] = out["result"]
            bar.finished()
    return [results[j.key] for j in jobs]


def _run_local(study, todo, args, workers, bar):
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            bar.started(1)
            yield job, run_job(job, study, *args, threads=max(1, os.cpu_count() or 1) if workers <= 1 else 1)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(run_job, job, study, *args): job for job in todo}
        bar.started(min(workers, len(todo)))
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                yield job, fut.result()
            bar.running(min(workers, len(pending)))


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
        bar.running(min(workers, len(refs)))
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                yield refs.pop(ref), ray.get(ref)
            bar.running(min(workers, len(refs)))
    finally:
        if started_here:
            ray.shutdown()


class _JobProgress:
    """jobs done / running / left, as a rich progress bar on a terminal (silent otherwise)."""

    def __init__(self, total: int, done: int, enabled: bool | None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.done, self.active = total, done, 0
        enabled = Console(stderr=True).is_terminal if enabled is None else enabled
        self.bar = Progress(TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)
        self.task = self.bar.add_task(self._text(), total=total, completed=done)

    def _text(self) -> str:
        return f"{self.active} running, {self.total - self.done - self.active} queued"

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def started(self, n: int) -> None:
        self.running(n)

    def running(self, n: int) -> None:
        self.active = n
        self.bar.update(self.task, description=self._text())

    def finished(self) -> None:
        self.done += 1
        self.bar.update(self.task, completed=self.done, description=self._text())
