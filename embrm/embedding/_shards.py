"""Which texts a shard embeds: one deterministic plan that every process derives alone, from the texts only.

The plan sorts a dataset's unique texts by (length descending, key) and cuts them into batches of `batch_size`;
batch b belongs to shard (b mod N) + 1. Every process computes the same plan whatever the cache holds, so shards
never embed the same text, and a single process (shard 1/1) sends the model exactly the batches that N shards
send between them: the vectors are the same bit for bit. A shard skips the texts already cached (a killed shard
resumes where it stopped) and embeds the rest of its batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from embrm.core import EmbrmError


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (1-based, as in `--shard 2/4`)."""

    index: int = 1
    count: int = 1

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise EmbrmError(f"--shard {self.index}/{self.count}: shards are numbered 1..N, e.g. --shard 1/2 and "
                             f"--shard 2/2")

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match:
            raise EmbrmError(f"--shard {text!r}: write I/N, e.g. --shard 1/2 for the first of two shards")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


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
