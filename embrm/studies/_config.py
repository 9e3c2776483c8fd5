"""A study: which datasets, embedder, annotator noise, learners, aggregations and seeds to run (`embrm run`).

A study is a TOML file (every key optional; the defaults below are the default study) and expands into a grid of
independent jobs, one per (dataset, noise, learner, seed) on pools and one per (dataset, learner, seed) on human
pairs. Validation happens before any work: an unknown key, a wrong type, a value out of its bounds (the same rules as
`embrm fit`: the pipeline's Protocol and the heads hold them), an unknown head / mode / aggregation or a dataset that
does not exist is one error naming the file, the key and the allowed values.

    name = "default"            # a plain name (letters, digits, . _ -): results go to results/<name> by default
    seeds = [0, 1, 2]
    datasets = ["alpaca-eval-models", "alpaca-eval-bon16"]      # pools with gold: labels are simulated
    human_pairs = ["hh-rlhf-harmless-test"]                      # pairwise data: pairwise accuracy on human labels
    test_size = 0.2                                              # share of prompts held out (split per seed)
    k = 5                                                        # ensemble members (Coste et al.: 5)
    aggregations = ["mean", "min", "median", "uwo", "lcb", "conformal", "single"]
    lam = 0.5                                                    # UWO
    lcb_beta = 1.0                                               # LCB
    n_grid = "log"              # Best-of-n's n: "all", "log" (~100 log-spaced n, with 1 and N) or a list; left out:
                                # every n for pools up to evaluation.ALL_N_LIMIT candidates, the log grid beyond
    with_excluded = true        # also evaluate Best-of-n with each pool's excluded responses (e.g. the hacking
                                # probes of alpaca-eval-models) put back, and report how often each reward picks one
    sun_metrics = false         # also Sun et al.'s numbers per job (random-subsample Best-of-N at 2..500, the pick's
                                # quantile, pairwise accuracy, Spearman; ensemble mean, min, first member)
    length_control_gold = "alpacaeval"  # the gold of the length-controlled Best-of-n (pool-lc): "alpacaeval"
                                # (AlpacaEval 2's length-controlled GLM) or "loglinear" (one slope on log(1 + chars))
    methods = ["laser", "moe", "composite", "policy"]            # the four methods, run on the first pool, seed 0
    [active]                    # active labelling campaigns (embrm.active) on every pool; left out: none. Keys:
    strategies = ["random", "dopt", "bald"]     # strategies, seed_pairs, batch, rounds, seeds (default: the
    rounds = 10                                 # study's), samples, C, lcb_beta, across_prompts, beta / flip, target
    replicate = true            # run the study again on two disjoint halves of each dataset's prompts and report
                                # which findings agree (`embrm run --replicate / --no-replicate` overrides)

    [embedder]                  # backend = "st" | "hf" | "openai" | "imported", model, dtype, max_length, template,
    backend = "st"              # layer, pooling, base_url, api_key_env, batch_size, device, max_tokens (the options
                                # of `embrm embed`; "imported": model = the directory `embrm import` printed)

    [[embedders]]               # instead of [embedder]: several embedders compared side by side (studies/
    name = "minilm"             # embedders.toml); each needs a plain, distinct name plus the keys of [embedder].
    backend = "st"              # Every job runs once per embedder (its key and results: `<dataset>@<name>/...`),
    [[embedders]]               # every dataset is embedded once per embedder, and the report compares them
    name = "smollm2-l10"        # (section "Embedders"). The methods and active labelling use the first one.
    backend = "hf"
    model = "smollm2"
    layer = 10

    [labels]
    n_pairs = 1000              # simulated annotations per job, drawn on the training prompts
    within_prompt = true
    pairs_per_prompt = 5        # optional (Sun et al.'s annotator): n_pairs / 5 random prompts, 5 pairs each

    [[noise]]                   # one entry per annotator: beta (Bradley-Terry) or flip (Coste et al.)
    name = "bt10"
    beta = 10.0
    n_pairs = 250               # optional: this annotator's label budget (default: [labels] n_pairs)

    [[learners]]                # head = "linear" | "mlp" | "lgbm" | "laplace"; mode = "independent" | "bootstrap" |
    head = "mlp"                # "shared_trunk" | "linear_heads" | "posterior" (laplace's only mode, its default) |
                                # "features" (linear, mlp; + feature_fraction, default 0.5) | "disjoint";
                                # further keys are the head's parameters, with the
                                # head's own bounds (embrm.rewards.heads: PARAMS); one learner per head + mode + control
    mode = "independent"
    hidden = [256, 128]
    length_control = "odin"     # none | posthoc | posthoc_global | odin (+ lam_length, lam_quality, lam_orth) | rrm
    k = 10                      # optional: this learner's ensemble size (default: the study's k; its name gets .k10)

A `datasets` / `human_pairs` entry is a named dataset (`embrm datasets`), a data file or a dataset declaration
(.toml, see embrm.data._registry), a table that declares a file in place (paths relative to the study file), or a
generated pool with a known gold (`generate = "overopt"`, `params = {...}`: embrm.data._overopt; studies/overopt.toml):

    [[datasets]]
    path = "my_pool.jsonl"      # or a named dataset, e.g. "alpaca-eval-bon16"
    name = "my-pool"
    prompts = 100               # optional: only the first 100 prompts (sorted prompt ids), e.g. for a quick study
    columns = { prompt = "instruction", response = "output", gold = "score", response_key = "model" }
    exclude = { column = "model", values = ["NullModel"], name = "probes" }

Each pool job is one embrm.pipeline.run_experiment with the Protocol that `job.protocol(study)` builds: the same
settings through `embrm fit` + `embrm bon-sim` give the same numbers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import tomllib
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from embrm.active import ActiveConfig
from embrm.core import SEED, EmbrmError, check_choice, check_name, check_nesting, check_value, shown
from embrm.data import GENERATORS, REGISTRY, DatasetSpec, dataset_spec, overopt_dataset, spec_from_table
from embrm.embedding import EmbedderConfig
from embrm.embedding.backends import BACKENDS
from embrm.methods import REGISTRY as METHODS
from embrm.pipeline import DEFAULT_AGGREGATIONS, DEFAULT_LEARNERS, LabelConfig, Learner, Protocol
from embrm.rl import RLPlan

EMBEDDER_KEYS = {"backend": str, "model": str, "dtype": str, "max_length": int, "template": str, "layer": int,
                 "pooling": str, "base_url": str, "api_key_env": str, "batch_size": int, "device": str,
                 "max_tokens": int}
# Names that become file or directory names (the study's results/<name>, a noise's, an embedder's or a dataset's
# part of a job's file name) are plain names: embrm.core.check_name.
MAX_JOBS = 10_000  # at ~10 s a job on 8 cores, a day of work: a bigger grid is a mistake or several studies


@dataclass(frozen=True)
class Noise:
    name: str
    beta: float | None = None
    flip: float | None = None
    n_pairs: int | None = None  # this annotator's label budget (default: the study's [labels] n_pairs)


def group_label(dataset: str, embedder: str | None) -> str:
    """What results, tables, findings and the report call a dataset's jobs: the dataset's label, or
    `<dataset>@<embedder>` in a study that compares embedders ('@' is in no plain name, so it reads back)."""
    return dataset if embedder is None else f"{dataset}@{embedder}"


@dataclass
class Study:
    name: str = "default"
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    datasets: list = field(default_factory=lambda: [DatasetSpec("alpaca-eval-models"),
                                                    DatasetSpec("alpaca-eval-bon16")])
    human_pairs: list = field(default_factory=lambda: [DatasetSpec("hh-rlhf-harmless-test")])
    test_size: float = 0.2
    k: int = 5
    aggregations: list = field(default_factory=lambda: list(DEFAULT_AGGREGATIONS))
    lam: float = 0.5
    lcb_beta: float = 1.0
    with_excluded: bool = True
    sun_metrics: bool = False  # also Sun et al.'s evaluation numbers per job (embrm.evaluation.sun_metrics)
    length_control_gold: str = "alpacaeval"  # pool-lc's gold: embrm.pipeline._protocol.LC_GOLDS
    replicate: bool = True
    n_grid: str | list | None = None  # Best-of-n's n: None (every n up to ALL_N_LIMIT), "all", "log", [n...]
    methods: list = field(default_factory=lambda: list(METHODS))
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    embedders: dict = field(default_factory=dict)  # [[embedders]]: name -> EmbedderConfig; empty: the one [embedder]
    labels: dict = field(default_factory=lambda: {"n_pairs": 1000, "within_prompt": True})
    active: ActiveConfig | None = None  # active labelling campaigns on every pool (embrm.active)
    rl: RLPlan | None = None  # RL runs on every pool job's fitted reward (embrm.rl; studies/rl.toml)
    noise: list = field(default_factory=lambda: [Noise("bt10", beta=10.0), Noise("flip25", flip=0.25)])
    # the plain learners and the MLP under each length control (studies/learners.toml: shared trunk, LightGBM)
    learners: list = field(default_factory=lambda: [
        DEFAULT_LEARNERS["linear"], DEFAULT_LEARNERS["laplace"], DEFAULT_LEARNERS["mlp"],
        *(replace(DEFAULT_LEARNERS["mlp"], length_control=c) for c in ("posthoc", "odin", "rrm"))])

    @property
    def embedder_names(self) -> list:
        """The embedders every job runs under: their names, or [None] for the one [embedder]."""
        return list(self.embedders) or [None]

    def embedder_of(self, name: str | None) -> EmbedderConfig:
        return self.embedder if name is None else self.embedders[name]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["learners"] = [l.to_dict() for l in self.learners]
        d["rl"] = None if self.rl is None else self.rl.to_dict()
        return d


@dataclass(frozen=True)
class Job:
    """One unit of work: fit one ensemble and evaluate it. `kind` is "pool" (simulated labels) or "human"."""
    kind: str
    dataset: DatasetSpec
    learner: Learner
    seed: int
    noise: Noise | None = None
    embedder: str | None = None  # the [[embedders]] name; None: the study's one [embedder]

    @property
    def group(self) -> str:
        return group_label(self.dataset.label, self.embedder)

    @property
    def key(self) -> str:
        noise = self.noise.name if self.noise else "human"
        return f"{self.group}/{noise}/{self.learner.name}/seed{self.seed}"

    def protocol(self, study: Study) -> Protocol:
        """The experiment this job runs, as every other entry point would describe it."""
        if self.noise is None:
            labels = LabelConfig("human")
        else:
            labels = LabelConfig("simulated", self.noise.beta, self.noise.flip,
                                 self.noise.n_pairs or study.labels["n_pairs"], study.labels.get("within_prompt", True),
                                 study.labels.get("pairs_per_prompt"))
        return Protocol(self.learner, labels, study.k, study.test_size, self.seed, tuple(study.aggregations),
                        study.lam, study.lcb_beta, with_excluded=study.with_excluded, n_grid=study.n_grid,
                        sun_metrics=study.sun_metrics, length_control_gold=study.length_control_gold)

    def digest(self, study: Study) -> str:
        """Changes whenever anything that shapes this job's result changes (resume keeps only matching results)."""
        doc = {"job": _unchanged(asdict(self)), "protocol": self.protocol(study).to_dict(),
               "embedder": _embedder_doc(study.embedder_of(self.embedder))}
        if study.rl is not None and self.kind == "pool":  # absent: the digests of studies without RL are unchanged
            doc["rl"] = study.rl.to_dict()
        return hashlib.blake2b(json.dumps(doc, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _unchanged(job: dict) -> dict:
    """A job's fields without those added since results were first stored, while they hold their defaults: a
    single-embedder study on whole datasets keeps its digests, so its stored results still resume."""
    job["dataset"] = {k: v for k, v in job["dataset"].items() if k not in ("prompts", "arrays") or v}
    return {k: v for k, v in job.items() if k != "embedder" or v is not None}


def _embedder_doc(config: EmbedderConfig) -> dict:
    """The embedder's options without those added since results were first stored, while at their defaults."""
    added = {"device": "auto", "max_tokens": None}
    return {k: v for k, v in asdict(config).items() if k not in added or v != added[k]}


def jobs_of(study: Study) -> list[Job]:
    embedders = study.embedder_names
    pool = [Job("pool", d, l, s, n, e) for d in study.datasets for e in embedders for n in study.noise
            for l in study.learners for s in study.seeds]
    human = [Job("human", d, l, s, None, e) for d in study.human_pairs for e in embedders for l in study.learners
             for s in study.seeds]
    return pool + human


# ----------------------------------------------------------------------------- parsing and validation

def load_study(path: str | Path | None = None) -> Study:
    """The default study, or one read from a TOML file (validated)."""
    if path is None:
        return Study()
    path = Path(path)
    if not path.is_file():
        raise EmbrmError(f"{path}: " + ("is a directory, not a study file" if path.is_dir() else "no such study file"))
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise EmbrmError(f"{path}: not UTF-8 text (byte {e.start}): save the study file as UTF-8") from None
    except tomllib.TOMLDecodeError as e:  # its message ends with "(at line L, column C)"
        raise EmbrmError(f"{path}: not valid TOML: {e}") from None
    except ValueError:  # an integer past Python's digit limit
        raise EmbrmError(f"{path}: not valid TOML: a number has more than {sys.get_int_max_str_digits()} digits") \
            from None
    except RecursionError:
        raise EmbrmError(f"{path}: not valid TOML: arrays or inline tables nested too deep to read: flatten them") \
            from None
    except MemoryError:
        raise EmbrmError(f"{path}: too large to read as a study file: it should be a few dozen lines") from None
    except OSError as e:
        raise EmbrmError(f"{path}: cannot read the study file ({e.strerror or e}): check its permissions") from None
    check_nesting(str(path), doc)
    if not doc:
        raise EmbrmError(f"{path}: the study file is empty: give at least one key (see embrm.studies._config), or run "
                         f"`embrm run` without a file for the default study")
    return study_from_dict(doc, str(path), path.parent)


TOP = {"name": str, "seeds": list, "datasets": list, "human_pairs": list, "test_size": float, "k": int,
       "aggregations": list, "lam": float, "lcb_beta": float, "with_excluded": bool, "replicate": bool,
       "sun_metrics": bool, "length_control_gold": str, "n_grid": (str, list), "methods": list, "embedder": dict,
       "embedders": list,
       "labels": dict, "noise": list, "learners": list, "active": dict, "rl": dict}
LABEL_KEYS = {"n_pairs": int, "within_prompt": bool, "pairs_per_prompt": int}
NOISE_KEYS = {"name": str, "beta": float, "flip": float, "n_pairs": int}


def _typed(where: str, key: str, value, kind):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise EmbrmError(f"{where}: key '{key}' must be {names}, got {type(value).__name__} {shown(value)}")
    return value


def _check_keys(where: str, doc: dict, allowed: dict) -> dict:
    if not isinstance(doc, dict):
        raise EmbrmError(f"{where}: expected a table, got {type(doc).__name__} {shown(doc)}")
    for key in doc:
        if key not in allowed:
            raise EmbrmError(f"{where}: unknown key '{key}': allowed keys are {', '.join(allowed)}")
    return {k: _typed(where, k, v, allowed[k]) for k, v in doc.items()}


def _checked(where: str, build):
    """build() (a Learner, LabelConfig, Protocol...: they hold the rules), its error prefixed with where the values
    came from."""
    try:
        return build()
    except EmbrmError as e:
        raise EmbrmError(f"{where}: {e}") from None


def _distinct(where: str, key: str, values: list) -> None:
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise EmbrmError(f"{where}: {key} #{i + 1} repeats {shown(v)}: give each entry once")
        seen.add(v)


def _distinct_learners(where: str, learners: list[Learner]) -> None:
    """Results are kept per learner name (head + mode): two learners with one name would overwrite each other."""
    names = [l.name for l in learners]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise EmbrmError(f"{where} [[learners]] #{i + 1}: a second {name!r} learner (same head, mode and length "
                             f"control as #{names.index(name) + 1}): results are kept per learner, so put other "
                             f"parameters in another study")


def study_from_dict(doc: dict, where: str = "study", base: Path = Path(".")) -> Study:
    """A validated Study; `base` is the study file's directory (dataset tables' paths are relative to it)."""
    check_nesting(where, doc)
    doc = _check_keys(where, doc, TOP)
    study = Study()
    for key in ("name", "test_size", "k", "lam", "lcb_beta", "with_excluded", "replicate", "n_grid", "sun_metrics",
                "length_control_gold"):
        if key in doc:
            setattr(study, key, doc[key])
    for key in ("seeds", "aggregations", "methods"):
        if key in doc:
            kind = int if key == "seeds" else str
            setattr(study, key, [_typed(f"{where}: {key}", f"{key}[{i}]", v, kind) for i, v in enumerate(doc[key])])
    for key in ("datasets", "human_pairs"):
        if key in doc:
            setattr(study, key, [_dataset(f"{where}: {key}[{i}]", v, base) for i, v in enumerate(doc[key])])
    if "embedder" in doc and "embedders" in doc:
        raise EmbrmError(f"{where}: give either [embedder] (one embedder) or [[embedders]] (several, each with a "
                         f"name), not both")
    if "embedder" in doc:
        study.embedder = _embedder(f"{where} [embedder]", doc["embedder"])
    if "embedders" in doc:
        study.embedders = _embedders(where, doc["embedders"])
    if "labels" in doc:
        study.labels = {**study.labels, **_check_keys(f"{where} [labels]", doc["labels"], LABEL_KEYS)}
        _checked(f"{where} [labels]", lambda: LabelConfig("simulated", **study.labels))
    if "noise" in doc:
        study.noise = [_noise(f"{where} [[noise]] #{i + 1}", n) for i, n in enumerate(doc["noise"])]
    if "learners" in doc:
        study.learners = [_learner(f"{where} [[learners]] #{i + 1}", l) for i, l in enumerate(doc["learners"])]
    if "active" in doc:
        study.active = _active(f"{where} [active]", doc["active"], study)
    if "rl" in doc:
        study.rl = _checked(f"{where} [rl]", lambda: RLPlan.from_dict(doc["rl"]))
    _validate(study, where)
    return study


def _dataset(where: str, entry, base: Path) -> DatasetSpec:
    """A name, a data file, a declaration file (.toml), or an in-place declaration table."""
    if isinstance(entry, dict):
        spec = spec_from_table(entry, where, base)
    elif not isinstance(entry, str):
        raise EmbrmError(f"{where}: give a dataset name, a file path or a table (path, columns, exclude)")
    else:
        if entry not in REGISTRY and not Path(entry).exists() and (base / entry).exists():
            entry = str(base / entry)  # a file beside the study file
        spec = _checked(where, lambda: dataset_spec(entry))  # its error says what a name, a file, a .toml is
    if spec.source not in REGISTRY and spec.source not in GENERATORS and not Path(spec.source).is_file():
        what = "a directory" if Path(spec.source).is_dir() else "not an existing file"
        raise EmbrmError(f"{where}: {spec.source!r} is {what}: give a named dataset ({', '.join(REGISTRY)}) or a "
                         f"data file")
    check_name(where, "name", spec.label)
    return spec


def _embedder(where: str, doc) -> EmbedderConfig:
    """The [embedder] table, checked now (EmbedderConfig checks its sizes and template) and by building the
    embedder (no model is loaded), so that a bad option fails before any work."""
    options = _check_keys(where, doc, EMBEDDER_KEYS)
    check_choice(f"{where}: backend", options.get("backend", "st"), tuple(BACKENDS))
    config = _checked(where, lambda: EmbedderConfig(**options))  # its sizes and template (EMBEDDER_RULES)
    _checked(where, config.build)
    return config


def _embedders(where: str, entries: list) -> dict:
    """[[embedders]]: name -> EmbedderConfig, each checked as [embedder] is; names distinct, configs different."""
    if not entries:
        raise EmbrmError(f"{where}: [[embedders]] is empty: give at least one embedder (or use [embedder])")
    named = [_named_embedder(f"{where} [[embedders]] #{i + 1}", e) for i, e in enumerate(entries)]
    _distinct(where, "[[embedders]] name", [name for name, _ in named])
    configs = [config for _, config in named]
    for i, config in enumerate(configs):
        if config in configs[:i]:
            raise EmbrmError(f"{where} [[embedders]] #{i + 1}: the same embedder as #{configs.index(config) + 1} "
                             f"(every key equal): its results would repeat; change a key or drop it")
    return dict(named)


def _named_embedder(where: str, doc) -> tuple[str, EmbedderConfig]:
    if not isinstance(doc, dict) or "name" not in doc:
        raise EmbrmError(f"{where}: needs name = a plain name (what the report calls this embedder), plus the keys "
                         f"of [embedder]")
    options = _check_keys(where, doc, {"name": str, **EMBEDDER_KEYS})
    name = check_name(where, "name", options.pop("name"))
    return name, _embedder(where, options)


def _noise(where: str, doc) -> Noise:
    doc = _check_keys(where, doc, NOISE_KEYS)
    if ("beta" in doc) == ("flip" in doc):
        raise EmbrmError(f"{where}: give exactly one of beta (Bradley-Terry annotator) or flip (flip rate)")
    _checked(where, lambda: LabelConfig("simulated", doc.get("beta"), doc.get("flip"), doc.get("n_pairs", 1000)))
    name = doc.get("name") or (f"bt{doc['beta']:g}" if "beta" in doc else f"flip{doc['flip']:g}")
    if "n_pairs" in doc and "name" not in doc:
        name += f"-{doc['n_pairs']}"
    return Noise(check_name(where, "name", name), doc.get("beta"), doc.get("flip"), doc.get("n_pairs"))


def _learner(where: str, doc) -> Learner:
    """head, mode, length_control and the head's own parameters (its rules: embrm.rewards.heads)."""
    if not isinstance(doc, dict) or "head" not in doc:
        raise EmbrmError(f"{where}: needs head = one of linear, mlp, lgbm (and optionally mode, length_control and "
                         f"the head's parameters)")
    params = {k: v for k, v in doc.items() if k not in ("head", "mode", "length_control", "k")}
    return _checked(where, lambda: Learner(doc["head"], doc.get("mode"), params,
                                           doc.get("length_control", "none"), doc.get("k")))


ACTIVE_KEYS = {"strategies": list, "seed_pairs": int, "batch": int, "rounds": int, "seeds": list, "samples": int,
               "C": float, "lcb_beta": float, "across_prompts": bool, "test_size": float, "beta": float,
               "flip": float, "target": float}


def _active(where: str, doc, study: Study) -> ActiveConfig:
    """An active labelling campaign; its seeds default to the study's, its test_size to the study's."""
    values = {"seeds": study.seeds, "test_size": study.test_size, **_check_keys(where, doc, ACTIVE_KEYS)}
    if values.get("flip") is not None:
        values.setdefault("beta", None)
    return _checked(where, lambda: ActiveConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in values.items()}))


def check_rrm_texts(study: Study, where: str = "study") -> None:
    """RRM embeds other prompts' answers under each prompt: a generated dataset has vectors but no texts."""
    if any(l.length_control == "rrm" for l in study.learners):
        for spec in (d for d in study.datasets if d.source in GENERATORS):
            raise EmbrmError(f"{where}: {spec.label}: a generated dataset has vectors but no texts to embed, and the "
                             f"rrm learner needs other prompts' answers embedded under each prompt: run rrm in "
                             f"another study")


def min_prompts(test_size: float, halves: bool = False) -> int:
    """The fewest prompts a job can split with test_size (embrm.data.split_prompts: round(test_size * P) held out):
    its test side needs one, its training side two (early stopping holds out whole prompts); with the replication
    halves, each half that many. Both sides only grow with P: the first P that serves both is the answer."""
    if test_size < 1e-9:  # no prompt count a declaration can give (< 2^31) holds one prompt out
        return 2 ** 31
    least = max(3, int(0.5 / test_size), int(1.5 / (1 - test_size)))  # below either, a side is short for sure
    while int(round(test_size * least)) < 1 or least - int(round(test_size * least)) < 2:
        least += 1
    return 2 * least if halves else least


def _prompt_count(spec: DatasetSpec) -> tuple[str, int] | None:
    """The key and number of prompts a dataset declares (prompts = N, or a generated pool's n_prompts); None where
    only the data knows (it is checked when read) or the split is the data's own (array and sun datasets)."""
    if spec.prompts and not spec.arrays:
        return "prompts", spec.prompts
    if spec.source == "overopt":
        default = inspect.signature(overopt_dataset).parameters["n_prompts"].default
        return "params n_prompts", dict(spec.params).get("n_prompts", default)
    return None


def check_prompt_counts(study: Study, where: str = "study") -> None:
    """Every dataset with a known prompt count can be split by every job (and halved, for the pools of a study
    that replicates): refused at load, not when a job (or a half) fails mid-run."""
    for key, specs in (("datasets", study.datasets), ("human_pairs", study.human_pairs)):
        halves = study.replicate and key == "datasets"
        need = min_prompts(study.test_size, halves)
        for i, spec in enumerate(specs):
            known = _prompt_count(spec)
            if known and known[1] < need:
                why = f"the replication halves need {need} (replicate = false: {min_prompts(study.test_size)})" \
                    if halves else f"a split needs {need}"
                raise EmbrmError(f"{where}: {key}[{i}] {known[0]} = {known[1]} is too few prompts: with test_size "
                                 f"{study.test_size:g} (2 prompts to train, 1 to test) {why}: give at least {need}",
                                 field="prompts")


def _validate(study: Study, where: str) -> None:
    """What needs the whole study: names, the grid, and the values every job's Protocol shares."""
    check_name(where, "name", study.name)
    labels = [d.label for d in study.datasets] + [d.label for d in study.human_pairs]
    if len(set(labels)) != len(labels):
        raise EmbrmError(f"{where}: two datasets share a name ({', '.join(labels)}): give each a distinct name")
    for i, seed in enumerate(study.seeds):
        _checked(f"{where}: seeds[{i}]", partial(check_value, "seed", seed, SEED))
    _distinct(where, "seeds", study.seeds)
    _distinct(where, "[[noise]] name", [n.name for n in study.noise])
    _distinct_learners(where, study.learners)
    check_rrm_texts(study, where)
    if len(study.embedders) > 1:
        for spec in (d for d in [*study.datasets, *study.human_pairs] if d.source in GENERATORS):
            raise EmbrmError(f"{where}: {spec.label}: a generated dataset carries its own vectors, the same under "
                             f"every embedder: compare [[embedders]] on text datasets, run it in another study")
    for method in study.methods:
        check_choice(f"{where}: methods entry", method, METHODS)
    _distinct(where, "methods", study.methods)
    _checked(where, lambda: Protocol(k=study.k, test_size=study.test_size, aggregations=tuple(study.aggregations),
                                     lam=study.lam, lcb_beta=study.lcb_beta, with_excluded=study.with_excluded,
                                     n_grid=study.n_grid, length_control_gold=study.length_control_gold))
    if not study.seeds:
        raise EmbrmError(f"{where}: seeds is empty: give at least one seed (three or more for intervals)")
    if not study.learners or (not study.datasets and not study.human_pairs):
        raise EmbrmError(f"{where}: nothing to run: give at least one learner and one dataset")
    if study.datasets and not study.noise:
        raise EmbrmError(f"{where}: pools need at least one [[noise]] annotator")
    check_prompt_counts(study, where)
    jobs = jobs_of(study)
    n_jobs = len(jobs) + (2 * sum(j.kind == "pool" for j in jobs) if study.replicate else 0)
    if n_jobs > MAX_JOBS:
        halves = " with the replication halves (replicate = false drops them)" if study.replicate else ""
        raise EmbrmError(f"{where}: {n_jobs} jobs (datasets x noise x learners x seeds){halves}: at most {MAX_JOBS} "
                         f"in one study: split it into several")
