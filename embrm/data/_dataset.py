"""Load preference data into one normalised form: a Dataset of responses (+ human pairs).

Responses table (polars), one row per response:
    prompt_id  Utf8     stable id of the prompt (pools: the file's id; pairs: a hash of the prompt text)
    response_id Utf8    unique; pools: "<prompt_id>:<response key>", pairs: "<row>:chosen" / "<row>:rejected"
    prompt, response    Utf8, never empty
    gold       Float64  gold score, null = unscored (kept in the pool, never used where gold is needed); a file's
                        NaN or +-inf is refused with its row (one rule, _check_gold)
    scored     Boolean  gold is not null
    excluded   Boolean  the dataset's exclusion rule matched (e.g. reward-hacking probes): never labels, never
                        trains, never in an evaluated pool unless asked for
    + the file's extra columns (model, sample_idx, subset, ...)
Human pairs table: prompt_id, chosen_id, rejected_id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Rows

FORMATS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
HH_TURN = "\n\nAssistant:"


@dataclass
class Dataset:
    """A named table of responses, with human preference pairs when the source is pairwise."""

    name: str
    responses: pl.DataFrame
    pairs: pl.DataFrame | None = None
    source: str = ""
    exclusion: str = ""  # what the `excluded` rows are (e.g. "probes"); empty when nothing is excluded
    attachments: dict[str, Path] = field(default_factory=dict)  # e.g. published reward models' picks
    spec: object = None  # the embrm.data.DatasetSpec it was loaded from (recorded in manifests and studies)
    answer_source: str | None = None  # the column naming each answer's author (e.g. model), when the data has one
    # (n, d) float32 embeddings that come WITH the data, aligned with `responses` (a generated pool such as
    # embrm.data._overopt's): every step that would embed or read the cache uses them instead
    # or a embrm.core.Rows over memory-mapped arrays (an array dataset, embrm.data._array_dataset)
    vectors: "np.ndarray | Rows | None" = field(default=None, repr=False)
    texts: bool = True  # False: responses are named by position only (an array dataset): no lengths, nothing to embed
    # a generated dataset's known gold (embrm.data._overopt.OveroptTruth: gold(X) of ANY embedding, the prompts'
    # base-policy means): what lets a continuous policy (embrm.rl) score new candidates by their true gold
    truth: object = field(default=None, repr=False)

    @property
    def excluded(self) -> np.ndarray:
        """(n,) bool: rows the exclusion rule matched."""
        return self.responses["excluded"].to_numpy()

    @property
    def usable(self) -> np.ndarray:
        """(n,) bool: scored and not excluded: the rows that may label, train and be evaluated."""
        return self.responses["scored"].to_numpy() & ~self.excluded

    def filter(self, predicate: pl.Expr, name: str | None = None) -> "Dataset":
        """A subset of the responses (e.g. some prompts and models), keeping the dataset's facts; human pairs
        keep only pairs whose two responses survive."""
        responses = self.responses.filter(predicate)
        vectors = self.vectors
        if vectors is not None:
            keep = self.responses.select(predicate.alias("keep"))["keep"].fill_null(False).to_numpy()
            vectors = vectors.subset(keep) if isinstance(vectors, Rows) else vectors[keep]
        pairs = self.pairs
        if pairs is not None:
            kept = responses["response_id"].implode()
            pairs = pairs.filter(pl.col("chosen_id").is_in(kept) & pl.col("rejected_id").is_in(kept))
        return replace(self, name=name or self.name, responses=responses, pairs=pairs, vectors=vectors)

    def without_excluded(self) -> "Dataset":
        """The same dataset without its excluded rows (align embeddings with `X[~ds.excluded]`)."""
        if not self.excluded.any():
            return self
        return replace(self.filter(~pl.col("excluded")), exclusion="")

    def require_pool(self, purpose: str) -> None:
        """Refuse, naming the file and what it is, a dataset that cannot serve `purpose` as a pool: a pairs file,
        a pool without gold, or fewer than two prompts with scored, non-excluded responses (a prompt split and a
        Best-of-n curve both need two)."""
        if self.pairs is not None:
            raise EmbrmError(f"{self.source}: a pairs file (chosen/rejected), but {purpose} needs a pool: several "
                             f"responses per prompt with a gold score")
        if not self.has_gold:
            raise EmbrmError(f"{self.source}: no gold scores: {purpose} needs a pool with a gold column (--gold-col)")
        n = self.responses.filter(pl.Series(self.usable))["prompt_id"].n_unique()
        if n < 2:
            rule = " that the exclusion rule keeps" if self.excluded.any() else ""
            raise EmbrmError(f"{self.source}: only {n} prompt(s) with scored responses{rule}: {purpose} needs at "
                             f"least 2")

    @property
    def predefined_split(self) -> bool:
        """The data comes split (an array dataset's train and test files): fits use train, evaluations test."""
        return "split" in self.responses.columns

    @property
    def kind(self) -> str:
        return "pairs" if self.pairs is not None else "pool"

    @property
    def n_prompts(self) -> int:
        return self.responses["prompt_id"].n_unique()

    @property
    def has_gold(self) -> bool:
        return bool(self.responses["scored"].any())

    def __repr__(self) -> str:
        extra = f", {len(self.pairs)} pairs" if self.pairs is not None else ""
        scored = int(self.responses["scored"].sum())
        excluded = f", {int(self.excluded.sum())} {self.exclusion} excluded" if self.exclusion else ""
        return (f"Dataset({self.name!r}: {self.n_prompts} prompts, {len(self.responses)} responses"
                f" ({scored} scored{excluded}){extra})")


# ----------------------------------------------------------------------------- file reading

GZIP_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"PAR1"


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise EmbrmError(f"{path}: unknown format {path.suffix!r}: use one of {', '.join(FORMATS)}")


def _unit(path: Path) -> str:
    """What messages count in: lines of JSON-lines files (an editor's line number), rows elsewhere."""
    return "line" if _format_of(path).startswith(".jsonl") else "row"


def _file_bytes(path: Path, fmt: str) -> bytes:
    """The file's bytes (decompressed for .gz), or a one-line error saying what the file really is."""
    if path.is_dir():
        raise EmbrmError(f"{path}: is a directory, not a data file: pass a {'/'.join(FORMATS)} file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EmbrmError(f"{path}: cannot read the file ({e.strerror or e}): check its permissions") from None
    if fmt.endswith(".gz"):
        import gzip
        import zlib

        if not data.startswith(GZIP_MAGIC):
            raise EmbrmError(f"{path}: not gzip-compressed: drop .gz from its name if it is plain text")
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # EOFError: truncated (click would report it as "Aborted")
            raise EmbrmError(f"{path}: gzip data is truncated or corrupt ({e or type(e).__name__}): "
                             f"download or compress the file again") from None
    if fmt != ".parquet" and data.startswith(PARQUET_MAGIC):
        raise EmbrmError(f"{path}: this is a Parquet file: name it .parquet")
    if not fmt.endswith(".gz") and data.startswith(GZIP_MAGIC):
        fix = f"name it {path.name}.gz" if fmt.startswith(".json") else "decompress it (only JSON may be .gz)"
        raise EmbrmError(f"{path}: this file is gzip-compressed: {fix}")
    if not data.strip():
        raise EmbrmError(f"{path}: the file is empty: write its rows, or pass another file")
    return data


def _text(data: bytes, path: Path) -> str:
    """Strict UTF-8 (a leading BOM is dropped): a file in another encoding would turn into wrong text silently."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EmbrmError(f"{path}: line {line} is not UTF-8 text (byte {data[e.start]:#04x}): "
                         f"re-save the file as UTF-8") from None


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {str: "text", int: "a number", float: "a number", dict: "an object", list: "a list"}[type(value)]


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """json object hook: a key given twice is an error (json.loads would keep the last silently)."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _DuplicateKey(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


def _bad_json_row(rows, unit: str) -> str | None:
    """The first problem among (number, JSON text or parsed value) rows: invalid JSON, not an object, a key given
    twice, or a value whose JSON type differs from its column's first value (e.g. an object where text is expected:
    polars would silently embed its JSON spelling as the text)."""
    first: dict[str, tuple[str, int]] = {}
    for n, row in rows:
        if isinstance(row, str):
            try:
                row = json.loads(row, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as e:
                return f"{unit} {n}: invalid JSON ({e.msg}, column {e.colno})"
            except _DuplicateKey as e:
                return f"{unit} {n}: key {str(e)!r} appears twice"
        if not isinstance(row, dict):
            return f"{unit} {n} is {_kind(row) if row is not None else 'null'}, not a JSON object"
        for key, value in row.items():
            if value is not None:
                kind = _kind(value)
                seen, at = first.setdefault(key, (kind, n))
                if kind != seen:
                    return f"{unit} {n}: {key!r} is {kind}, not {seen} as on {unit} {at}"
    return None


def _read_jsonl(data: bytes, path: Path) -> pl.DataFrame:
    """JSON lines through pyarrow's strict reader (a value of another JSON type than its column's is an error, where
    polars' reader would turn it into text); any failure is located to its line."""
    import pyarrow as pa
    import pyarrow.json as pj

    text = _text(data, path)
    blank = re.search(rb"\n[ \t\r]*\n", b"\n" + data.rstrip())  # the reader skips blank lines: numbers would shift
    if blank:
        line = (b"\n" + data)[: blank.start()].count(b"\n") + 1
        raise EmbrmError(f"{path}: line {line} is blank: JSON lines hold one object on every line; remove it")
    options = pj.ReadOptions(block_size=min(max(len(data) + 1, 1 << 20), 1 << 30))  # one block: no line straddles
    try:
        table = pj.read_json(io.BytesIO(data), read_options=options)
        dates = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
        if dates:  # pyarrow reads ISO-date-like strings as timestamps: keep them the text they are
            parse = pj.ParseOptions(explicit_schema=pa.schema([(c, pa.string()) for c in dates]),
                                    unexpected_field_behavior="infer")
            table = pj.read_json(io.BytesIO(data), read_options=options, parse_options=parse)
    except pa.ArrowInvalid as e:
        where = _bad_json_row(enumerate(text.splitlines(), 1), "line") or str(e).splitlines()[0]
        raise EmbrmError(f"{path}: {where}: fix or remove that line") from None
    return pl.from_arrow(table)


def _json_rows(doc, path: Path) -> list:
    """Rows of a JSON document: a list of objects, {"data": [...]}, or columns {"col": [values]}."""
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        if len({len(v) for v in doc.values()}) > 1:
            raise EmbrmError(f"{path}: its columns have different lengths: give every column one value per row")
        return [dict(zip(doc, values)) for values in zip(*doc.values())]
    if not isinstance(doc, list):
        raise EmbrmError(f"{path}: the top level is {_kind(doc) if doc is not None else 'null'}: give a list of "
                         f"objects (one per row), {{\"data\": [...]}} or columns {{\"col\": [values]}}")
    return doc


def _read_json(data: bytes, path: Path) -> pl.DataFrame:
    try:
        doc = json.loads(_text(data, path), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise EmbrmError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}): fix it") from None
    except _DuplicateKey as e:
        raise EmbrmError(f"{path}: key {str(e)!r} appears twice in one object: keep one") from None
    rows = _json_rows(doc, path)
    problem = _bad_json_row(enumerate(rows, 1), "row")
    if problem:
        raise EmbrmError(f"{path}: {problem}: fix or remove that row")
    return pl.DataFrame(rows, infer_schema_length=None)


def _read_csv(data: bytes, path: Path) -> pl.DataFrame:
    header = next(csv.reader([_text(data, path).split("\n", 1)[0].rstrip("\r")]), [])
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # polars would rename the second one silently and read the first
        raise EmbrmError(f"{path}: column {twice[0]!r} appears twice in the header: rename or drop one")
    try:
        return pl.read_csv(io.BytesIO(data), infer_schema_length=None)
    except pl.exceptions.PolarsError:
        reader = csv.reader(io.StringIO(_text(data, path)))
        bad = next((reader.line_num for row in reader if row and len(row) != len(header)), None)
        if bad is None:
            raise
        raise EmbrmError(f"{path}: line {bad} has another number of fields than the header's {len(header)}: "
                         f"quote fields that hold commas, or fix that line") from None


def read_table(path: str | Path) -> pl.DataFrame:
    """Read JSONL / JSON / Parquet / CSV (optionally .gz for JSON) into a DataFrame, or fail in one line that names
    the file (and the line or row where there is one)."""
    path = Path(path)
    if not path.exists():
        raise EmbrmError(f"{path}: file not found: check the path, or pass a dataset name (embrm datasets)")
    fmt = _format_of(path)
    data = _file_bytes(path, fmt)
    readers = {".parquet": pl.read_parquet, ".csv": lambda d: _read_csv(d, path),
               ".jsonl": lambda d: _read_jsonl(d, path), ".json": lambda d: _read_json(d, path)}
    try:
        df = readers[fmt.removesuffix(".gz")](io.BytesIO(data) if fmt == ".parquet" else data)
    except EmbrmError:
        raise
    except Exception as e:  # polars/pyarrow parse errors: say what failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbrmError(f"{path}: cannot read as {fmt} ({first[:200]}): check the file is complete") from None
    if df.height == 0:
        raise EmbrmError(f"{path}: holds no rows: write its rows, or pass another file")
    return df


def _require_columns(df: pl.DataFrame, path: str, wanted: dict[str, str]) -> None:
    """wanted maps column name -> the option that renames it."""
    for col, option in wanted.items():
        if col not in df.columns:
            raise EmbrmError(f"{path}: no column {col!r} (columns: {', '.join(df.columns)}): "
                             f"pass {option} NAME to use another column")


def _distinct_columns(src: str, roles: dict[str, str | None]) -> None:
    """Two roles on one column (e.g. --prompt-col answer beside the default response column) would load nonsense."""
    seen: dict[str, str] = {}
    for role, col in roles.items():
        if col and col in seen:
            raise EmbrmError(f"{src}: column {col!r} is given as both {seen[col]} and {role}: give each role its own "
                             f"column")
        seen[col] = role


def _refuse_rows(src: str, bad: pl.Series, unit: str, what, fix: str) -> None:
    """Raise naming the first offending row (1-based) and how many there are, when any is bad; `what` says what is
    wrong (a string, or a function of the row index)."""
    bad = bad.fill_null(False)
    if bad.any():
        idx = int(bad.arg_true()[0])
        more = f" ({int(bad.sum())} such {unit}s)" if bad.sum() > 1 else ""
        raise EmbrmError(f"{src}: {unit} {idx + 1}: {what(idx) if callable(what) else what}: {fix}{more}")


def _check_text(df: pl.DataFrame, path: str, cols: list[str], unit: str = "row", allow_empty: bool = False) -> None:
    """Text cells must be strings, never null; empty only where allowed. Names the first offending row.

    Responses may be empty strings: a model that answered nothing is real data (15 such answers in
    alpaca-eval-models, scored by the judge); a missing (null) cell is not.
    """
    for col in cols:
        if df[col].dtype not in (pl.Utf8, pl.Null):
            raise EmbrmError(f"{path}: column {col!r} holds {df[col].dtype}, not text: point the option at a text "
                             f"column")
        bad = pl.col(col).is_null() if allow_empty else pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")
        what = f"null {col!r}" if allow_empty else f"empty or null {col!r}"
        _refuse_rows(path, df.select(bad).to_series(), unit, what, f"fill it or drop the {unit}")


def _check_ids(df: pl.DataFrame, path: str, cols: list[str], unit: str) -> None:
    """Id columns (prompt id, response key) hold plain values and no nulls: they become the response ids."""
    for col in cols:
        dtype = df[col].dtype
        if dtype.is_nested() or dtype == pl.Null:
            raise EmbrmError(f"{path}: column {col!r} holds {dtype}, not ids: point the option at a column of text "
                             f"or integers")
        _refuse_rows(path, df[col].is_null(), unit, f"null {col!r}", f"fill it or drop the {unit}")


def _check_gold(df: pl.DataFrame, path: str, col: str, unit: str) -> pl.Series:
    """The one rule for gold, in every file: a finite number, or null (an empty cell) for an unscored response,
    which stays in the pool and is never used where gold is needed. NaN and +-inf are refused with their row: they
    are no score, and would pass through some paths and fail in others. Returns the column as Float64."""
    gold = df[col]
    if gold.null_count() == len(gold):  # e.g. an all-empty CSV column, read as text
        return gold.cast(pl.Float64)
    if not gold.dtype.is_numeric():
        raise EmbrmError(f"{path}: gold column {col!r} holds {gold.dtype}, not numbers: pass --gold-col with a "
                         f"numeric column")
    gold = gold.cast(pl.Float64)
    _refuse_rows(path, ~gold.is_finite(), unit, lambda i: f"gold {col!r} is {gold[i]}",
                 "write a finite number, or null (an empty cell) for an unscored response")
    return gold


def _prompt_hash(col: str) -> pl.Expr:
    """Stable prompt id from the prompt text (same text -> same id across files and runs)."""
    return pl.col(col).map_elements(lambda s: hashlib.blake2b(s.encode(), digest_size=8).hexdigest(),
                                    return_dtype=pl.Utf8)


RESPONSE_HEAD = ("prompt_id", "response_id", "prompt", "response", "gold", "scored", "excluded")


def _finish(responses: pl.DataFrame) -> pl.DataFrame:
    head = list(RESPONSE_HEAD)
    responses = responses.with_columns(pl.col("gold").cast(pl.Float64)).with_columns(
        scored=pl.col("gold").is_not_null(), excluded=pl.lit(False))
    return responses.select(head + [c for c in responses.columns if c not in head])


# ----------------------------------------------------------------------------- pairwise files

def split_dialogue(df: pl.DataFrame, col: str, path: str, unit: str = "line") -> pl.DataFrame:
    """HH-RLHF whole dialogues: prompt = everything up to and including the last '\\n\\nAssistant:' turn."""
    parts = df.select(pl.col(col).str.extract_groups(r"(?s)^(.*\n\nAssistant:)(.*)$").alias("g")).unnest("g")
    # An empty final turn is a real (empty) answer: HH-RLHF's harmless test set has four.
    _refuse_rows(path, parts["1"].is_null(), unit, f"the {col!r} dialogue has no {HH_TURN!r} turn to split off as "
                 f"the response", f"fix the {unit}, or pass --prompt-col for a separate prompt")
    return parts.rename({"1": "prompt", "2": "response"})


def load_pairs(path: str | Path, *, prompt_col: str | None = "prompt", chosen_col: str = "chosen",
               rejected_col: str = "rejected", name: str | None = None) -> Dataset:
    """Load pairwise preferences (TRL convention, or HH-RLHF whole dialogues when there is no prompt column)."""
    path = Path(path)
    return pairs_from_frame(read_table(path), path, prompt_col=prompt_col, chosen_col=chosen_col,
                            rejected_col=rejected_col, name=name)


def pairs_from_frame(df: pl.DataFrame, path: Path, *, prompt_col: str | None = "prompt", chosen_col: str = "chosen",
                     rejected_col: str = "rejected", name: str | None = None) -> Dataset:
    """prompt_col "prompt" is used when present (else whole dialogues are split); any other name must exist."""
    src, unit = str(path), _unit(path)
    wanted = {chosen_col: "--chosen-col", rejected_col: "--rejected-col"}
    if prompt_col and prompt_col != "prompt":
        wanted[prompt_col] = "--prompt-col"
    _require_columns(df, src, wanted)
    _distinct_columns(src, {"prompt": prompt_col if prompt_col in df.columns else None, "chosen": chosen_col,
                            "rejected": rejected_col})
    if len(df) == 0:
        raise EmbrmError(f"{src}: no pairs in the file")
    _check_text(df, src, [chosen_col, rejected_col], unit, allow_empty=prompt_col in df.columns)
    row = pl.int_range(pl.len()).cast(pl.Utf8)
    if prompt_col and prompt_col in df.columns:
        _check_text(df, src, [prompt_col], unit)
        sides = {side: df.select(pl.col(prompt_col).alias("prompt"), pl.col(c).alias("response"))
                 for side, c in (("chosen", chosen_col), ("rejected", rejected_col))}
    else:  # whole dialogues: each side keeps its own prompt (a few HH pairs differ before the last turn)
        sides = {side: split_dialogue(df, c, src, unit) for side, c in (("chosen", chosen_col),
                                                                        ("rejected", rejected_col))}
    frames = []
    for side, frame in sides.items():
        frames.append(frame.with_columns(row=row, side=pl.lit(side))
                      .with_columns(response_id=pl.col("row") + ":" + side))
    responses = pl.concat(frames).with_columns(prompt_id=_prompt_hash("prompt"), gold=pl.lit(None))
    # Both sides of a pair share the chosen side's prompt id, so a prompt split never separates them.
    pid = responses.filter(pl.col("side") == "chosen").select("row", "prompt_id")
    responses = responses.drop("prompt_id").join(pid, on="row", how="left")
    pairs = pid.select("prompt_id", chosen_id=pl.col("row") + ":chosen", rejected_id=pl.col("row") + ":rejected")
    responses = responses.sort("row", "side").drop("row")
    return Dataset(name or path.name, _finish(responses), pairs, src)


# ----------------------------------------------------------------------------- pools

def load_pool(path: str | Path, *, prompt_id_col: str | None = "prompt_id", prompt_col: str = "prompt",
              response_col: str = "response", gold_col: str | None = "gold", response_key: str | None = None,
              name: str | None = None) -> Dataset:
    """Load a pool: several responses per prompt, with an optional gold score.

    response_key names a column that tells a prompt's responses apart (e.g. sample_idx, model); without it the
    file's order within each prompt is used.
    """
    path = Path(path)
    return pool_from_frame(read_table(path), path, prompt_id_col=prompt_id_col, prompt_col=prompt_col,
                           response_col=response_col, gold_col=gold_col, response_key=response_key, name=name)


def pool_from_frame(df: pl.DataFrame, path: Path, *, prompt_id_col: str | None = "prompt_id",
                    prompt_col: str = "prompt", response_col: str = "response", gold_col: str | None = "gold",
                    response_key: str | None = None, name: str | None = None) -> Dataset:
    src, unit = str(path), _unit(path)
    wanted = {prompt_col: "--prompt-col", response_col: "--response-col"}
    if prompt_id_col and prompt_id_col != "prompt_id":  # the default is optional; a name given must exist
        wanted[prompt_id_col] = "--prompt-id-col"
    if response_key:
        wanted[response_key] = "--response-key"
    if gold_col and gold_col != "gold":
        wanted[gold_col] = "--gold-col"
    _require_columns(df, src, wanted)
    has_id, has_gold = prompt_id_col in df.columns, gold_col in df.columns
    _distinct_columns(src, {"prompt": prompt_col, "response": response_col, "gold": gold_col if has_gold else None,
                            "prompt id": prompt_id_col if has_id else None, "response key": response_key})
    if len(df) == 0:
        raise EmbrmError(f"{src}: no responses in the file")
    _check_text(df, src, [prompt_col], unit)
    _check_text(df, src, [response_col], unit, allow_empty=True)
    _check_ids(df, src, [c for c in (prompt_id_col if has_id else None, response_key) if c], unit)
    gold = _check_gold(df, src, gold_col, unit) if has_gold else pl.repeat(None, len(df), dtype=pl.Float64)
    prompt_id = df[prompt_id_col].cast(pl.Utf8) if has_id else _prompt_hash("prompt")
    key = df[response_key].cast(pl.Utf8) if response_key else pl.int_range(pl.len()).over("prompt_id").cast(pl.Utf8)
    # the roles under their own names, then the file's other columns (model, subset...) as they are
    extra = [c for c in df.columns if c not in (*RESPONSE_HEAD, prompt_col, response_col, gold_col)]
    out = df.select(pl.col(prompt_col).alias("prompt"), pl.col(response_col).alias("response"), *extra)
    out = out.with_columns(gold=gold, prompt_id=prompt_id)
    out = out.with_columns(response_id=pl.col("prompt_id") + ":" + key)
    ids = out["response_id"]
    _refuse_rows(src, ~ids.is_first_distinct(), unit, lambda i: f"duplicate response id {ids[i]!r}",
                 f"make ({prompt_id_col if has_id else 'prompt'}, {response_key}) unique or drop the duplicate")
    return Dataset(name or path.name, _finish(out), None, src)


POOL_OPTIONS = ("prompt_id_col", "response_col", "gold_col", "response_key")
PAIR_OPTIONS = ("chosen_col", "rejected_col")


def _refuse_options(path: Path, options: dict, names: tuple, kind: str) -> None:
    """An option that the file's kind does not use is a mistake to report, not to drop silently."""
    given = [k for k in names if k in options]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise EmbrmError(f"{path}: {flag} is for {'pools' if kind == 'pairs' else 'pairs files'}, but this is a "
                         f"{kind} file: drop {flag}")


def load_file(path: str | Path, **options) -> Dataset:
    """Load a file as pairs when it has chosen/rejected columns, else as a pool."""
    path = Path(path)
    df = read_table(path)
    options = {k: v for k, v in options.items() if v is not None}
    chosen, rejected = options.get("chosen_col", "chosen"), options.get("rejected_col", "rejected")
    asked_pairs = "chosen_col" in options or "rejected_col" in options  # then a missing column is named as such
    if asked_pairs or (chosen in df.columns and rejected in df.columns):
        _refuse_options(path, options, POOL_OPTIONS, "pairs")
        return pairs_from_frame(df, path, **options)
    _refuse_options(path, options, PAIR_OPTIONS, "pool")
    return pool_from_frame(df, path, **options)
