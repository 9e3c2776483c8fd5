"""A dataset made of embedding arrays and gold arrays, no texts: Sun et al.'s release layout, at its scale.

    # sun.toml                                   embrm fit sun.toml --head mlp --ensemble 10
    [dataset]
    name = "sun-harmless-gemma2b"
    [dataset.train]                              # the fit's split (labels are drawn on its prompts only)
    embeddings = "embd_Gemma2b-sft_Gemma2b_Harmless_train.npy"     # (P, R, d): .npy .npz .safetensors .pt .parquet
    gold = "reward_Gemma2b-sft_Gemma2b_Harmless_train.npy"         # (P, R) or (P, R, 1)
    [dataset.test]                               # every evaluation's split
    embeddings = "embd_Gemma2b-sft_Gemma2b_Harmless_test.npy"
    gold = "reward_Gemma2b-sft_Gemma2b_Harmless_test.npy"

A single split is `embeddings = ...` and `gold = ...` in [dataset] itself: embrm then splits its prompts as it
splits a text pool's. `embeddings_key` / `gold_key` pick one array of a file holding several (an .npz member, a
safetensors tensor, a torch dict key, a Parquet column).

The vectors are the data: nothing is copied into the embedding cache. They stay memory-mapped in their dtype
(float16 / bfloat16 / float32) and are read in float32 blocks (embrm.core.Rows): a fit gathers only its pairs'
rows, scoring streams. The fingerprint is made of each file's SHA-256 (computed once, remembered by size and
mtime), so a saved model records exactly which arrays it saw.

Responses are named by position: prompt_id "train-000123" (split, prompt index), response_id "train-000123:7";
`prompt_index` / `response_index` give the array coordinates back. Having no texts, such a dataset has no
length: length control and the length rulers are not available on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Rows, mapped
from embrm.data._arrays import file_digest, read_split
from embrm.data._dataset import Dataset

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ArraySource:
    """One split's files: `split` is "train", "test" or "all" (a single split, divided by prompt as a pool is)."""

    split: str
    embeddings: str
    gold: str
    embeddings_key: str | None = None
    gold_key: str | None = None


def load_array_dataset(sources: tuple[ArraySource, ...], name: str, where: str) -> Dataset:
    """The Dataset of the sources' arrays: one responses table (positions as ids, gold, split) and a Rows over the
    memory-mapped embeddings."""
    tables, parts, facts = [], [], []
    for src in sources:
        arrays = read_split(src.embeddings, src.gold, embeddings_key=src.embeddings_key, gold_key=src.gold_key,
                            where=f"{where} [{_table(src.split)}]")
        E = arrays.embeddings
        P, R, d = E.shape
        flat = E.reshape(P * R, d)
        if isinstance(E, np.memmap):
            flat = mapped(flat, E.offset)
        parts.append(flat)
        tables.append(_responses(src.split, P, R, arrays.gold))
        facts.append(f"{src.split}:{file_digest(arrays.embeddings_path)}:{src.embeddings_key}:{E.shape}:{E.dtype}:"
                     f"{file_digest(arrays.gold_path)}:{src.gold_key}")
    digest = hashlib.sha256("|".join(facts).encode()).hexdigest()[:32]
    responses = pl.concat(tables)
    return Dataset(name, responses, source=where, vectors=Rows(parts, digest=digest, checked=True), texts=False)


def _table(split: str) -> str:
    return "dataset" if split == "all" else f"dataset.{split}"


def _responses(split: str, P: int, R: int, gold: np.ndarray) -> pl.DataFrame:
    """P x R rows in the arrays' order (prompt-major)."""
    width = max(len(str(P - 1)), 6)
    prefix = "" if split == "all" else f"{split}-"
    frame = pl.DataFrame({"prompt_index": np.repeat(np.arange(P, dtype=np.int32), R),
                          "response_index": np.tile(np.arange(R, dtype=np.int32), P),
                          "gold": np.asarray(gold, np.float64).reshape(-1)})
    prompt_id = pl.lit(prefix) + pl.col("prompt_index").cast(pl.Utf8).str.zfill(width)
    frame = frame.with_columns(prompt_id=prompt_id).with_columns(
        response_id=pl.col("prompt_id") + ":" + pl.col("response_index").cast(pl.Utf8))
    frame = frame.with_columns(prompt=pl.col("prompt_id"), response=pl.col("response_id"),
                               scored=pl.lit(True), excluded=pl.lit(False))
    if split != "all":
        frame = frame.with_columns(split=pl.lit(split))
    first = ["prompt_id", "response_id", "prompt", "response", "gold", "scored", "excluded"]
    return frame.select(*first, pl.exclude(first))


def array_sources(doc: dict, where: str, base: Path) -> tuple[ArraySource, ...]:
    """The sources a declaration table names: [dataset.train] + [dataset.test], or embeddings + gold in the table."""
    split_tables = [s for s in SPLITS if s in doc]
    if split_tables and "embeddings" in doc:
        raise EmbrmError(f"{where}: give either embeddings/gold (one split) or [train] and [test] tables, not both")
    if split_tables and len(split_tables) != 2:
        missing = next(s for s in SPLITS if s not in doc)
        raise EmbrmError(f"{where}: has a {split_tables[0]} table but no {missing} table: the fit uses train and "
                         f"every evaluation uses test; declare both, or one split with embeddings/gold")
    tables = [(s, doc[s], f"{where}.{s}") for s in split_tables] or [("all", doc, where)]
    return tuple(_source(split, table, place, base) for split, table, place in tables)


def _source(split: str, table, where: str, base: Path) -> ArraySource:
    keys = {"embeddings", "gold", "embeddings_key", "gold_key"}
    if not isinstance(table, dict):
        raise EmbrmError(f"{where}: expected a table with embeddings and gold (array files)")
    if split != "all":
        unknown = sorted(set(table) - keys)
        if unknown:
            raise EmbrmError(f"{where}: unknown key '{unknown[0]}': allowed keys are {', '.join(sorted(keys))}")
    for key in ("embeddings", "gold"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise EmbrmError(f"{where}: needs {key} = an array file (relative to the declaration)")
    for key in ("embeddings_key", "gold_key"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise EmbrmError(f"{where}: {key} must be the name of an array in the file")
    paths = {key: str((base / table[key]).expanduser()) for key in ("embeddings", "gold")}
    for key, path in paths.items():
        if not Path(path).is_file():
            raise EmbrmError(f"{where} {key}: {path} is not a file: fix the path (relative to the declaration)")
    return ArraySource(split, paths["embeddings"], paths["gold"], table.get("embeddings_key"), table.get("gold_key"))
