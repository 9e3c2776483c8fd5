"""Datasets and their facts: which file, which columns, which responses never label or score, what is attached.

A dataset is declared once, as a DatasetSpec: a registered name (the facts are in REGISTRY), a data file (columns
given as options), or a declaration file (TOML) that a command, a study and a notebook all accept:

    # my-pool.toml                         embrm embed my-pool.toml; embrm fit my-pool.toml ...; a study's datasets
    [dataset]
    path = "pool.jsonl"                  # relative to this file
    name = "my-pool"                     # optional (default: the file name); a plain name (letters, digits, . _ -)
    answer_source = "model"              # optional: the column naming who wrote each answer (a model, a policy):
                                         # the length-controlled gold holds it fixed (rewards.controlled_gold)
    [dataset.columns]                    # any of: prompt_id, prompt, response, gold, response_key, chosen, rejected
    prompt = "instruction"
    response = "output"
    gold = "score"
    response_key = "model"
    [dataset.exclude]                    # responses that never label, train or enter an evaluated pool
    column = "model"
    pattern = "^NullModel$|_verbose$"    # a regular expression (or values = ["a", "b"])
    name = "probes"                      # what they are, in reports and file names ("pool+probes"): a plain name

A declaration (a file's [dataset] table or a study's [[datasets]] table) may keep only some prompts: `prompts = N`
takes the first N prompts in sorted prompt-id order (a quick study on a real pool; the subset is part of the jobs'
digests and of the inputs a resume checks).

A generated pool with a known gold (embrm.data._overopt: learned over-optimisation at up to 10^4 candidates per prompt)
is a dataset too: `overopt` on the command line (default size), or in a study

    [[datasets]]
    generate = "overopt"
    name = "overopt"
    params = { n_prompts = 100, n_candidates = 10000, seed = 0 }   # any keyword of embrm.data.overopt_dataset, each
                                                                   # checked by its rule (overopt.PARAMS) and the
                                                                   # memory the pool would take

Its embeddings come with it (Dataset.vectors): nothing is embedded or cached.

Named datasets:

The local data directory is `--data-dir`, else $EMBRM_DATA_DIR, else ~/.cache/embrm/data. A file found there is
checked against its sha256. A missing file is downloaded from $EMBRM_DATA_MIRROR (a base URL holding the same
relative paths, e.g. a lab's mirror) or, where one exists, the upstream file itself; offline, the error says where
to put it.
"""

from __future__ import annotations

import inspect
import os
import re
import re._constants as re_ops  # the parse tree's opcodes: possessive repeats and atomic groups (Python >= 3.11)
import re._parser as re_parser
import shutil
import sys
import tomllib
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Integer, check_name, check_nesting, check_size, is_int, shown
from embrm.data._array_dataset import array_sources, load_array_dataset
from embrm.data._arrays import _sha256, state_dir
from embrm.data._dataset import Dataset, load_file, load_pairs, load_pool
from embrm.data._overopt import overopt_dataset, overopt_truth
from embrm.data._sun_layout import check_sun_dataset, sun_dataset

PROMPTS = Integer(1, 2 ** 31 - 1)  # a declaration's `prompts = N` (a study also needs enough to split: studies)


@dataclass(frozen=True)
class Generator:
    """A dataset made from parameters (with its own embeddings) instead of read from a file."""

    make: object  # (**params) -> (Dataset, X)
    check: object  # (**params) -> anything: refuses bad parameters cheaply, before any data is made
    description: str


def _check_sun(**params) -> None:
    """sun_dataset's own rules, then its arrays (float32 embeddings + gold) against the free disk where they go."""
    check_sun_dataset(**params)
    v = {k: p.default for k, p in inspect.signature(sun_dataset).parameters.items()} | params
    rows = v["train_prompts"] * v["train_responses"] + v["test_prompts"] * v["test_responses"]
    where = next(p for p in (state_dir() / "generated").absolute().parents if p.exists())
    check_size("sun_dataset", f"{rows} responses x {v['dim']} dims", rows * (4 * v["dim"] + 4),
               "use fewer prompts, responses or dims", free=shutil.disk_usage(where).free, kind=f"disk under {where}")


GENERATORS = {"overopt": Generator(overopt_dataset, overopt_truth,
                                   "pools with a known gold that turns down along a hackable direction: learned "
                                   "over-optimisation (params: n_prompts, n_candidates, dim, seed, hack, ...)"),
              "sun": Generator(sun_dataset, _check_sun,
                               "arrays in Sun et al.'s release layout (train and test splits, no texts) with a "
                               "planted gold, written once and read from disk (params: train_prompts, "
                               "train_responses, test_prompts, test_responses, dim, seed)")}

# Column roles a declaration may map, and the loader option each becomes.
COLUMN_ROLES = {"prompt_id": "prompt_id_col", "prompt": "prompt_col", "response": "response_col", "gold": "gold_col",
                "response_key": "response_key", "chosen": "chosen_col", "rejected": "rejected_col"}


@dataclass(frozen=True)
class Exclusion:
    """Responses whose `column` matches `pattern` (a regular expression): they never label, never train and never
    enter an evaluated pool unless evaluation asks for them (then their pick rate is reported)."""

    column: str
    pattern: str
    name: str = "excluded"

    def mask(self, responses: pl.DataFrame, where: str) -> pl.Series:
        if self.column not in responses.columns:
            raise EmbrmError(f"{where}: exclusion column {self.column!r} is not in the data (columns: "
                             f"{', '.join(responses.columns)}): fix the exclude rule")
        return responses[self.column].cast(pl.Utf8).fill_null("").str.contains(self.pattern)

    @classmethod
    def parse(cls, text: str, where: str = "--exclude") -> "Exclusion":
        """'COLUMN=REGEX' (e.g. 'model=^NullModel$|_verbose$')."""
        column, sep, pattern = text.partition("=")
        if not sep or not column.strip() or not pattern:
            raise EmbrmError(f"{where} {text!r}: give COLUMN=REGEX, e.g. --exclude 'model=^NullModel$'")
        return cls.checked(column.strip(), pattern, "excluded", where)

    @classmethod
    def checked(cls, column: str, pattern: str, name: str, where: str) -> "Exclusion":
        """The rule, if polars' regex engine (which runs it) reads `pattern` as Python's re does: each refusal names
        the construct the two engines disagree on."""
        check_name(where, "name", name)
        if not isinstance(column, str) or not column:
            raise EmbrmError(f"{where}: column must be a column name, got {shown(column)}")
        if not isinstance(pattern, str) or not pattern:
            raise EmbrmError(f"{where}: pattern must be a non-empty string (a regular expression), got "
                             f"{shown(pattern)}")
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                tree = re_parser.parse(pattern)  # not re.compile: its cache would hide the warnings on a re-check
                re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise EmbrmError(f"{where}: pattern {_brief(pattern)} is not a regular expression ({e})") from None
        if any(issubclass(w.category, FutureWarning) for w in said):  # "Possible nested set / set difference ..."
            raise EmbrmError(f"{where}: pattern {_brief(pattern)} has '[' or '&&', '--', '~~', '||' inside a class, "
                             f"which the matcher reads as nested classes or set operations: escape them (\\[, \\&)")
        if _possessive(tree):
            raise EmbrmError(f"{where}: pattern {_brief(pattern)} has a possessive quantifier (a++, a*+, a?+, a{{n}}+) "
                             f"or an atomic group (?>...), which the matcher reads as a nested repeat or refuses: "
                             f"drop the extra '+' (or the group)")
        try:  # the rule runs in polars' engine, which lacks look-around and backreferences
            pl.Series([""]).str.contains(pattern)
        except pl.exceptions.PolarsError as e:
            why = next((line.strip() for line in str(e).splitlines() if line.strip().startswith("error:")), "")
            raise EmbrmError(f"{where}: pattern {_brief(pattern)} is not supported by the matcher (polars' regex: "
                             f"{why or 'refused'}; it has no look-around, backreferences, atomic groups or \\Z): "
                             f"rewrite it without them") from None
        return cls(column, pattern, name)


def _brief(pattern: str) -> str:
    """A pattern as written, cut short: an error stays one readable line."""
    return repr(pattern) if len(pattern) <= 200 else repr(pattern[:200]) + "..."


def _possessive(tree) -> bool:
    """Whether a parsed pattern (re's parse tree) holds a possessive repeat or an atomic group, at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, re_parser.SubPattern):
            stack.extend(node.data)
        elif isinstance(node, (list, tuple)):
            if node and node[0] in (re_ops.POSSESSIVE_REPEAT, re_ops.ATOMIC_GROUP):
                return True
            stack.extend(node)
    return False


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset declared once: a registered name, or a file with its column mapping and exclusion rule."""

    source: str  # a registered name or a data file path
    name: str | None = None
    columns: tuple = ()  # sorted (role, column) pairs, roles from COLUMN_ROLES
    exclude: Exclusion | None = None
    answer_source: str | None = None  # the column naming each answer's author (e.g. model)
    half: int = 0  # 0: every prompt; 1 or 2: one of two disjoint halves of the prompts (embrm run --replicate)
    params: tuple = ()  # a generated dataset's sorted (keyword, value) pairs (GENERATORS)
    prompts: int = 0  # 0: every prompt; N: the first N prompts in sorted prompt-id order (before any half)
    arrays: tuple = ()  # an array dataset's ArraySource per split (embrm.data._array_dataset); source: its declaration

    @property
    def label(self) -> str:
        base = self.name or (self.source if self.source in REGISTRY or self.source in GENERATORS
                             else Path(self.source).name)
        return f"{base}.half{self.half}" if self.half else base

    def loader_options(self) -> dict:
        return {COLUMN_ROLES[role]: col for role, col in self.columns}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    path: str  # relative to the data dir
    sha256: str
    kind: str  # "pool" | "pairs" | "table"
    source: str  # where the data comes from (human-readable, with licence)
    url: str | None = None  # a direct upstream download of exactly this file, when one exists
    columns: dict = field(default_factory=dict)  # loader options
    description: str = ""
    exclude: Exclusion | None = None
    attachments: tuple = ()  # (name, DatasetInfo) pairs fetched with the dataset
    answer_source: str | None = None  # the column naming each answer's author


# The published reward models' picks on the Best-of-16 pool (evaluated beside embrm's rewards).
PUBLISHED_PICKS = DatasetInfo(
    "alpaca-eval-bon16-published-picks", "alpaca_eval_bon16/published_rm_picks.parquet",
    "7ffeb66f395d0aec184f8a9e2282c2aaf2b565ff7db01cbb594e52a7996906e2", "table",
    "allenai/reward-bench bon_eval @4319b31: six published reward models' best-of-16 picks")
# AlpacaEval's reward-hacking probes: the empty answer, an answer gamed against the judge, and verbose variants.
ALPACA_PROBES = Exclusion("model", r"^(NullModel|gpt4_gamed)$|_verbose$", "probes")


REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "alpaca-eval-bon16", "alpaca_eval_bon16/responses.parquet",
            "fbc7c367faaebcfb8ddad0649b4f4aa5d040553ef94ee5c00599beb15c6c4e2f", "pool",
            "allenai/reward-bench bon_eval/alpaca_eval_n=16 @4319b31 (AlpacaEval prompts CC BY-NC 4.0; "
            "Tulu-2-DPO-13B samples; research use only)",
            columns=dict(prompt_col="instruction", response_col="output", gold_col="gold_pref_vs_gpt35",
                         response_key="sample_idx"),
            description="805 prompts x 16 samples of one policy; gold = GPT-4-turbo win prob vs gpt-3.5 "
                        "(samples 0..10 scored)",
            attachments=(("published_picks", PUBLISHED_PICKS),)),
        DatasetInfo(
            "alpaca-eval-models", "alpaca_eval_models/responses.parquet",
            "ce1f38be2dbaf397d83c35fbb703f955d63a9c577721282e18d29d2edc1ed4e4", "pool",
            "tatsu-lab/alpaca_eval results/*/model_outputs.json + weighted_alpaca_eval_gpt4_turbo "
            "annotations @cd543a1 (CC BY-NC 4.0; research use only)",
            columns=dict(prompt_col="instruction", response_col="output", gold_col="gold_winprob_vs_gpt4turbo",
                         response_key="model"),
            description="400 prompts x 58 models' answers; gold = GPT-4-turbo win prob vs gpt4_1106_preview; "
                        "includes reward-hacking probes (NullModel, gpt4_gamed, *_verbose), excluded by default",
            exclude=ALPACA_PROBES, answer_source="model"),
        DatasetInfo(
            "hh-rlhf-harmless-test", "hh_rlhf_harmless_base_test.jsonl.gz",
            "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03", "pairs",
            "anthropics/hh-rlhf harmless-base/test.jsonl.gz (MIT)",
            url="https://raw.githubusercontent.com/anthropics/hh-rlhf/master/harmless-base/test.jsonl.gz",
            columns=dict(prompt_col=None),
            description="2,312 human preference pairs (whole dialogues, split at the last Assistant turn)"),
    ]
}


def data_dir(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("EMBRM_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "embrm" / "data"


def _download(info: DatasetInfo, target: Path) -> str | None:
    """Try the mirror then the upstream URL; return None on success, else why it failed."""
    urls = []
    if mirror := os.environ.get("EMBRM_DATA_MIRROR"):
        urls.append(mirror.rstrip("/") + "/" + info.path)
    if info.url:
        urls.append(info.url)
    if not urls:
        return "no public direct download (set EMBRM_DATA_MIRROR to a mirror of the data dir)"
    reasons = []
    target.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        tmp = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                f.write(r.read())
            if _sha256(tmp) != info.sha256:
                reasons.append(f"{url}: checksum mismatch")
                tmp.unlink()
                continue
            tmp.replace(target)
            return None
        except OSError as e:
            tmp.unlink(missing_ok=True)
            reasons.append(f"{url}: {getattr(e, 'reason', e)}")
    return "; ".join(reasons)


def existing_data_dir(explicit: str | Path | None = None) -> Path:
    """The data dir; one the user named (--data-dir, $EMBRM_DATA_DIR) must exist: a typo must not make a new
    directory behind their back (only the default, ~/.cache/embrm/data, is created on download)."""
    root = data_dir(explicit)
    if (explicit or os.environ.get("EMBRM_DATA_DIR")) and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise EmbrmError(f"data dir {root} {what} (from --data-dir or EMBRM_DATA_DIR): fix the path, or create the "
                         f"directory to download named datasets into it")
    return root


def fetch(info: DatasetInfo, root: str | Path | None = None) -> Path:
    """Path of the dataset's file in the data dir, downloading it when absent and possible."""
    root = existing_data_dir(root)
    path = root / info.path
    if not path.exists():
        why = _download(info, path)
        if why is not None:
            raise EmbrmError(
                f"dataset {info.name!r} not found at {path} and not downloadable ({why}): put {info.path} under "
                f"{root} (source: {info.source}), or point --data-dir / EMBRM_DATA_DIR at a directory holding it")
    digest = _sha256(path)
    if digest != info.sha256:
        raise EmbrmError(f"{path}: checksum {digest[:12]}... does not match {info.name!r} ({info.sha256[:12]}...): "
                         f"the file is altered or truncated; delete it so it is fetched again")
    return path


def dataset_spec(source: "str | Path | DatasetSpec", *, name: str | None = None, exclude: Exclusion | str | None = None,
                 **columns) -> DatasetSpec:
    """A DatasetSpec from a name, a data file (+ column options such as prompt_col="instruction"), or a TOML
    declaration file. Options given here override a declaration's."""
    if isinstance(source, DatasetSpec):
        spec = source
    elif str(source).endswith(".toml"):
        spec = read_declaration(source)
    else:
        key = str(source)
        if key not in REGISTRY and key not in GENERATORS and not Path(key).exists() and not Path(key).suffix:
            raise EmbrmError(f"unknown dataset {key!r}: use one of {', '.join([*REGISTRY, *GENERATORS])}, a data "
                             f"file or a dataset declaration (.toml)")
        spec = DatasetSpec(key)
    roles = {option: role for role, option in COLUMN_ROLES.items()}
    given = {roles[k]: v for k, v in columns.items() if v is not None}
    unknown = [k for k in columns if k not in roles]
    if unknown:
        raise EmbrmError(f"unknown column option(s) {', '.join(unknown)}: use {', '.join(roles)}")
    if isinstance(exclude, str):
        exclude = Exclusion.parse(exclude)
    if name is not None:
        check_name("dataset", "name", name)
    if given or name or exclude:
        spec = replace(spec, name=name or spec.name, columns=tuple(sorted({**dict(spec.columns), **given}.items())),
                       exclude=exclude or spec.exclude)
    if spec.columns and (spec.source in REGISTRY or spec.source in GENERATORS):
        raise EmbrmError(f"{spec.source} is a named dataset that knows its columns: drop the column options")
    return spec


def spec_from_table(doc: dict, where: str, base: Path = Path(".")) -> DatasetSpec:
    """A DatasetSpec from a declaration table: path (or name of a registered dataset), name, columns, exclude; or
    array files (embeddings + gold, or train and test tables of them: embrm.data._array_dataset)."""
    allowed = {"path", "name", "columns", "exclude", "answer_source", "prompts"}
    if isinstance(doc, dict) and "generate" in doc:
        return _generated_spec(doc, where)
    if isinstance(doc, dict) and "path" not in doc and ({"embeddings", "gold", "train", "test"} & set(doc)):
        return _array_spec(doc, where, base)
    if not isinstance(doc, dict):
        raise EmbrmError(f"{where}: expected a table with path, columns, exclude")
    for key in doc:
        if key not in allowed:
            raise EmbrmError(f"{where}: unknown key '{key}': allowed keys are {', '.join(sorted(allowed))}")
    if not isinstance(doc.get("path"), str) or not doc["path"].strip() or "\0" in doc["path"]:
        raise EmbrmError(f"{where}: needs path = a data file (relative to the declaration) or a named dataset")
    _declared_name(doc, where)
    if not isinstance(doc.get("answer_source", ""), str):
        raise EmbrmError(f"{where}: answer_source must be a column name (the column naming each answer's author)")
    prompts = _prompts(doc, where)
    source = doc["path"] if doc["path"] in REGISTRY else str((base / doc["path"]).expanduser())
    columns = doc.get("columns", {})
    if not isinstance(columns, dict) or any(k not in COLUMN_ROLES or not isinstance(v, str)
                                            for k, v in columns.items()):
        raise EmbrmError(f"{where} columns: map roles ({', '.join(COLUMN_ROLES)}) to column names (strings)")
    return DatasetSpec(source, doc.get("name"), tuple(sorted(columns.items())),
                       _exclusion_from(doc.get("exclude"), f"{where} exclude"), doc.get("answer_source") or None,
                       prompts=prompts)


def _array_spec(doc: dict, where: str, base: Path) -> DatasetSpec:
    """An array dataset's declaration: name, prompts, and its splits' files."""
    unknown = set(doc) - {"name", "prompts", "embeddings", "gold", "embeddings_key", "gold_key", "train", "test"}
    if unknown:
        raise EmbrmError(f"{where}: unknown key '{sorted(unknown)[0]}': an array dataset takes name, prompts, and "
                         f"embeddings + gold or [train] and [test] tables")
    _declared_name(doc, where)
    sources = array_sources(doc, where, base)
    name = doc.get("name") or Path(sources[0].embeddings).stem
    return DatasetSpec(sources[0].embeddings, name, prompts=_prompts(doc, where), arrays=sources)


def _declared_name(doc: dict, where: str) -> None:
    """A declared name becomes part of file names (plots, results): a string, and a plain name."""
    if not isinstance(doc.get("name", ""), str):
        raise EmbrmError(f"{where}: name must be a string (what reports call the dataset)")
    if "name" in doc:
        check_name(where, "name", doc["name"])


def _prompts(doc: dict, where: str) -> int:
    prompts = doc.get("prompts", 0)
    if "prompts" in doc and not PROMPTS.ok(prompts):
        raise EmbrmError(f"{where}: prompts must be a positive integer (at most {PROMPTS.hi}: the first N prompts in "
                         f"sorted prompt-id order), got {shown(prompts)}", field="prompts")
    return prompts


def _generated_spec(doc: dict, where: str) -> DatasetSpec:
    """generate = "<generator>", name, params = {keyword = value}: checked against the generator's keywords."""
    unknown = set(doc) - {"generate", "name", "params"}
    if unknown:
        raise EmbrmError(f"{where}: unknown key '{sorted(unknown)[0]}': a generated dataset takes generate, name, "
                         f"params")
    kind, params = doc["generate"], doc.get("params", {})
    if not isinstance(kind, str) or kind not in GENERATORS:
        raise EmbrmError(f"{where}: generate = {kind!r} is not a generator: use one of {', '.join(GENERATORS)}")
    _declared_name(doc, where)
    keywords = [k for k in inspect.signature(GENERATORS[kind].make).parameters if k != "chunk_rows"]
    if not isinstance(params, dict):
        raise EmbrmError(f"{where}: params must be a table of {', '.join(keywords)}")
    for key in params:
        if key not in keywords:
            raise EmbrmError(f"{where} params: unknown key '{key}': use {', '.join(keywords)}")
    try:  # each generator checks its parameters' rules (and the memory or disk they need)
        GENERATORS[kind].check(**params)
    except EmbrmError as e:
        raise EmbrmError(f"{where} params: {e}") from None
    return DatasetSpec(kind, doc.get("name"), params=tuple(sorted(params.items())))


def _exclusion_from(doc, where: str) -> Exclusion | None:
    if doc is None:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("column"), str) or \
            ("pattern" in doc) == ("values" in doc) or set(doc) - {"column", "pattern", "values", "name"}:
        raise EmbrmError(f"{where}: give column = \"...\" and one of pattern = \"REGEX\" or values = [...] "
                         f"(and optionally name)")
    pattern = doc.get("pattern")
    if pattern is None:
        values = doc["values"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) or is_int(v) for v in values):
            raise EmbrmError(f"{where}: values must be a non-empty list of strings (the column values to exclude)")
        pattern = "^(" + "|".join(re.escape(str(v)) for v in values) + ")$"
    elif not isinstance(pattern, str) or not pattern:
        raise EmbrmError(f"{where}: pattern must be a non-empty string (a regular expression)")
    return Exclusion.checked(doc["column"], pattern, doc.get("name", "excluded"), where)


def read_declaration(path: str | Path) -> DatasetSpec:
    path = Path(path)
    if not path.is_file():
        what = " (it is a directory)" if path.exists() else ""
        raise EmbrmError(f"{path}: no such dataset declaration file{what}")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EmbrmError(f"{path}: not valid TOML ({e})") from None
    except ValueError:  # an integer past Python's digit limit
        raise EmbrmError(f"{path}: not valid TOML (a number has more than {sys.get_int_max_str_digits()} digits)") \
            from None
    except RecursionError:
        raise EmbrmError(f"{path}: not valid TOML (arrays or inline tables nested too deep to read): flatten "
                         f"them") from None
    except MemoryError:
        raise EmbrmError(f"{path}: too large to read as a dataset declaration: it should be a few lines") from None
    except OSError as e:
        raise EmbrmError(f"{path}: cannot read the declaration ({e.strerror or e}): check its permissions") from None
    check_nesting(str(path), doc)
    if set(doc) != {"dataset"}:
        raise EmbrmError(f"{path}: a dataset declaration holds one [dataset] table (path, name, columns, exclude)")
    spec = spec_from_table(doc["dataset"], f"{path} [dataset]", path.parent)
    if spec.arrays:  # messages about an array dataset name the file that declares it
        spec = replace(spec, source=str(path))
    if spec.source not in REGISTRY and not Path(spec.source).is_file():
        raise EmbrmError(f"{path} [dataset] path: {spec.source} is not a file: fix the path (relative to the "
                         f"declaration)")
    return spec


def load_dataset(source: "str | Path | DatasetSpec", data_dir: str | Path | None = None, *,
                 exclude: Exclusion | str | None = None, name: str | None = None, **columns) -> Dataset:
    """Load a dataset with its facts: a named dataset (see REGISTRY), a data file (pairs if it has chosen/rejected
    columns, else a pool; column options such as prompt_col="instruction"), a TOML declaration, or a DatasetSpec.

    The exclusion rule (the registry's, the declaration's or `exclude="COLUMN=REGEX"`) marks the `excluded` rows;
    attachments (e.g. published reward models' picks) are fetched with the data."""
    spec = dataset_spec(source, name=name, exclude=exclude, **columns)
    if spec.arrays:
        ds = load_array_dataset(spec.arrays, spec.label, spec.source)
        rule, author = None, None
    elif spec.source in GENERATORS:
        ds, _ = GENERATORS[spec.source].make(**dict(spec.params))
        ds.name = spec.name or ds.name
        rule, author = spec.exclude, None
    elif spec.source in REGISTRY:
        info = REGISTRY[spec.source]
        loader = load_pool if info.kind == "pool" else load_pairs
        ds = loader(fetch(info, data_dir), name=spec.name or info.name, **info.columns)
        ds.attachments = {key: fetch(att, data_dir) for key, att in info.attachments}
        rule, author = spec.exclude or info.exclude, spec.answer_source or info.answer_source
    else:
        ds = load_file(spec.source, name=spec.label, **spec.loader_options())
        rule, author = spec.exclude, spec.answer_source
    if author is not None:
        if author not in ds.responses.columns:
            raise EmbrmError(f"{ds.source}: answer_source column {author!r} is not in the data (columns: "
                             f"{', '.join(ds.responses.columns)}): fix the declaration")
        ds.answer_source = author
    if rule is not None:
        ds.responses = ds.responses.with_columns(excluded=rule.mask(ds.responses, ds.source))
        ds.exclusion = rule.name
    if spec.prompts:
        ds = first_prompts(ds, spec.prompts)
    if spec.half:
        ds = half_of(ds, spec.half)
    ds.spec = spec
    return ds


def first_prompts(ds: Dataset, n: int) -> Dataset:
    """The first n prompts in sorted prompt-id order (a declaration's `prompts = N`); of each split, when the data
    comes split (train and test)."""
    groups = [ds.responses] if not ds.predefined_split else ds.responses.partition_by("split", maintain_order=True)
    keep = []
    for part in groups:
        prompts = part["prompt_id"].unique().sort()
        if n > len(prompts):
            raise EmbrmError(f"{ds.source}: prompts = {n} but the dataset has {len(prompts)} prompts"
                             f"{' in a split' if ds.predefined_split else ''}: ask for at most {len(prompts)}, or "
                             f"leave prompts out for all")
        keep.append(prompts[:n])
    return ds.filter(pl.col("prompt_id").is_in(pl.concat(keep).implode()))


HALF_SEED = 20_260_101  # fixed: the two halves of a dataset are the same on every machine and run


def half_of(ds: Dataset, half: int) -> Dataset:
    """One of two disjoint halves of the dataset's prompts (a seeded permutation of the sorted prompt ids: half 1
    the first floor(P / 2), half 2 the rest), for replication checks; human pairs keep the pairs of their half."""
    if not is_int(half) or half not in (1, 2):
        raise EmbrmError(f"half must be 1 or 2, got {shown(half)}", field="half")
    prompts = ds.responses["prompt_id"].unique().sort().to_numpy()
    order = np.random.default_rng(HALF_SEED).permutation(len(prompts))
    mine = prompts[order[:len(prompts) // 2]] if half == 1 else prompts[order[len(prompts) // 2:]]
    return ds.filter(pl.col("prompt_id").is_in(mine.tolist()))
