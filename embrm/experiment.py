"""The main job (`embrm run`): embed, fit every (dataset, noise, learner, seed), Best-of-n, report.

    from embrm.experiment import run_study
    from embrm.study import load_study
    result = run_study(load_study(), "results/default")        # the default study on the real pools
    print(result.report_path.read_text())

Writes into the results directory: jobs/ (one JSON + one Parquet per finished job: the resume points),
fit_metrics.parquet, bon_summary.parquet, bon_curves.parquet, published_picks.parquet, study.json (the resolved
study, command, machine, package versions, timings), PNG plots and report.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from embrm import report as R
from embrm.data import Dataset
from embrm.datasets import load_dataset
from embrm.embed import EmbedResult, cached_embeddings, embed_dataset
from embrm.errors import EmbrmError
from embrm.files import write_atomic
from embrm.jobs import check_run_options, result_paths, run_jobs
from embrm.methods import MethodResult, render_methods, run_method
from embrm.persist import package_versions
from embrm.progress import Progress
from embrm.study import Study, jobs_of


@dataclass
class StudyResult:
    out_dir: Path
    fits: pl.DataFrame
    bon: pl.DataFrame
    curves: pl.DataFrame
    published: pl.DataFrame
    timings: dict
    findings: list
    methods: list[MethodResult] = field(default_factory=list)
    embedding: dict = field(default_factory=dict)  # per dataset: texts, truncated, responses cut, tied prompts

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"


def embed_all(study: Study, cache_dir, data_dir=None, progress=None) -> tuple[dict, dict, dict]:
    """Embed every dataset of the study (cached texts are not re-embedded). Returns (cache spec, seconds per
    dataset, what the embedder's window did to each dataset's texts). Every dataset is loaded and checked first,
    so a bad one fails before the cache is touched."""
    embedder = study.embedder.build()
    loaded = {spec: load_dataset(spec, data_dir) for spec in dict.fromkeys([*study.datasets, *study.human_pairs])}
    for spec in study.human_pairs:
        if loaded[spec].pairs is None:
            raise EmbrmError(f"{spec.source}: listed in human_pairs but has no pairs (chosen/rejected columns): move "
                             f"it to datasets")
    for spec in study.datasets:
        loaded[spec].require_pool("a study's `datasets` entry (pairs files go in `human_pairs`)")
    spec, seconds, facts = None, {}, {}
    for dataset, ds in loaded.items():
        res = embed_dataset(ds, embedder, cache_dir=cache_dir, template=study.embedder.template,
                            batch_size=study.embedder.batch_size, progress=progress)
        spec, seconds[dataset.label] = res.spec, res.seconds
        facts[dataset.label] = {k: getattr(res, k) for k in ("n_texts", "n_truncated", "n_response_cut",
                                                             "indistinguishable")}
        facts[dataset.label]["inputs"] = inputs_digest(ds, res)
    return spec, seconds, facts


def inputs_digest(ds: Dataset, embedded: EmbedResult) -> str:
    """What a job's result depends on beyond the study file: the vectors (the embedder's fingerprint, every
    response's text key) and the data (response ids, gold, exclusion, human pairs). A resumed study re-runs a job
    whose digest changed, e.g. after an embrm upgrade that changes the vectors or an edit of a data file."""
    r = ds.responses
    parts = [embedded.fingerprint, *embedded.keys, *r["response_id"].to_list(),
             r["gold"].cast(pl.Float64).fill_null(float("nan")).to_numpy().tobytes().hex(),
             r["excluded"].cast(pl.Int8).to_numpy().tobytes().hex()]
    if ds.pairs is not None:
        parts += [*ds.pairs["chosen_id"].to_list(), *ds.pairs["rejected_id"].to_list()]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=12).hexdigest()


def check_dir_option(path: Path, option: str) -> None:
    """A directory this run will write under (it may not exist yet): refused up front when it, or the nearest of
    its parents that exists, is not a directory, so that no work is lost to a bad path."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise EmbrmError(f"{option} {path}: {existing} is a file, not a directory: choose another {option}")


def run_study(study: Study, out_dir, *, cache_dir="cache", data_dir=None, workers: int | None = None,
              backend: str = "local", address: str | None = None, progress: bool | None = None,
              command: str | None = None) -> StudyResult:
    """Run (or resume) a study and write its results directory and report. Everything is written under out_dir
    and cache_dir; both are checked, and every dataset loaded, before anything is written."""
    out, cache_dir = Path(out_dir), Path(cache_dir)
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    check_run_options(workers, backend)
    check_dir_option(out, "--out")
    check_dir_option(cache_dir, "--cache-dir")
    t0 = time.perf_counter()
    spec, embed_seconds, embedding = embed_all(study, cache_dir, data_dir, progress)
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    jobs = jobs_of(study)
    results = run_jobs(study, jobs, out / "jobs", spec, cache_dir, data_dir=data_dir, workers=workers,
                       inputs={label: facts["inputs"] for label, facts in embedding.items()},
                       backend=backend, address=address, progress=progress)
    t2 = time.perf_counter()
    curve_files = [c for j in jobs if (c := result_paths(out / "jobs", j, study)[1]).exists()]
    curves = _curves(curve_files, results)
    fits, bon, pub = R.fit_table(results), R.bon_table(results), R.published_table(results)
    for name, frame in (("fit_metrics", fits), ("bon_summary", bon), ("bon_curves", curves), ("published_picks", pub)):
        write_atomic(out / f"{name}.parquet", frame.write_parquet)
    timings = {"embed_seconds": embed_seconds, "embed_total": t1 - t0, "jobs_wall": t2 - t1,
               "job_seconds": {r["key"]: round(r["seconds"], 2) for r in results}, "n_jobs": len(jobs),
               "workers": workers, "backend": backend}
    result = StudyResult(out, fits, bon, curves, pub, timings, findings(bon, fits, pub), embedding=embedding)
    result.methods = _run_methods(study, spec, cache_dir, data_dir, out, progress)
    timings["methods"] = {m.name: round(m.seconds, 2) for m in result.methods}
    plots = R.plot_study(curves, bon, pub, out, *_plot_choice(study)) if not bon.is_empty() else []
    timings["total"] = time.perf_counter() - t0
    manifest = json.dumps({"study": study.to_dict(), "command": command, "embedder_spec": spec, "machine": machine(),
                           "timings": timings, "embedding": embedding}, indent=2, default=str) + "\n"
    write_atomic(out / "study.json", manifest)
    report = render_report(study, result, plots, command)
    write_atomic(result.report_path, report)
    return result


def _run_methods(study: Study, spec: dict, cache_dir, data_dir, out: Path, progress: bool | None,
                 ) -> list[MethodResult]:
    """The further seeds (LASeR, MoE, composite, policy) on the study's first pool, first seed."""
    if not study.methods or not study.datasets:
        return []
    ds = load_dataset(study.datasets[0], data_dir)
    X = cached_embeddings(ds, spec, cache_dir)
    results = []
    with Progress(len(study.methods), "methods", "methods", progress) as bar:
        for name in study.methods:
            result = run_method(name, ds, X, seed=study.seeds[0], progress=False)
            result.write(out / "methods" / name)
            results.append(result)
            bar.advance()
    return results


def _curves(files: list[Path], results: list[dict]) -> pl.DataFrame:
    if not files:
        return pl.DataFrame()
    meta = pl.DataFrame([{k: r[k] for k in ("key", "dataset", "noise", "learner", "seed")} for r in results])
    return pl.concat([pl.read_parquet(f) for f in files]).join(meta, on="key")


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


# ----------------------------------------------------------------------------- findings

def findings(bon: pl.DataFrame, fits: pl.DataFrame, pub: pl.DataFrame) -> list[str]:
    """Statements of the anchors' claims, each with the measured paired difference and a verdict."""
    out = []
    if bon.is_empty():
        return out
    variant = "pool"
    for dataset in bon["dataset"].unique(maintain_order=True):
        where = dict(dataset=dataset, variant=variant)
        for a, b, claim in (("min", "mean", "worst-case (WCO, min) beats the ensemble mean"),
                            ("uwo", "mean", "uncertainty-weighted (UWO) beats the ensemble mean"),
                            ("mean", "single", "the ensemble mean beats a single member")):
            if not {a, b} <= set(bon["proxy"].unique()):
                continue
            for noise in bon["noise"].unique(maintain_order=True):
                m, h, n = R.paired(bon, a, b, "gain", noise=noise, **where)
                if n:
                    out.append(f"**{dataset}, {noise} labels** — Coste et al.: {claim}: gain difference "
                               f"{R.fmt(m, h)} over {n} (learner, seed) pairs → {_verdict(m, h)}.")
        m, h, n = R.paired(bon, "mean", "length", "gain", **where)
        if n:
            out.append(f"**{dataset}** — Sun et al.: an embedding-based ensemble (mean) beats the length-only reward: "
                       f"gain difference {R.fmt(m, h)} over {n} pairs → {_verdict(m, h)}.")
        mean = bon.filter((pl.col("dataset") == dataset) & (pl.col("variant") == variant) & (pl.col("proxy") == "mean"))
        if mean.height:
            peaked = mean.filter(pl.col("best_n") < pl.col("n_max"))
            drop = (peaked["gold_at_best_n"] - peaked["gold"]).mean() if peaked.height else 0.0
            out.append(f"**{dataset}** — Gao et al.: over-optimisation (gold peaks before n = N for the ensemble mean): "
                       f"in {peaked.height} of {mean.height} runs, by {drop:.3f} gold on average.")
    noises = fits.filter(pl.col("noise") != "human")["noise"].unique(maintain_order=True).to_list()
    for dataset in fits["dataset"].unique(maintain_order=True):
        f = fits.filter(pl.col("dataset") == dataset)
        if len(noises) >= 2:
            a, b = (f.filter(pl.col("noise") == n).select("learner", "seed", pl.col("accuracy").alias(n)) for n in noises[:2])
            d = a.join(b, on=["learner", "seed"])
            m, h = R.interval((d[noises[0]] - d[noises[1]]).to_list())
            if d.height:
                out.append(f"**{dataset}** — Sun et al.: label noise costs accuracy: {noises[0]} minus {noises[1]} held-out "
                           f"accuracy {R.fmt(m, h)} over {d.height} (learner, seed) pairs → {_verdict(m, h)}.")
        m, h = R.interval((f["accuracy"] - 0.5).to_list())
        out.append(f"**{dataset}** — the embeddings carry preference signal (held-out pairwise accuracy above chance, all "
                   f"learners and labels): "
                   f"{R.fmt(m + 0.5, h)} (chance 0.5) → {_verdict(m, h)}.")
    return out


def _verdict(mean: float, half: float) -> str:
    if not (half == half):  # NaN: one seed
        return "one seed only: no interval"
    if mean - half > 0:
        return "reproduced"
    if mean + half < 0:
        return "reversed here"
    return "not reproduced (the 95 % interval includes 0)"


# ----------------------------------------------------------------------------- report.md

def _embedding_section(embedding: dict) -> list[str]:
    """What the embedder's window did to the texts: a result built on responses it never saw must say so."""
    if not embedding:
        return []
    rows = [[f"`{name}`", str(f["n_texts"]), str(f["n_truncated"]), str(f["n_response_cut"]),
             str(len(f["indistinguishable"]))] for name, f in embedding.items()]
    lines = ["## What the embedder saw", "", "Texts longer than the embedder's window lose the prompt's start first; "
             "a response longer than the window (with a quarter of it kept for the prompt's end) loses its end. "
             "Prompts whose different responses still got identical vectors cannot be ranked by any reward.", "",
             R.md_table(["dataset", "texts", "cut to the window", "response lost tokens",
                         "prompts with indistinguishable responses"], rows), ""]
    tied = {name: f["indistinguishable"] for name, f in embedding.items() if f["indistinguishable"]}
    lines += [f"- `{name}`: indistinguishable responses on prompt(s) {', '.join(ids[:10])}"
              f"{' ...' if len(ids) > 10 else ''}" for name, ids in tied.items()]
    return lines + ([""] if tied else [])


def render_report(study: Study, result: StudyResult, plots: list[Path], command: str | None) -> str:
    bon, fits, pub, t = result.bon, result.fits, result.published, result.timings
    noises = [n.name for n in study.noise]
    lines = [f"# embrm study `{study.name}`", "",
             f"Command: `{command or 'embrm run'}` · seeds {study.seeds} · K = {study.k} members · "
             f"embedder {_embedder_text(study)} · {study.labels['n_pairs']} simulated pairs per job · "
             f"{len(study.seeds)} seeds, mean ± 95 % interval over seeds.", "",
             "Setting: reward models trained on simulated annotators over the TRAINING prompts of each pool and "
             f"evaluated on held-out prompts ({study.test_size:.0%} of prompts, split per seed). Best-of-n is the exact "
             "unbiased estimator over each held-out prompt's scored pool; `gold@N` is the expected gold of the pick "
             "at n = N (the whole pool), `gain` = (gold − random) / (oracle − random). Members are standardised on "
             "the training responses before aggregating. A dataset's excluded responses (on `alpaca-eval-models` its "
             "reward-hacking probes NullModel, gpt4_gamed, *_verbose) never label, train or enter the evaluated "
             "pool; `pool+<name>` puts them back and reports how often each reward picks one. `random pick "
             "(expected)` is the pool mean, the expected gold of a uniformly random pick.", ""]
    if result.findings:
        lines += ["## Findings (computed from the tables below)", ""] + [f"- {f}" for f in result.findings] + [""]
    for (dataset, variant), _ in (bon.group_by(["dataset", "variant"], maintain_order=True) if not bon.is_empty() else []):
        lines += [f"## Best-of-n on `{dataset}` ({variant})", "", R.bon_markdown(bon, dataset, variant, noises), ""]
        if variant != "pool":
            lines += [_excluded_rates(bon, dataset, variant), ""]
        if not pub.is_empty() and dataset in pub["dataset"].to_list() and variant == "pool":
            lines += ["Published reward models' best-of-16 picks on the same held-out prompts (not trained on this "
                      "pool: a different, harder setting):", "", R.published_markdown(pub, dataset), ""]
    for dataset in fits["dataset"].unique(maintain_order=True):
        against = fits.filter(pl.col("dataset") == dataset)["against"][0]
        lines += [f"## Pairwise accuracy on `{dataset}` (held-out, against the {against})", "",
                  R.fit_markdown(fits, dataset), ""]
    if result.methods:
        lines += [render_methods(result.methods), ""]
    lines += _embedding_section(result.embedding)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## Timing", "", R.md_table(["stage", "seconds"], [
        ["embedding (cached texts are free)", f"{t['embed_total']:.1f}"],
        [f"{t['n_jobs']} jobs on {t['workers']} {t['backend']} workers (wall)", f"{t['jobs_wall']:.1f}"],
        *[[f"method: {k}", f"{v:.1f}"] for k, v in t.get("methods", {}).items()],
        ["total", f"{t.get('total', 0):.1f}"]]), ""]
    per_learner = fits.group_by("learner", maintain_order=True).agg(pl.col("seconds").mean().alias("s"))
    lines += [R.md_table(["learner", "mean seconds per job (fit + evaluation)"],
                         [[r["learner"], f"{r['s']:.1f}"] for r in per_learner.iter_rows(named=True)]), ""]
    return "\n".join(lines)


def _embedder_text(study: Study) -> str:
    e = study.embedder
    return f"{e.backend}:{e.model or 'all-MiniLM-L6-v2 (packaged)'} ({e.dtype})"


def _excluded_rates(bon: pl.DataFrame, dataset: str, variant: str) -> str:
    sub = bon.filter((pl.col("dataset") == dataset) & (pl.col("variant") == variant)
                     & pl.col("excluded_pick_rate").is_not_null())
    s = R.summarise(sub, ["learner", "proxy"], ["excluded_pick_rate"])
    first = s["learner"][0]
    rows = [[f"{r['proxy']} (baseline)" if r["proxy"] in R.BASELINES else f"{r['learner']} · {r['proxy']}",
             R.fmt(r["excluded_pick_rate"], r["excluded_pick_rate_ci"])]
            for r in s.iter_rows(named=True) if r["proxy"] not in R.BASELINES or r["learner"] == first]
    what = variant.removeprefix("pool+")
    return (f"Excluded responses ({what}) may game the judge that produced gold, so a pick of theirs can inflate "
            f"gold here: read this table first. Share of held-out prompts whose top-scored answer (n = N) is one of "
            f"the {what}:\n\n") + R.md_table(["reward · aggregation", f"{what} picked at n = N"], rows)
