"""A study's results: one typed result per job (JobResult) and the one store that writes and reads them.

    store = ResultStore(out_dir)
    store.save(job, study, result)                  # jobs/<key>-<digest>.parquet (curves), then .json (last)
    store.load(job, study, inputs)                  # the JobResult stored for this job, or None: run it (again)
    store.write_json("findings.json", rows)         # every other file of the results directory, atomically

A job's JSON on disk means a complete job: its curves are written first. Every file is written atomically (a
temporary file renamed over it), so a run killed at any moment leaves the old file or the whole new one. A job
whose files exist with the same digest and inputs and read back whole is not run again (resume); a result of
another RESULT_VERSION is run again; a damaged one is reported in one line on stderr and run again.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, file_stem, stale_stages, write_atomic
from embrm.evaluation import BonResult, Evaluation, FitMetrics, PublishedPick
from embrm.pipeline import Protocol
from embrm.studies._config import Job, Study

# Ensemble modes whose members see different data (bootstrap resamples, disjoint prompt shares) or different
# embedding dimensions (features): Coste et al.'s conservative aggregations need members that disagree off the data.
DIVERSE_MODES = ("bootstrap", "features", "disjoint")
MODE_PARAMS = ("feature_fraction",)  # parameters that only a diverse mode takes

OWNER_FILE = ".study"  # {"study": name}: the study whose results a directory holds (written before any job)
RESULT_VERSION = 6  # 6: calibration metrics and the conformal bound's coverage; 5: Best-of-n on a grid of n, ...


@dataclass
class JobResult:
    """One job's result: what it was (key, group, learner facts, labels, seed), its experiment's held-out evaluation
    (metrics, Best-of-n summaries per pool, published picks, length effect, conformal calibration) and its cost.

    `dataset` is the job's group: the dataset's label, `<dataset>@<embedder>` in a study comparing embedders.
    `curves` travels from the worker to the store only; a result read back holds None (the curves are in the
    job's Parquet file)."""

    key: str
    kind: str  # "pool" | "human"
    dataset: str
    learner: str  # the learner's name (embrm.pipeline.Learner.name)
    noise: str  # the annotator's name, "human" for human labels
    seed: int
    k: int  # ensemble members
    protocol: Protocol  # the experiment as run (its learner: head, mode, length control, own k)
    n_train_pairs: int
    label_accuracy: float | None  # share of simulated labels agreeing with gold (None for human labels)
    evaluation: Evaluation
    seconds: float
    curves_rows: int  # rows of the curves file (a resume checks the file against it)
    inputs: str | None = None  # digest of the vectors and data it was computed from
    embedder: str | None = None  # a study comparing embedders: the embedder's name
    dataset_label: str | None = None  # ... and the dataset's own label
    version: int = RESULT_VERSION
    # the study's [rl] runs on this job's reward: {policy: {"summary": RLResult.to_dict(), "runs": [RLRun dicts]}
    # or {"skipped": why}}; None without [rl]
    rl: dict | None = field(default=None, repr=False, compare=False)
    curves: pl.DataFrame | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------------- learner facts

    @property
    def head(self) -> str:
        return self.protocol.learner.head

    @property
    def mode(self) -> str:
        return self.protocol.learner.mode

    @property
    def length_control(self) -> str:
        return self.protocol.learner.length_control

    @property
    def plain(self) -> bool:
        """Without length control: the learners the papers' claims are measured on."""
        return self.length_control == "none"

    @property
    def plain_learner(self) -> str:
        """The same learner without its length control (`mlp.posthoc` -> `mlp`, `mlp.odin.k10` -> `mlp.k10`)."""
        return replace(self.protocol.learner, length_control="none").name

    @property
    def independent_learner(self) -> str | None:
        """For members made to differ (DIVERSE_MODES): the same learner with independent members (its mode's own
        parameters dropped: `linear-feat0.25` -> `linear`), the baseline of the diversity findings; else None."""
        learner = self.protocol.learner
        if learner.mode not in DIVERSE_MODES:
            return None
        return replace(learner, mode="independent", params=tuple(p for p in learner.params
                                                                 if p[0] not in MODE_PARAMS)).name

    @property
    def sized(self) -> bool:
        """The learner names its own ensemble size (`<learner>.k<K>`)."""
        return self.protocol.learner.k is not None

    @property
    def unsized_learner(self) -> str:
        """The same learner at the study's ensemble size (`mlp.k10` -> `mlp`)."""
        return replace(self.protocol.learner, k=None).name

    @property
    def labels(self):
        """The annotator as run (embrm.pipeline.LabelConfig: kind, beta, flip, n_pairs)."""
        return self.protocol.labels

    # ------------------------------------------------------------------------- the evaluation

    @property
    def metrics(self) -> FitMetrics:
        return self.evaluation.metrics

    @property
    def bon(self) -> dict[str, BonResult]:
        return self.evaluation.bon

    @property
    def published(self) -> list[PublishedPick]:
        return self.evaluation.published

    # ------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        """The job file's JSON: the experiment's (embrm.pipeline.ExperimentResult.to_dict) and the job's fields."""
        d = {"protocol": self.protocol.to_dict(), "n_train_pairs": self.n_train_pairs,
             "label_accuracy": self.label_accuracy, **self.evaluation.to_dict(),
             "key": self.key, "kind": self.kind, "dataset": self.dataset, "learner": self.learner,
             "head": self.head, "mode": self.mode, "length_control": self.length_control, "k": self.k,
             "seed": self.seed, "noise": self.noise, "seconds": self.seconds, "version": self.version,
             "curves_rows": self.curves_rows}
        if self.embedder is not None:
            d.update(embedder=self.embedder, dataset_label=self.dataset_label)
        if self.rl is not None:
            d["rl"] = self.rl
        return d | {"inputs": self.inputs}

    @classmethod
    def from_dict(cls, d: dict) -> JobResult:
        """The JobResult of to_dict(); a damaged one raises KeyError, TypeError or ValueError."""
        return cls(d["key"], d["kind"], d["dataset"], d["learner"], d["noise"], int(d["seed"]), int(d["k"]),
                   Protocol.from_dict(d["protocol"]), int(d["n_train_pairs"]), d.get("label_accuracy"),
                   Evaluation.from_dict(d), float(d["seconds"]), int(d["curves_rows"]), d.get("inputs"),
                   d.get("embedder"), d.get("dataset_label"), int(d["version"]), d.get("rl"))


def result_paths(jobs_dir: Path, job: Job, study: Study) -> tuple[Path, Path]:
    """A job's JSON and curves files: its key and the digest of everything that shapes its result."""
    stem = file_stem(job.key.replace("/", "__")) + "-" + job.digest(study)
    return jobs_dir / f"{stem}.json", jobs_dir / f"{stem}.parquet"


@dataclass
class TextFacts:
    """What the embedder's window did to one job group's texts, and which inputs its jobs read."""
    n_texts: int
    n_truncated: int
    n_response_cut: int
    indistinguishable: list[str]  # prompts whose different responses got identical vectors
    inputs: str  # digest of the texts and vectors (a changed input re-runs the jobs)
    generated: str | None = None  # a generated dataset's source (its gold is known exactly)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "generated" or v is not None}


@dataclass
class StudyTimings:
    """Seconds per stage of `embrm run` (wall clock) and the run's shape."""
    embed_total: float
    jobs_wall: float
    n_jobs: int
    n_replication_jobs: int
    workers: int
    runner: str
    embed_seconds: dict[str, float]  # per job group
    job_seconds: dict[str, float]  # per job key
    methods: dict[str, float] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)  # per pool
    products: float = 0.0  # tables, findings, plots and the report, after the jobs
    total: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "backend": self.runner}  # "backend": the key's name before 0.2


class ResultStore:
    """A study's results directory: owns jobs/ and writes every file of the study's results, atomically."""

    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.jobs_dir = self.out / "jobs"

    # ------------------------------------------------------------------------- whose results

    def owner(self) -> str | None:
        """The study whose results the directory holds (its marker, else the study.json of an older embrm), or None
        for an empty or missing directory; EmbrmError for a directory of other files."""
        for path, name_of in ((self.out / OWNER_FILE, lambda d: d["study"]),
                              (self.out / "study.json", lambda d: d["study"]["name"])):
            try:
                return str(name_of(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if self.out.is_dir() and any(self.out.iterdir()):
            raise EmbrmError(f"--out {self.out} holds files that are not an embrm study's results: choose another "
                             f"--out (an empty or new directory)", field="--out")
        return None

    def check_owner(self, study: str, overwrite: bool) -> str | None:
        """Refuse a directory that holds another study's results unless `overwrite` (checked before any work):
        one study per directory, so a report never mixes two studies' jobs. Returns the other study's name."""
        owner = self.owner()
        if owner is not None and owner != study and not overwrite:
            raise EmbrmError(f"--out {self.out} holds the results of study {owner!r}, not {study!r}: pass --overwrite "
                             f"to replace them, or choose another --out", field="--out")
        return owner if owner != study else None

    def claim(self, study: str, overwrite: bool) -> None:
        """Make the directory this study's: another study's results are removed first (only with `overwrite`)."""
        if self.check_owner(study, overwrite) is not None:
            for entry in self.out.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        for stage in stale_stages(self.out):  # a killed run's unfinished products (the caller holds the lock)
            shutil.rmtree(stage, ignore_errors=True)
        write_atomic(self.out / OWNER_FILE, json.dumps({"study": study}) + "\n")

    # ------------------------------------------------------------------------- jobs

    def paths(self, job: Job, study: Study) -> tuple[Path, Path]:
        return result_paths(self.jobs_dir, job, study)

    def save(self, job: Job, study: Study, result: JobResult) -> JobResult:
        """Curves first, then the JSON (written last: a JSON on disk means a complete job). Returns the result as
        stored (curves None), so that a fresh result and a resumed one are the same."""
        jpath, cpath = self.paths(job, study)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        curves = result.curves
        if curves is not None and not curves.is_empty():
            write_atomic(cpath, curves.with_columns(key=pl.lit(job.key)).write_parquet)
        stored = replace(result, curves=None, curves_rows=0 if curves is None else curves.height)
        text = json.dumps(stored.to_dict(), default=_json_default)  # no indent: json's C encoder, ~10x faster
        write_atomic(jpath, text)
        return JobResult.from_dict(json.loads(text))

    def load(self, job: Job, study: Study, inputs: str | None = None) -> JobResult | None:
        """The job's stored result, or None when the job must run: no result yet, one from another embrm version,
        one computed from other inputs (other vectors or data under the same names: `inputs` is their digest), or
        a damaged one (truncated, unreadable: reported in one line on stderr; the job runs again)."""
        jpath, cpath = self.paths(job, study)
        if not jpath.exists():
            return None
        try:
            doc = json.loads(jpath.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return _damaged(jpath, job, e)
        if doc.get("version") != RESULT_VERSION or doc.get("inputs") != inputs:
            return None
        try:
            result = JobResult.from_dict(doc)
        except (KeyError, TypeError, ValueError, AttributeError, EmbrmError) as e:
            return _damaged(jpath, job, f"{type(e).__name__}: {e}")
        try:
            found = pl.read_parquet(cpath).height if cpath.exists() else 0
        except (OSError, pl.exceptions.PolarsError) as e:
            return _damaged(cpath, job, e)
        if found != result.curves_rows:
            return _damaged(cpath, job, f"{found} curve rows, {result.curves_rows} expected")
        return result

    def curves(self, jobs: list[Job], study: Study, results: list[JobResult]) -> pl.DataFrame:
        """Every job's curves, one row per (job, pool, proxy, n), with the job's dataset, noise, learner and seed."""
        files = [c for j in jobs if (c := self.paths(j, study)[1]).exists()]
        if not files:
            return pl.DataFrame()
        meta = pl.DataFrame([{"key": r.key, "dataset": r.dataset, "noise": r.noise, "learner": r.learner,
                              "seed": r.seed} for r in results])
        return pl.concat([pl.read_parquet(f) for f in files]).join(meta, on="key")

    # ------------------------------------------------------------------------- the study's own files

    def write_table(self, name: str, frame: pl.DataFrame) -> Path | None:
        """<name>.parquet; an empty table (e.g. no published reward models in the study) is not written."""
        path = self.out / f"{name}.parquet"
        if frame.is_empty():
            return None
        write_atomic(path, frame.write_parquet)
        return path

    def write_json(self, name: str, value, indent: int = 1) -> Path:
        return self.write_text(name, json.dumps(value, indent=indent, default=_json_default) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        return path

    def write_method(self, result) -> dict[str, Path]:
        """A method's files under methods/<name>/ (embrm.methods.MethodResult.write, atomic)."""
        return result.write(self.out / "methods" / file_stem(result.name))

    def write_active(self, result) -> dict[str, Path]:
        """An active labelling campaign's files under active/<pool>/ (embrm.active.ActiveResult.write, atomic)."""
        return result.write(self.out / "active" / file_stem(result.dataset))


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _damaged(path: Path, job: Job, why) -> None:
    why = " ".join(str(why).split())[:200] or type(why).__name__
    print(f"{path}: damaged result ({why}): running job {job.key} again", file=sys.stderr, flush=True)
    return None
