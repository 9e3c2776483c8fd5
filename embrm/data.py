"""Load preference data into one normalised form: a Dataset of responses (+ human pairs).

Responses table (polars), one row per response:
    prompt_id  Utf8     stable id of the prompt (pools: the file's id; pairs: a hash of the prompt text)
    response_id Utf8    unique; pools: "<prompt_id>:<response key>", pairs: "<row>:chosen" / "<row>:rejected"
    prompt, response    Utf8, never empty
    gold       Float64  gold score, null = unscored (kept in the pool, never used where gold is needed)
    scored     Boolean  gold is not null
    excluded   Boolean  the dataset's exclusion rule matched (e.g. reward-hacking probes): never labels, never
                        trains, never in an evaluated pool unless asked for
    + the file's extra columns (model, sample_idx, subset, ...)
Human pairs table: prompt_id, chosen_id, rejected_id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.errors import EmbrmError

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
    spec: object = None  # the embrm.datasets.DatasetSpec it was loaded from (recorded in manifests and studies)

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
        pairs = self.pairs
        if pairs is not None:
            kept = responses["response_id"].implode()
            pairs = pairs.filter(pl.col("chosen_id").is_in(kept) & pl.col("rejected_id").is_in(kept))
        return replace(self, name=name or self.name, responses=responses, pairs=pairs)

    def without_excluded(self) -> "Dataset":
        """The same dataset without its excluded rows (align embeddings with `X[~ds.excluded]`)."""
        if not self.excluded.any():
            return self
        return replace(self.filter(~pl.col("excluded")), exclusion="")

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

def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise EmbrmError(f"{path}: unknown format {path.suffix!r}: use one of {', '.join(FORMATS)}")


def _first_bad_json_line(path: Path) -> str:
    """Locate the first line that is not a JSON object, for a message that names it."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return f"line {lineno} is not a JSON object"
            except json.JSONDecodeError as e:
                return f"invalid JSON on line {lineno} ({e.msg})"
    return "unreadable JSON lines"


def read_table(path: str | Path) -> pl.DataFrame:
    """Read JSONL / JSON / Parquet / CSV (optionally .gz for JSON) into a DataFrame, or fail in one line."""
    path = Path(path)
    if not path.exists():
        raise EmbrmError(f"{path}: file not found: check the path, or pass a dataset name (embrm datasets)")
    fmt = _format_of(path)
    try:
        if fmt == ".parquet":
            return pl.read_parquet(path)
        if fmt == ".csv":
            return pl.read_csv(path, infer_schema_length=None)
        data = path.read_bytes()
        if fmt.endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        if fmt.startswith(".jsonl"):
            return pl.read_ndjson(data, infer_schema_length=None)
        rows = json.loads(data)
        if isinstance(rows, dict):  # {"data": [...]} or column-oriented {"col": [...]}
            rows = rows.get("data", rows)
        return pl.DataFrame(rows, infer_schema_length=None)
    except EmbrmError:
        raise
    except json.JSONDecodeError as e:
        raise EmbrmError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}): fix or remove it")
    except Exception as e:  # polars/pyarrow parse errors: find the line for JSONL, else say what failed
        if fmt.startswith(".jsonl"):
            raise EmbrmError(f"{path}: {_first_bad_json_line(path)}: fix or remove that line") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbrmError(f"{path}: cannot read as {fmt} ({first[:200]}): check the file is complete") from None


def _require_columns(df: pl.DataFrame, path: str, wanted: dict[str, str]) -> None:
    """wanted maps column name -> the option that renames it."""
    for col, option in wanted.items():
        if col not in df.columns:
            raise EmbrmError(f"{path}: no column {col!r} (columns: {', '.join(df.columns)}): "
                             f"pass {option} NAME to use another column")


def _check_text(df: pl.DataFrame, path: str, cols: list[str], row_offset: int = 1, unit: str = "row",
                allow_empty: bool = False) -> None:
    """Text cells must be strings, never null; empty only where allowed. Names the first offending row.

    Responses may be empty strings: a model that answered nothing is real data (15 such answers in
    alpaca-eval-models, scored by the judge); a missing (null) cell is not.
    """
    for col in cols:
        if df[col].dtype not in (pl.Utf8, pl.Null):
            raise EmbrmError(f"{path}: column {col!r} holds {df[col].dtype}, not text: point the option at a text column")
        bad = pl.col(col).is_null() if allow_empty else pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")
        bad = df.select(bad).to_series()
        if bad.any():
            idx = int(bad.arg_true()[0])
            what = "null" if allow_empty else "empty or null"
            raise EmbrmError(f"{path}: {unit} {idx + row_offset}: {what} {col!r}: "
                             f"fill it or drop the {unit} ({int(bad.sum())} such {unit}s)")


def _prompt_hash(col: str) -> pl.Expr:
    """Stable prompt id from the prompt text (same text -> same id across files and runs)."""
    return pl.col(col).map_elements(lambda s: hashlib.blake2b(s.encode(), digest_size=8).hexdigest(),
                                    return_dtype=pl.Utf8)


def _finish(responses: pl.DataFrame) -> pl.DataFrame:
    head = ["prompt_id", "response_id", "prompt", "response", "gold", "scored", "excluded"]
    responses = responses.with_columns(
        pl.col("gold").cast(pl.Float64).fill_nan(None)).with_columns(scored=pl.col("gold").is_not_null(),
                                                                     excluded=pl.lit(False))
    return responses.select(head + [c for c in responses.columns if c not in head])


# ----------------------------------------------------------------------------- pairwise files

def split_dialogue(df: pl.DataFrame, col: str, path: str, row_offset: int) -> pl.DataFrame:
    """HH-RLHF whole dialogues: prompt = everything up to and including the last '\\n\\nAssistant:' turn."""
    parts = df.select(pl.col(col).str.extract_groups(r"(?s)^(.*\n\nAssistant:)(.*)$").alias("g")).unnest("g")
    # An empty final turn is a real (empty) answer: HH-RLHF's harmless test set has four.
    bad = parts["1"].is_null()
    if bad.any():
        idx = int(bad.arg_true()[0])
        raise EmbrmError(f"{path}: line {idx + row_offset}: the {col!r} dialogue has no {HH_TURN!r} turn "
                         f"to split off as the response: fix the line, or pass --prompt-col for a separate prompt")
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
    src = str(path)
    row_offset = 1  # 1-based line/row numbers in messages
    wanted = {chosen_col: "--chosen-col", rejected_col: "--rejected-col"}
    if prompt_col and prompt_col != "prompt":
        wanted[prompt_col] = "--prompt-col"
    _require_columns(df, src, wanted)
    if len(df) == 0:
        raise EmbrmError(f"{src}: no pairs in the file")
    unit = "line" if _format_of(path).startswith(".jsonl") else "row"
    _check_text(df, src, [chosen_col, rejected_col], row_offset, unit, allow_empty=prompt_col in df.columns)
    row = pl.int_range(pl.len()).cast(pl.Utf8)
    if prompt_col and prompt_col in df.columns:
        _check_text(df, src, [prompt_col], row_offset, unit)
        sides = {side: df.select(pl.col(prompt_col).alias("prompt"), pl.col(c).alias("response"))
                 for side, c in (("chosen", chosen_col), ("rejected", rejected_col))}
    else:  # whole dialogues: each side keeps its own prompt (a few HH pairs differ before the last turn)
        sides = {side: split_dialogue(df, c, src, row_offset)
                 for side, c in (("chosen", chosen_col), ("rejected", rejected_col))}
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
    src = str(path)
    wanted = {prompt_col: "--prompt-col", response_col: "--response-col"}
    if prompt_id_col and prompt_id_col != "prompt_id":  # the default is optional; a name given must exist
        wanted[prompt_id_col] = "--prompt-id-col"
    if response_key:
        wanted[response_key] = "--response-key"
    _require_columns(df, src, wanted)
    if len(df) == 0:
        raise EmbrmError(f"{src}: no responses in the file")
    _check_text(df, src, [prompt_col])
    _check_text(df, src, [response_col], allow_empty=True)
    has_gold = gold_col is not None and gold_col in df.columns
    if gold_col and not has_gold and gold_col != "gold":
        _require_columns(df, src, {gold_col: "--gold-col"})
    if has_gold and not df[gold_col].dtype.is_numeric():
        raise EmbrmError(f"{src}: gold column {gold_col!r} holds {df[gold_col].dtype}, not numbers: "
                         f"pass --gold-col with a numeric column")
    renames = {prompt_col: "prompt", response_col: "response"}
    if has_gold:
        renames[gold_col] = "gold"
    clash = [v for k, v in renames.items() if k != v and v in df.columns]
    out = df.drop(clash).rename({k: v for k, v in renames.items() if k != v})
    if prompt_id_col and prompt_id_col in df.columns:
        out = out.with_columns(prompt_id=pl.col(prompt_id_col).cast(pl.Utf8))
    else:
        out = out.with_columns(prompt_id=_prompt_hash("prompt"))
    key = (pl.col(response_key).cast(pl.Utf8) if response_key
           else pl.int_range(pl.len()).over("prompt_id").cast(pl.Utf8))
    out = out.with_columns(response_id=pl.col("prompt_id") + ":" + key)
    if not has_gold:
        out = out.with_columns(gold=pl.lit(None, pl.Float64))
    dup = ~out["response_id"].is_first_distinct()
    if dup.any():
        idx = int(dup.arg_true()[0])
        raise EmbrmError(f"{src}: row {idx + 1}: duplicate response id {out['response_id'][idx]!r} "
                         f"({prompt_id_col}, {response_key}): make that pair of columns unique or drop the duplicate")
    return Dataset(name or path.name, _finish(out), None, src)


def load_file(path: str | Path, **options) -> Dataset:
    """Load a file as pairs when it has chosen/rejected columns, else as a pool."""
    path = Path(path)
    df = read_table(path)
    options = {k: v for k, v in options.items() if v is not None}
    chosen, rejected = options.get("chosen_col", "chosen"), options.get("rejected_col", "rejected")
    asked_pairs = "chosen_col" in options or "rejected_col" in options  # then a missing column is named as such
    if asked_pairs or (chosen in df.columns and rejected in df.columns):
        keep = {k: v for k, v in options.items() if k in ("prompt_col", "chosen_col", "rejected_col", "name")}
        return pairs_from_frame(df, path, **keep)
    keep = {k: v for k, v in options.items() if k not in ("chosen_col", "rejected_col")}
    return pool_from_frame(df, path, **keep)
