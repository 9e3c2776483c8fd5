"""Which texts a shard embeds: one deterministic plan that every process derives alone, from the texts only.

The plan sorts a dataset's unique texts by (length descending, key) and cuts them into batches of `batch_size`;
batch b belongs to shard (b mod N) + 1. Every process computes the same plan whatever the cache holds, so shards
never embed the same text, and a single process (shard 1/1) sends the model exactly the batches that N shards
send between them: the vectors are the same bit for bit. A shard skips the texts already cached (a killed shard
resumes where it stopped) and embeds the rest of its batches.

The plan depends on `batch_size` and N, which each process is given: shards started with different ones would
leave texts in no shard's plan. So the first shard to embed records them for this dataset's texts in the cache
(`shards.json`), and a shard started with others is refused while its texts are missing. N is at most MAX_SHARDS.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from embrm.core import EmbrmError, write_atomic
from embrm.embedding._cache import EmbeddingCache, is_plain_file

MAX_SHARDS = 10_000  # more processes than any cluster runs on one cache; a larger N is a typo
PLAN_FILE = "shards.json"


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (1-based, as in `--shard 2/4`)."""

    index: int = 1
    count: int = 1

    def __post_init__(self):
        if not all(type(v) is int for v in (self.index, self.count)):
            raise EmbrmError(f"--shard {self.index!r}/{self.count!r}: I and N are whole numbers, e.g. --shard 1/2")
        if self.count > MAX_SHARDS:
            raise EmbrmError(f"--shard {_short(self.index)}/{_short(self.count)}: at most {MAX_SHARDS:,} shards: "
                             f"pick N <= {MAX_SHARDS}")
        if not 1 <= self.index <= self.count:
            raise EmbrmError(f"--shard {self.index}/{self.count}: shards are numbered 1..N, e.g. --shard 1/2 and "
                             f"--shard 2/2")

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", str(text), re.ASCII)
        if not match:
            raise EmbrmError(f"--shard {ascii(str(text))[:60]}: write I/N, e.g. --shard 1/2 for the first of two "
                             f"shards")
        index, count = (m.lstrip("0") or "0" for m in match.groups())
        if max(len(index), len(count)) > len(str(MAX_SHARDS)):  # refused before int() reads a huge number
            raise EmbrmError(f"--shard {ascii(str(text))[:60]}: at most {MAX_SHARDS:,} shards, numbered 1..N: pick "
                             f"N <= {MAX_SHARDS}")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _short(n: int) -> str:
    return str(n) if abs(n) < 10**12 else "(a huge number)"  # str() of a vast int fails or floods the line


WHOLE = Shard()


def shard_batches(keys: list[str], lengths: np.ndarray, batch_size: int, shard: Shard,
                  cached: pl.DataFrame) -> list[np.ndarray]:
    """Row indices (into `keys`) of this shard's batches, longest texts first, without the keys in `cached`
    (a frame with a `key` column). One row per unique key; a batch whose texts are all cached is left out."""
    plan = (pl.DataFrame({"key": keys, "length": np.asarray(lengths, np.int64)}).with_row_index("row")
            .unique("key", keep="first", maintain_order=True)
            .sort(["length", "key"], descending=[True, False])
            .with_columns(batch=pl.int_range(pl.len(), dtype=pl.Int64) // batch_size)
            .filter(pl.col("batch") % shard.count == shard.index - 1)
            .with_row_index("position")
            .join(cached.select("key"), on="key", how="anti")
            .sort("position"))
    rows, batch = plan["row"].to_numpy(), plan["batch"].to_numpy()
    cuts = np.flatnonzero(np.diff(batch)) + 1
    return np.split(rows, cuts) if len(rows) else []


def record_plan(caches: list[EmbeddingCache], keys: list[str], batch_size: int, shard: Shard) -> None:
    """Before a shard embeds: record (batch size, N) for this dataset's texts in each cache, or refuse a shard whose
    plan differs from the one recorded (its batches would leave texts in no shard). Under the writer lock, so two
    shards started at once agree too. A plan whose texts are all cached refuses nothing (the shard has no batch)."""
    plan = hashlib.blake2b("\n".join(sorted(set(keys))).encode(), digest_size=16).hexdigest()
    want = {"batch_size": batch_size, "shards": shard.count}
    for cache in caches:
        with cache.writing():
            file = cache.path / PLAN_FILE
            plans = _plans(file)
            have = plans.get(plan)
            if have is None:
                write_atomic(file, json.dumps({**plans, plan: want}, indent=1), durable=True)
            elif have != want:
                raise EmbrmError(f"--shard {shard} --batch-size {batch_size}: the other shards of this dataset in "
                                 f"{cache.path} run --shard I/{have['shards']} --batch-size {have['batch_size']} "
                                 f"(recorded in {PLAN_FILE}): use those, or embed the rest in one process without "
                                 f"--shard")


def _plans(file) -> dict:
    """The recorded plans; a damaged record (no cache reads it for vectors) counts as none."""
    try:
        plans = json.loads(file.read_bytes()) if is_plain_file(file) else {}
    except (OSError, ValueError, RecursionError):
        return {}
    valid = isinstance(plans, dict) and all(isinstance(v, dict) and set(v) == {"batch_size", "shards"}
                                             for v in plans.values())
    return plans if valid else {}
