"""The main job (`embrm run`): embed, fit every (dataset, noise, learner, seed), Best-of-n, report.

    from embrm.studies._run import run_study
    from embrm.studies._config import load_study
    result = run_study(load_study(), "results/default")        # the default study on the real pools
    print(result.report_path.read_text())

Writes into the results directory, every file through its ResultStore (embrm.studies._store): jobs/ (one JSON + one
Parquet per finished job: the resume points), fit_metrics.parquet, bon_summary.parquet, bon_curves.parquet,
published_picks.parquet (when the study's pools carry published reward models' picks), embedders.json (per
embedder and dataset: its description, held-out accuracy, Best-of-n gain, length correlation), study.json (the
resolved study, command, machine, package versions, timings), PNG plots and report.md.

A study with [[embedders]] embeds every dataset once per embedder and runs every job once per embedder; its
results, tables and findings call a dataset's jobs `<dataset>@<embedder>` (embrm.studies._config.group_label).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import polars as pl

from embrm.active import ActiveResult
from embrm.core import EmbrmError, Rows, check_out, exclusive, staged
from embrm.data import Dataset, DatasetSpec, half_of, load_dataset, rrm_dataset
from embrm.embedding import EmbedResult, embed_dataset, embed_views, view_groups
from embrm.evaluation import LengthEffect, Look, SequentialTest
from embrm.methods import MethodResult
from embrm.rewards import package_versions
from embrm.studies import _tables as R
from embrm.studies._config import Study, check_prompt_counts, check_rrm_texts, group_label, jobs_of
from embrm.studies._findings import Finding, Replication, decide, findings, replication
from embrm.studies._jobs import Call, active_task, check_run_options, method_task, run_jobs
from embrm.studies._report import embedder_rows, render_report
from embrm.studies._rl import plot_rl_study, rl_findings, rl_skipped, rl_table
from embrm.studies._sequential import DECIDED, SequentialRun, check_max_seeds, more_seeds, stop_reason, summarise
from embrm.studies._store import JobResult, ResultStore, StudyTimings, TextFacts


@dataclass
class StudyResult:
    out_dir: Path
    fits: pl.DataFrame
    bon: pl.DataFrame
    curves: pl.DataFrame
    published: pl.DataFrame
    timings: StudyTimings
    findings: list[Finding]
    methods: list[MethodResult] = field(default_factory=list)
    active: list[ActiveResult] = field(default_factory=list)  # one active labelling campaign per pool
    embedding: dict[str, TextFacts] = field(default_factory=dict)  # per job group
    length_effects: dict[str, LengthEffect | str] = field(default_factory=dict)  # per pool: its fit, or why none
    replication: list[Replication] | None = None  # per finding: the verdicts on two disjoint halves of the prompts
    embedders: list[dict] = field(default_factory=list)  # per (dataset, embedder): description and headline metrics
    sun: pl.DataFrame = field(default_factory=pl.DataFrame)  # Sun et al.'s numbers per job (study sun_metrics = true)
    rl: pl.DataFrame = field(default_factory=pl.DataFrame)  # one row per (job, policy, RL run) (study [rl])
    rl_skipped: dict[str, str] = field(default_factory=dict)  # "dataset / policy": why it did not run
    sequential: SequentialRun | None = None  # the looks of `embrm run --until-decided` and why they stopped

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"


def embed_all(study: Study, cache_dir, data_dir=None, progress=None, replicate: bool = False
              ) -> tuple[dict, dict, dict, dict]:
    """Embed every dataset of the study once per embedder (cached texts are not re-embedded) and, for RRM
    learners, each dataset's augmentation texts (each half's own too with `replicate`: a half draws its
    other-prompt answers from itself). Returns (cache spec per embedder name: None for the one [embedder]; seconds
    per job group; what the embedder's window did to each group's texts, keyed by _config.group_label; the
    matrices read from the cache for the jobs, {(dataset spec, cache spec JSON, rrm?): X}). Every dataset is loaded
    and checked first, so a bad one fails before the cache is touched."""
    loaded = _load_all(study, data_dir)
    check_rrm_texts(study)  # a Study built in code skips load_study's checks
    specs, seconds, facts, vectors = {}, {}, {}, {}
    _share_forward_passes(study, loaded, cache_dir, progress)
    for name in study.embedder_names:
        specs[name] = _embed_with(study, name, loaded, cache_dir, progress, replicate, seconds, facts, vectors)
    return specs, seconds, facts, vectors


def _load_all(study: Study, data_dir) -> dict:
    loaded = {spec: load_dataset(spec, data_dir) for spec in dict.fromkeys([*study.datasets, *study.human_pairs])}
    for spec in study.human_pairs:
        if loaded[spec].pairs is None:
            raise EmbrmError(f"{spec.source}: listed in human_pairs but has no pairs (chosen/rejected columns): move "
                             f"it to datasets")
    for spec in study.datasets:
        loaded[spec].require_pool("a study's `datasets` entry (pairs files go in `human_pairs`)")
    return loaded


def _share_forward_passes(study: Study, loaded: dict, cache_dir, progress) -> None:
    """Embedders that read other layers/poolings of one causal LM: one forward pass fills all their caches
    (embed_views), so the per-embedder pass below finds them warm."""
    for group in view_groups([study.embedder_of(name) for name in study.embedder_names]):
        for ds in loaded.values():
            if ds.vectors is None:
                embed_views(ds, group, cache_dir=cache_dir, progress=progress)


def _embed_with(study: Study, name: str | None, loaded: dict, cache_dir, progress, replicate: bool, seconds: dict,
                facts: dict, vectors: dict) -> dict | None:
    """Every loaded dataset under one embedder (embed_dataset); fills seconds and facts per group and the vectors
    read, returns the embedder's cache spec (None when every dataset carries its own vectors)."""
    config = study.embedder_of(name)
    embedder = config.build()
    options = dict(cache_dir=cache_dir, template=config.template, batch_size=config.batch_size, progress=progress)
    if any(learner.length_control == "rrm" for learner in study.learners):
        # RRM's other-prompt answers under each prompt: texts of their own, embedded once
        halves = {replace(d, half=h): half_of(loaded[d], h) for d in study.datasets for h in (1, 2)} if replicate \
            else {}
        for dataset, ds in (loaded | halves).items():
            aug = rrm_dataset(ds)
            _keep(vectors, dataset, embed_dataset(aug, embedder, **options), aug, rrm=True)
    spec = None
    for dataset, ds in loaded.items():
        res = _keep(vectors, dataset, embed_dataset(ds, embedder, **options), ds)
        group = group_label(dataset.label, name)
        seconds[group] = res.seconds
        spec = spec if ds.vectors is not None else res.spec  # the embedder's, for the jobs' cache reads
        facts[group] = TextFacts(res.n_texts, res.n_truncated, res.n_response_cut, list(res.indistinguishable),
                                 inputs_digest(ds, res), ds.source if ds.vectors is not None else None)
    return spec


def _keep(vectors: dict, dataset: DatasetSpec, embedded: EmbedResult, ds: Dataset, rrm: bool = False) -> EmbedResult:
    """Keep the matrix a dataset's jobs read from the cache (not vectors a dataset carries)."""
    if ds.vectors is None:
        vectors[dataset, json.dumps(embedded.spec, sort_keys=True), rrm] = embedded.X
    return embedded


def inputs_digest(ds: Dataset, embedded: EmbedResult) -> str:
    """What a job's result depends on beyond the study file: the vectors (the embedder's fingerprint, every
    response's text key) and the data (response ids, gold, exclusion, human pairs). A resumed study re-runs a job
    whose digest changed, e.g. after an embrm upgrade that changes the vectors or an edit of a data file."""
    if isinstance(ds.vectors, Rows):  # arrays: the fingerprint already digests every file (gold included) and rows
        return hashlib.blake2b(embedded.fingerprint.encode(), digest_size=12).hexdigest()
    r = ds.responses
    parts = [embedded.fingerprint, *embedded.keys, *r["response_id"].to_list(),
             r["gold"].cast(pl.Float64).fill_null(float("nan")).to_numpy().tobytes().hex(),
             r["excluded"].cast(pl.Int8).to_numpy().tobytes().hex()]
    if ds.pairs is not None:
        parts += [*ds.pairs["chosen_id"].to_list(), *ds.pairs["rejected_id"].to_list()]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=12).hexdigest()


def run_study(study: Study, out_dir, *, cache_dir="cache", data_dir=None, workers: int | None = None,
              runner: str = "local", address: str | None = None, progress: bool | None = None,
              command: str | None = None, replicate: bool | None = None, backend: str | None = None,
              overwrite: bool = False, until_decided: bool = False, max_seeds: int | None = None) -> StudyResult:
    """Run (or resume) a study and write its results directory and report. Everything is written under out_dir
    and cache_dir; both are checked, and every dataset loaded, before anything is written. runner: "local" (worker
    processes) or "ray" (at `address`). replicate (default: the study's `replicate`): run the study's pools again on
    each of two disjoint halves of their prompts (under out_dir/replication/half1, half2) and report which findings
    agree. backend: the deprecated name of runner (it names the embedder everywhere else). A directory holds one
    study's results: another study's are refused unless `overwrite` (then replaced); one run at a time writes it.
    until_decided with max_seeds: after the study's seeds, add batches of as many new seeds until every finding is
    decided by a group-sequential boundary or max_seeds is reached (embrm.studies._sequential); the tables, findings
    and report are then those of the final seeds."""
    if backend is not None:
        warnings.warn("run_study(backend=...) is deprecated: use runner=", DeprecationWarning, stacklevel=2)
        runner = backend
    out, cache_dir = Path(out_dir), Path(cache_dir)
    store = ResultStore(out)
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    check_run_options(workers, runner)
    check_out(out, option="--out")  # directories this run writes under: refused up front, before any work
    check_out(cache_dir, option="--cache-dir")
    replicate = study.replicate if replicate is None else replicate
    check_prompt_counts(replace(study, replicate=replicate))  # --replicate on a study that does not: its halves
    if until_decided != (max_seeds is not None):
        raise EmbrmError("--until-decided and --max-seeds go together: give both (e.g. --until-decided --max-seeds 12) "
                         "or neither", field="--max-seeds")
    if until_decided:
        check_max_seeds(study, max_seeds, replicate)
    with exclusive(out, "--out"):  # one run per results directory at a time
        store.check_owner(study.name, overwrite)
        return _run_study(study, store, cache_dir, data_dir, workers, runner, address, progress, command, replicate,
                          overwrite, max_seeds if until_decided else None)


def _run_study(study: Study, store: ResultStore, cache_dir: Path, data_dir, workers: int, runner: str,
               address: str | None, progress: bool | None, command: str | None, replicate: bool,
               overwrite: bool, max_seeds: int | None = None) -> StudyResult:
    out = store.out
    t0 = time.perf_counter()
    specs, embed_seconds, embedding, vectors = embed_all(study, cache_dir, data_dir, progress, replicate)
    store.claim(study.name, overwrite)
    t1 = time.perf_counter()
    run = partial(_run_some, store=store, specs=specs, embedding=embedding, cache_dir=cache_dir, data_dir=data_dir,
                  workers=workers, runner=runner, address=address, progress=progress, vectors=vectors)
    sequential, looks = None, {}
    if max_seeds is not None:  # the looks run the jobs of growing seeds; the products below are the final seeds'
        study, sequential, looks = _until_decided(study, run, max_seeds)
    jobs = jobs_of(study)
    halves = replication_jobs(study) if replicate else []
    side: dict = {}  # the methods' and active labelling's results, run by the workers beside the jobs
    # after the looks, the main jobs are loaded back, not run again
    done = run(study, jobs + halves, beside=_beside(study, specs, side, cache_dir, data_dir))
    results = done[:len(jobs)]
    t2 = time.perf_counter()
    curves = store.curves(jobs, study, results)
    timings = StudyTimings(t1 - t0, t2 - t1, len(jobs), len(halves), workers, runner, embed_seconds,
                           {r.key: round(r.seconds, 2) for r in done})
    with staged(out) as stage:  # tables, plots and report appear together: a failure leaves the previous ones
        products = ResultStore(stage)
        fits, bon, pub = R.fit_table(results), R.bon_table(results), R.published_table(results)
        for name, frame in (("fit_metrics", fits), ("bon_summary", bon), ("bon_curves", curves),
                            ("published_picks", pub)):
            products.write_table(name, frame)
        result = StudyResult(out, fits, bon, curves, pub, timings, all_findings(results, bon), embedding=embedding,
                             length_effects=_length_effects(results), embedders=embedder_rows(study, specs, fits, bon),
                             sun=R.sun_table(results), rl=rl_table(results), rl_skipped=rl_skipped(results),
                             sequential=sequential)
        for f in result.findings:
            f.sequential = looks.get(f.key)
        if not result.rl.is_empty():
            products.write_table("rl_summary", result.rl)
        if not result.sun.is_empty():
            products.write_table("sun_metrics", result.sun)
        products.write_json("embedders.json", result.embedders)
        products.write_json("findings.json", [f.to_dict() for f in result.findings])
        if replicate:
            result.replication = _compare_halves(done[len(jobs):], halves, products)
        result.methods = [side["method", name] for name in study.methods] if study.datasets else []
        result.active = [side["active", d.label] for d in study.datasets] if study.active is not None else []
        for method in result.methods:
            products.write_method(method)
        for campaign in result.active:
            products.write_active(campaign)
        timings.methods = {m.name: round(m.seconds, 2) for m in result.methods}
        timings.active = {a.dataset: round(a.seconds, 2) for a in result.active}
        plots = _plot(study, result, results, stage)
        timings.total = time.perf_counter() - t0
        timings.products = timings.total - (t2 - t0)  # the report's own rendering is left out: it is milliseconds
        products.write_json("study.json", {"study": study.to_dict(), "command": command,
                                           "embedder_spec": specs.get(None, specs), "machine": machine(),
                                           "timings": timings.to_dict(),
                                           "embedding": {k: v.to_dict() for k, v in embedding.items()},
                                           "embedders": result.embedders}
                           | ({"sequential": sequential.to_dict()} if sequential else {}), indent=2)
        products.write_text(result.report_path.name, render_report(study, result, plots, command))
    return result


def _run_some(study: Study, jobs: list, *, store: ResultStore, specs: dict, embedding: dict, cache_dir: Path,
              data_dir, workers: int, runner: str, address: str | None, progress: bool | None,
              vectors: dict, beside: list[Call] | None = None) -> list[JobResult]:
    """Run the jobs not yet in the store (embedding was done once, before): their results, in order. A half's
    inputs are its whole dataset's, marked with the half."""
    inputs = {label: facts.inputs for label, facts in embedding.items()}
    inputs |= {j.group: f"{inputs[replace(j, dataset=replace(j.dataset, half=0)).group]}:half{j.dataset.half}"
               for j in jobs if j.dataset.half}
    return run_jobs(study, jobs, store, specs, cache_dir, data_dir=data_dir, workers=workers, inputs=inputs,
                    runner=runner, address=address, progress=progress, vectors=vectors, beside=beside)


def _until_decided(study: Study, run, max_seeds: int) -> tuple[Study, SequentialRun, dict[str, Look]]:
    """Look at the findings after the study's seeds, then after each batch of new seeds (as many as the study's),
    until every finding is decided or max_seeds is reached: (the study at its final seeds, the looks and why they
    stopped, each finding's last Look). One SequentialTest keeps every finding's information fractions."""
    test = SequentialTest(max_seeds)
    record = SequentialRun(max_seeds, len(study.seeds), alpha=test.alpha, futility=test.futility)
    looks: dict[str, Look] = {}
    for k in range(1, max_seeds + 1):  # at most one look per added seed; the reason below ends it sooner
        results = run(study, jobs_of(study))
        fresh = [test.look(f.key, f.effect, f.direction) for f in all_findings(results, R.bon_table(results))
                 if f.effect is not None and (f.key not in looks or looks[f.key].status not in DECIDED)]
        looks |= {x.key: x for x in fresh}
        record.looks.append(summarise(k, len(study.seeds), looks, fresh))
        if reason := stop_reason(looks, k, len(study.seeds), max_seeds):
            record.reason = reason
            break
        study = replace(study, seeds=study.seeds + more_seeds(study.seeds, record.batch, max_seeds))
    return study, record, looks


def _plot(study: Study, result: StudyResult, results: list[JobResult], where: Path) -> list[Path]:
    """The study's PNGs: Best-of-n per pool, RL per pool and policy, reliability per pool (first noise)."""
    fits, bon, rl = result.fits, result.bon, result.rl
    plots = R.plot_study(result.curves, bon, result.published, where, *_plot_choice(study)) if not bon.is_empty() \
        else []
    plots += [p for d, policy in (rl.select("dataset", "policy").unique(maintain_order=True).iter_rows()
                                  if not rl.is_empty() else []) if (p := plot_rl_study(results, where, d, policy))]
    plots += [p for d, n in fits.select("dataset", "noise").unique(maintain_order=True).iter_rows()
              if n == fits.filter(pl.col("dataset") == d)["noise"][0]
              and (p := R.plot_reliability_study(results, where, d, n)) is not None]
    return plots


def all_findings(results: list[JobResult], bon: pl.DataFrame) -> list[Finding]:
    """The Best-of-n, accuracy and length findings, then the RL findings of every pool that ran [rl]."""
    datasets = dict.fromkeys(r.dataset for r in results if r.rl)
    return decide(findings(results, bon) + [f for d in datasets for f in rl_findings(results, d)], results)


def _length_effects(results: list[JobResult]) -> dict[str, LengthEffect | str]:
    """Per pool, the fit behind its length-controlled gold (the same in every job of the pool: which gold, its fit,
    and with named answer sources how raw, log-linear and AlpacaEval-style gold rank them), or why it has none."""
    effects = {r.dataset: r.evaluation.length_effect or r.evaluation.length_error for r in results}
    return {dataset: effect for dataset, effect in effects.items() if effect}


def replication_jobs(study: Study) -> list:
    """The study's pool jobs again on each of two disjoint halves of every pool's prompts (embrm.data.half_of):
    the same protocols, so every finding of the pools is measured twice on prompts the other half never saw."""
    return [job for half in (1, 2) for job in
            jobs_of(replace(study, datasets=[replace(d, half=half) for d in study.datasets], human_pairs=[]))]


def _compare_halves(results: list[JobResult], jobs: list, store: ResultStore) -> list[Replication]:
    """Each half's findings, and which agree (replication.json)."""
    halves = [all_findings(part, R.bon_table(part)) for half in (1, 2)
              if (part := [r for r, j in zip(results, jobs) if j.dataset.half == half])]
    rows = replication(*halves) if len(halves) == 2 else []
    store.write_json("replication.json", [r.to_dict() for r in rows])
    return rows


def _beside(study: Study, specs: dict, side: dict, cache_dir, data_dir) -> list[Call]:
    """The methods (on the first pool, first seed) and active labelling campaigns (every pool), under the first
    embedder: they need no job's result, so the workers run them beside the jobs; each result lands in
    side[("method", name)] or side[("active", pool label)]."""
    first = json.dumps(specs[study.embedder_names[0]], sort_keys=True)
    paths = (str(cache_dir), None if data_dir is None else str(data_dir))
    pools = study.datasets[:1] if study.methods else []
    methods = [Call(method_task, (name, d, first, *paths, study.seeds[0]), partial(side.__setitem__, ("method", name)),
                    f"method {name}") for d in pools for name in study.methods]
    active = [Call(active_task, (d, first, *paths, study.active), partial(side.__setitem__, ("active", d.label)),
                   f"active labelling on {d.label}") for d in (study.datasets if study.active is not None else [])]
    return methods + active


def _plot_choice(study: Study) -> tuple[str, str]:
    """The learner and noise shown in plots: the first MLP learner (else the first), under the noisiest labels."""
    learner = next((l for l in study.learners if l.head == "mlp"), study.learners[0]).name
    noise = max(study.noise, key=lambda n: n.flip if n.flip is not None else 1 / (1 + n.beta)).name
    return learner, noise


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "packages": package_versions()}
