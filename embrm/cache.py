"""Content-addressed Parquet embedding cache.

    <root>/<model-slug>-<fingerprint[:16]>/
        fingerprint.json          the embedder spec + template that defines every vector here (+ dim once known)
        part-<time>-<uid>.parquet immutable parts: key, embedding (fixed-size float32 list), n_tokens, truncated

One directory per fingerprint, so a key (blake2b-128 of the exact text sent to the model) is unambiguous. Parts are
written to a temporary name and renamed, so a killed run loses at most the part in flight; `compact` merges parts
(write the merged part first, then remove the old ones, and readers keep the first copy of a key, so a crash
between the two steps is harmless). Labels and gold scores never live here: they join on `key`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from embrm.errors import EmbrmError

SCHEMA_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint_of(spec: dict) -> str:
    return hashlib.blake2b(canonical_json(spec).encode(), digest_size=16).hexdigest()


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def text_keys(texts: list[str]) -> list[str]:
    return [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in texts]


def _slug(spec: dict) -> str:
    model = str(spec.get("model", spec.get("backend", "embedder")))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.rstrip("/").split("/")[-1])[:48] or "embedder"


@dataclass
class CacheInfo:
    path: str
    fingerprint: str
    spec: dict
    dim: int | None
    n_parts: int
    n_vectors: int
    n_unique: int
    bytes: int


class EmbeddingCache:
    """The cache directory of one embedder fingerprint under a cache root."""

    def __init__(self, root: str | Path, spec: dict):
        self.spec = spec
        self.fingerprint = fingerprint_of(spec)
        self.path = Path(root) / f"{_slug(spec)}-{self.fingerprint[:16]}"
        self._index: pl.DataFrame | None = None  # key -> (part, row), built lazily
        self._check_fingerprint_file()

    @classmethod
    def open(cls, path: str | Path) -> "EmbeddingCache":
        """Open an existing cache directory (for info/verify) from its fingerprint.json."""
        path = Path(path)
        fp_file = path / FINGERPRINT_FILE
        if not fp_file.exists():
            raise EmbrmError(f"{path}: not an embrm cache directory (no {FINGERPRINT_FILE}): "
                             f"pass a directory listed by `embrm cache info`")
        spec = json.loads(fp_file.read_text())["spec"]
        cache = cls(path.parent, spec)
        cache.path = path
        return cache

    # ------------------------------------------------------------------ metadata

    def _check_fingerprint_file(self) -> None:
        fp_file = self.path / FINGERPRINT_FILE
        if not fp_file.exists():
            return
        try:
            stored = json.loads(fp_file.read_text())
        except json.JSONDecodeError:
            raise EmbrmError(f"{fp_file}: corrupt fingerprint file: delete {self.path} and re-embed") from None
        if stored.get("fingerprint") != self.fingerprint:
            raise EmbrmError(f"{self.path}: written by another embedder ({stored.get('spec', {}).get('model')}, "
                             f"fingerprint {str(stored.get('fingerprint'))[:16]}): use another --cache-dir or remove it")

    @property
    def dim(self) -> int | None:
        fp_file = self.path / FINGERPRINT_FILE
        return json.loads(fp_file.read_text()).get("dim") if fp_file.exists() else None

    def _write_fingerprint(self, dim: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        known = self.dim
        if known is not None and known != dim:
            raise EmbrmError(f"{self.path}: holds {known}-d vectors but the model gave {dim}-d: "
                             f"the model changed under the same name; use another --cache-dir")
        if known is None:
            body = {"schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint, "dim": dim, "spec": self.spec}
            tmp = self.path / f".{FINGERPRINT_FILE}.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps(body, indent=2, sort_keys=True))
            tmp.replace(self.path / FINGERPRINT_FILE)

    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet")) if self.path.exists() else []

    def _metadata(self, dim: int) -> dict[bytes, bytes]:
        meta = {"schema_version": str(SCHEMA_VERSION), "fingerprint": self.fingerprint, "dim": str(dim),
                "model": str(self.spec.get("model")), "dtype": str(self.spec.get("dtype")),
                "pooling": str(self.spec.get("pooling")), "template": str(self.spec.get("template")),
                "spec": canonical_json(self.spec)}
        return {f"embrm.{k}".encode(): v.encode() for k, v in meta.items()}

    # ------------------------------------------------------------------ writing

    def write_part(self, keys: list[str], vectors: np.ndarray, n_tokens: np.ndarray | None = None,
                   truncated: np.ndarray | None = None) -> Path:
        """Append one immutable part atomically (temp file + rename)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        if n != len(keys):
            raise ValueError(f"{n} vectors for {len(keys)} keys")
        if not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise EmbrmError(f"the model returned non-finite values for key {keys[bad]} (and maybe others): "
                             f"try --dtype float32; nothing was written for this batch")
        self._write_fingerprint(dim)
        n_tokens = np.full(n, -1, np.int32) if n_tokens is None else np.asarray(n_tokens, np.int32)
        truncated = np.zeros(n, bool) if truncated is None else np.asarray(truncated, bool)
        table = pa.table({
            "key": pa.array(keys, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            "n_tokens": pa.array(n_tokens),
            "truncated": pa.array(truncated),
        }).replace_schema_metadata(self._metadata(dim))
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.path / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(self.path / name)
        self._index = None
        return self.path / name

    # ------------------------------------------------------------------ reading

    def _read_part(self, part: Path, columns=None) -> pa.Table:
        try:
            table = pq.read_table(part, columns=columns)
        except Exception as e:  # truncated / not parquet
            raise EmbrmError(f"{part}: unreadable cache part ({str(e).splitlines()[0][:120]}): "
                             f"run `embrm cache verify --repair {self.path}` then re-embed") from None
        meta = pq.read_schema(part).metadata or {}
        if meta.get(b"embrm.fingerprint", b"").decode() != self.fingerprint:
            raise EmbrmError(f"{part}: written by another embedder: run `embrm cache verify --repair {self.path}`")
        return table

    def index(self) -> pl.DataFrame:
        """key -> (part number, row in part); the first copy of a key wins."""
        if self._index is None:
            frames = [pl.DataFrame({"key": self._read_part(p, ["key"]).column("key").to_numpy(zero_copy_only=False)})
                      .with_columns(part=pl.lit(i, pl.Int32), row=pl.int_range(pl.len(), dtype=pl.Int64))
                      for i, p in enumerate(self.parts())]
            empty = pl.DataFrame(schema={"key": pl.Utf8, "part": pl.Int32, "row": pl.Int64})
            self._index = pl.concat(frames).unique("key", keep="first", maintain_order=True) if frames else empty
        return self._index

    def missing(self, keys: list[str]) -> list[str]:
        """Keys (unique, in first-seen order) not yet in the cache."""
        wanted = pl.DataFrame({"key": keys}).unique(maintain_order=True)
        return wanted.join(self.index(), on="key", how="anti")["key"].to_list()

    @staticmethod
    def part_matrix(table: pa.Table) -> np.ndarray:
        """The embedding column as a zero-copy (n, d) float32 view (one chunk per part file)."""
        col = table.column("embedding").combine_chunks()
        dim = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=True).reshape(len(col), dim)

    def lookup(self, keys: list[str]) -> np.ndarray:
        """(len(keys), d) float32 aligned with keys; every key must be present."""
        dim = self.dim
        where = pl.DataFrame({"key": keys}).with_row_index("pos").join(self.index(), on="key", how="left")
        if where["part"].null_count():
            first = where.filter(pl.col("part").is_null())["key"][0]
            raise EmbrmError(f"{self.path}: key {first} is not cached: run `embrm embed` first")
        out = np.empty((len(keys), dim or 0), np.float32)
        parts = self.parts()
        for part_no, group in where.group_by("part"):  # one read per part file, not per row
            vectors = self.part_matrix(self._read_part(parts[part_no[0]], ["embedding"]))
            if vectors.shape[1] != dim:
                raise EmbrmError(f"{parts[part_no[0]]}: {vectors.shape[1]}-d vectors in a {dim}-d cache: "
                                 f"run `embrm cache verify --repair {self.path}`")
            out[group["pos"].to_numpy()] = vectors[group["row"].to_numpy()]
        return out

    # ------------------------------------------------------------------ maintenance

    def compact(self) -> None:
        """Merge all parts into one (a warm read is then one zero-copy file read)."""
        parts = self.parts()
        if len(parts) <= 1:
            return
        index = self.index()
        tables = [self._read_part(p) for p in parts]
        merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
        offsets = np.cumsum([0] + [len(t) for t in tables])
        take = offsets[index["part"].to_numpy()] + index["row"].to_numpy()
        merged = merged.take(pa.array(take)).combine_chunks()
        vectors = self.part_matrix(merged)
        self.write_part(merged.column("key").to_pylist(), vectors, merged.column("n_tokens").to_numpy(),
                        merged.column("truncated").to_numpy(zero_copy_only=False))
        for p in parts:
            p.unlink()
        self._index = None

    def info(self) -> CacheInfo:
        parts = self.parts()
        n_vectors = sum(pq.read_metadata(p).num_rows for p in parts)
        return CacheInfo(str(self.path), self.fingerprint, self.spec, self.dim, len(parts), n_vectors,
                         len(self.index()), sum(p.stat().st_size for p in parts))

    def verify(self, repair: bool = False) -> list[str]:
        """Check every part fully; return one line per problem. repair=True deletes bad parts and temp files."""
        problems, bad = [], []
        for tmp in self.path.glob(".*.tmp"):
            problems.append(f"{tmp}: leftover temporary file from an interrupted write")
            bad.append(tmp)
        for part in self.parts():
            try:
                table = self._read_part(part)
                vectors = self.part_matrix(table)
                if vectors.shape[1] != self.dim:
                    raise EmbrmError(f"{vectors.shape[1]}-d vectors in a {self.dim}-d cache")
                if not np.isfinite(vectors).all():
                    raise EmbrmError("non-finite values")
            except EmbrmError as e:
                problems.append(f"{part}: {str(e).split(': ', 1)[-1] if str(e).startswith(str(part)) else e}")
                bad.append(part)
        if repair:
            for p in bad:
                p.unlink(missing_ok=True)
            self._index = None
        return problems


def list_caches(root: str | Path) -> list[EmbeddingCache]:
    root = Path(root)
    return [EmbeddingCache.open(p.parent) for p in sorted(root.glob(f"*/{FINGERPRINT_FILE}"))]
