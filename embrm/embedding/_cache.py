"""Content-addressed Parquet embedding cache whose every byte read back is checked.

    <root>/<model-slug>-<fingerprint[:16]>/
        fingerprint.json           the embedder spec + template that defines every vector here
        manifest.json              the parts that make up the cache: name, rows, bytes, CRC-32, SHA-256 (+ its digest)
        part-<time>-<uid>.parquet  immutable parts: key, embedding (fixed-size float32 list), n_tokens, truncated,
                                   response_cut; Parquet page checksums on
        quarantine/                files `embrm cache verify --repair` took out of use (never deleted)

One directory per fingerprint, so a key (blake2b-128 of the exact text sent to the model) is unambiguous.
Only parts listed in the manifest exist for readers: a part is written to a temporary name, renamed, then listed
(one atomic manifest replace), so a killed run loses at most the batch in flight and leaves at most a temp file or
an unlisted part, which the next writer removes. Every read checks the whole file's size and CRC-32 against the
manifest (any flipped byte, truncation or swapped file is refused; about 4 GB/s) and Parquet's page checksums;
`verify` also checks SHA-256, the footer and the values. Labels and gold scores never live here: they join on
`key`. Writers take an exclusive lock on `.lock`; readers need none (parts are immutable, the manifest is replaced
atomically; a reader that finds a listed part gone re-reads the manifest, which a merge replaced). The cache
stays inside itself: a manifest may list only names the cache writes (`part-<20 digits>-<8 hex>.parquet`), and a
part, manifest or fingerprint file must be a regular file, not a link, device or pipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from embrm.core import NO_SPACE, EmbrmError, write_atomic

if TYPE_CHECKING:  # annotations only: pyarrow loads when a part is read or written
    import pyarrow as pa

SCHEMA_VERSION = 2
FINGERPRINT_FILE = "fingerprint.json"
MANIFEST_FILE = "manifest.json"
PART_GLOB = "part-*.parquet"
PART_NAME = re.compile(r"part-[0-9]{20}-[0-9a-f]{8}\.parquet", re.ASCII)  # what _add_part names a part, nothing else
READ_RETRIES = 5  # re-reads of a manifest replaced (by a merge) under a reader, before a missing part is damage
COLUMNS = ("key", "embedding", "n_tokens", "truncated", "response_cut")


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


# ----------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class PartEntry:
    """One listed part: what its bytes must be."""

    name: str
    rows: int
    bytes: int
    crc32: int
    sha256: str

    @classmethod
    def of(cls, name: str, rows: int, data: bytes | pa.Buffer) -> PartEntry:
        return cls(name, rows, len(data), zlib.crc32(data), hashlib.sha256(data).hexdigest())

    def check(self, data: bytes | pa.Buffer, strong: bool = False) -> str | None:
        """What is wrong with these bytes, or None. The CRC catches every accidental change (any burst of up to
        32 bits, truncation); `strong` adds SHA-256 against deliberate edits (verify)."""
        if len(data) != self.bytes:
            return f"{len(data)} bytes where the manifest lists {self.bytes} (truncated or replaced)"
        if zlib.crc32(data) != self.crc32 or (strong and hashlib.sha256(data).hexdigest() != self.sha256):
            return "checksum mismatch (the file changed after it was written)"
        return None


@dataclass(frozen=True)
class Manifest:
    fingerprint: str
    dim: int | None = None
    parts: tuple[PartEntry, ...] = ()

    def to_bytes(self) -> bytes:
        body = {"schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint, "dim": self.dim,
                "parts": [asdict(p) for p in self.parts]}
        return json.dumps({**body, "digest": _digest(body)}, indent=1).encode()

    @classmethod
    def parse(cls, path: Path) -> Manifest:
        """Raises EmbrmError for anything but an intact manifest (truncated, edited, wrong schema) and for one that
        names a file outside the cache directory, before any part is opened: the digest catches damage, not a
        forger who recomputes it, so every entry is checked as well."""
        try:
            problem = None if is_plain_file(path) else "not a regular file"
            manifest = None if problem else _parsed(json.loads(path.read_bytes()))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            problem = str(e) if isinstance(e, _BadManifest) else "unreadable or incomplete"
        if problem is not None:
            raise EmbrmError(f"{path}: corrupt or edited manifest ({problem}): run `embrm cache verify --repair "
                             f"{path.parent}` (it re-lists the parts that pass every check)")
        return manifest


class _BadManifest(ValueError):
    """A manifest whose digest checks out but whose content a cache never writes."""


def _parsed(doc: dict) -> Manifest:
    body = {k: doc[k] for k in ("schema_version", "fingerprint", "dim", "parts")}
    if doc["digest"] != _digest(body) or body["schema_version"] != SCHEMA_VERSION:
        raise _BadManifest("digest or schema version mismatch")
    dim = body["dim"]
    if not isinstance(body["fingerprint"], str) or not (dim is None or _count(dim) and dim > 0):
        raise _BadManifest("bad fingerprint or dim")
    parts = tuple(_entry(p) for p in body["parts"])
    names = [p.name for p in parts]
    if len(set(names)) < len(names):
        raise _BadManifest("a part listed twice")
    if parts and dim is None:
        raise _BadManifest("parts listed without a dim")
    return Manifest(body["fingerprint"], dim, parts)


def _entry(row: dict) -> PartEntry:
    entry = PartEntry(**row)
    if not (isinstance(entry.name, str) and PART_NAME.fullmatch(entry.name)):
        raise _BadManifest(f"part name {ascii(entry.name)[:80]} is not a part of this directory")
    if not (all(map(_count, (entry.rows, entry.bytes, entry.crc32))) and entry.crc32 < 2**32
            and isinstance(entry.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", entry.sha256, re.ASCII)):
        raise _BadManifest(f"bad rows, bytes or checksums for {entry.name}")
    return entry


def _count(value) -> bool:
    return type(value) is int and value >= 0


def is_plain_file(path: Path) -> bool:
    """A regular file itself (not a link, directory, device or pipe): what a cache's own files are. A link could
    lead out of the cache, and a pipe or device would hang or never end a read."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _digest(body: dict) -> str:
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def read_identity(path: Path) -> tuple[dict, str]:
    """(spec, fingerprint) from a cache directory's fingerprint.json, checked against itself and the dir name."""
    fp_file = path / FINGERPRINT_FILE
    if not fp_file.exists() and not fp_file.is_symlink():
        raise EmbrmError(f"{fp_file}: missing: run `embrm cache verify --repair {path}` (it restores the file from "
                         f"the parts)")
    try:
        doc = json.loads(fp_file.read_bytes()) if is_plain_file(fp_file) else None
        spec, fingerprint = doc["spec"], doc["fingerprint"]
        ok = isinstance(spec, dict) and fingerprint == fingerprint_of(spec) and path.name.endswith(fingerprint[:16])
    except (ValueError, KeyError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise EmbrmError(f"{fp_file}: corrupt or edited fingerprint file: run `embrm cache verify --repair {path}` "
                         f"(it restores the file from the parts)")
    return spec, fingerprint


# ----------------------------------------------------------------------------------------------- the cache


MISSING = "listed in the manifest but missing"


class CorruptPart(EmbrmError):
    """A listed part that cannot be trusted; `problem` says why (verify lists it, repair quarantines it)."""

    def __init__(self, path: Path, problem: str, cache_path: Path, refill: str = "re-run `embrm embed`"):
        self.path, self.problem, self.missing = path, problem, problem == MISSING
        super().__init__(f"{path}: {problem}: run `embrm cache verify --repair {cache_path}`, then {refill} to "
                         f"refill what it drops")


def refill_advice(spec: dict, cache_path: Path) -> str:
    """The command that puts dropped vectors back: an imported cache is refilled from its file, not by a model."""
    if spec.get("backend") != "imported":
        return "re-run `embrm embed`"
    opts = "".join(f" --{k} {shlex.quote(str(spec[k]))}" for k in ("model", "layer", "pooling", "key")
                   if spec.get(k) is not None)
    return (f"re-run `embrm import DATASET {shlex.quote(str(spec.get('file')))}{opts} --cache-dir "
            f"{shlex.quote(str(cache_path.parent))}` (the import that filled it, with its --order/--template)")


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
    n_truncated: int  # cached texts cut to the embedder's window
    n_response_cut: int  # ... of which the response itself lost tokens
    n_leftover: int  # temp files and unlisted parts (an interrupted run); the next `embed` removes them


class EmbeddingCache:
    """The cache directory of one embedder fingerprint under a cache root."""

    def __init__(self, root: str | Path, spec: dict):
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise EmbrmError(f"{root}: is a file, not a cache directory: pass a directory as --cache-dir")
        self.spec = spec
        self.fingerprint = fingerprint_of(spec)
        self.path = root / f"{_slug(spec)}-{self.fingerprint[:16]}"
        self._manifest: Manifest | None = None
        self._tables: dict[str, pa.Table] = {}  # verified parts read by this instance (parts are immutable)
        self._index: pl.DataFrame | None = None  # key -> (part, row), built lazily
        self._locked = False
        if (self.path / FINGERPRINT_FILE).exists():
            _, stored = read_identity(self.path)
            if stored != self.fingerprint:
                raise EmbrmError(f"{self.path}: written by another embedder (fingerprint {stored[:16]}): "
                                 f"use another --cache-dir or remove it")

    @classmethod
    def open(cls, path: str | Path) -> EmbeddingCache:
        """Open an existing cache directory (for info/verify) from its fingerprint.json."""
        path = Path(path)
        if not looks_like_cache(path):
            raise EmbrmError(f"{path}: not an embrm cache directory (no {FINGERPRINT_FILE}): "
                             f"pass a directory listed by `embrm cache info`")
        spec, _ = read_identity(path)
        cache = cls(path.parent, spec)
        cache.path = path
        return cache

    @property
    def refill(self) -> str:
        return refill_advice(self.spec, self.path)

    # ------------------------------------------------------------------ manifest

    def manifest(self) -> Manifest:
        if self._manifest is None:
            file = self.path / MANIFEST_FILE
            if file.exists() or file.is_symlink():
                manifest = Manifest.parse(file)
                if manifest.fingerprint != self.fingerprint:
                    raise EmbrmError(f"{file}: corrupt or edited manifest (another embedder's fingerprint): run "
                                     f"`embrm cache verify --repair {self.path}`")
                self._manifest = manifest
            elif any(self.path.glob(PART_GLOB)):
                raise EmbrmError(f"{self.path}: parts without a manifest (a cache from embrm < 0.3): run `embrm "
                                 f"cache verify --repair {self.path}` to check and list them")
            else:
                self._manifest = Manifest(self.fingerprint)
        return self._manifest

    def _commit(self, manifest: Manifest) -> None:
        """Make `manifest` the cache's state (one atomic replace); readers of this instance start over."""
        if not (self.path / FINGERPRINT_FILE).exists():
            body = {"schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint, "spec": self.spec}
            write_atomic(self.path / FINGERPRINT_FILE, json.dumps(body, indent=2, sort_keys=True), durable=True)
        write_atomic(self.path / MANIFEST_FILE, manifest.to_bytes(), durable=True)
        self._manifest, self._index = manifest, None
        self._tables = {k: v for k, v in self._tables.items() if k in {p.name for p in manifest.parts}}

    @contextlib.contextmanager
    def writing(self):
        """Exclusive writer lock (one writer at a time per cache; re-entrant within this instance). The manifest
        is re-read under it, so a writer always extends the latest state."""
        if self._locked:
            yield
            return
        import fcntl  # POSIX; imported here so that reading a cache needs nothing platform-specific

        self.path.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: a planted `.lock` must not create or open a file outside the cache
            fd = os.open(self.path / ".lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if not (self.path / ".lock").is_symlink():
                raise
            raise EmbrmError(f"{self.path / '.lock'}: a link where the cache's lock file belongs: remove it") from e
        with open(fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._locked, self._manifest, self._index = True, None, None
            try:
                yield
            finally:
                self._locked = False
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def dim(self) -> int | None:
        return self.manifest().dim

    def parts(self) -> list[Path]:
        """The listed parts (the only ones readers use)."""
        return [self.path / p.name for p in self.manifest().parts]

    def leftovers(self) -> list[Path]:
        """Temp files and unlisted parts: what an interrupted write or merge leaves behind."""
        if not self.path.is_dir():
            return []
        listed = {p.name for p in self.manifest().parts}
        return sorted([p for p in self.path.glob(PART_GLOB) if p.name not in listed] + list(self.path.glob(".*.tmp")))

    def _metadata(self, dim: int) -> dict[bytes, bytes]:
        meta = {"schema_version": str(SCHEMA_VERSION), "fingerprint": self.fingerprint, "dim": str(dim),
                "model": str(self.spec.get("model")), "dtype": str(self.spec.get("dtype")),
                "pooling": str(self.spec.get("pooling")), "template": str(self.spec.get("template")),
                "spec": canonical_json(self.spec)}
        return {f"embrm.{k}".encode(): v.encode() for k, v in meta.items()}

    # ------------------------------------------------------------------ writing

    def write_part(self, keys: list[str], vectors: np.ndarray, n_tokens: np.ndarray | None = None,
                   truncated: np.ndarray | None = None, response_cut: np.ndarray | None = None) -> Path:
        """Append one immutable part: temp file, rename, then list it in the manifest."""
        import pyarrow as pa

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        if n != len(keys):
            raise ValueError(f"{n} vectors for {len(keys)} keys")
        if not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise EmbrmError(f"the model returned non-finite values for key {keys[bad]} (and maybe others): "
                             f"try --dtype float32; nothing was written for this batch")
        flags = [np.zeros(n, bool) if f is None else np.asarray(f, bool) for f in (truncated, response_cut)]
        table = pa.table({
            "key": pa.array(keys, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            "n_tokens": pa.array(np.full(n, -1, np.int32) if n_tokens is None else np.asarray(n_tokens, np.int32)),
            "truncated": pa.array(flags[0]),
            "response_cut": pa.array(flags[1]),
        }).replace_schema_metadata(self._metadata(dim))
        return self._add_part(table, dim)

    def _add_part(self, table: pa.Table, dim: int, replaces: tuple[PartEntry, ...] = ()) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", write_page_checksum=True, write_statistics=False)
        data = sink.getvalue()  # an Arrow buffer: checksummed and written without a copy
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        with self.writing():
            manifest = self.manifest()
            if manifest.dim is not None and manifest.dim != dim:
                raise EmbrmError(f"{self.path}: holds {manifest.dim}-d vectors but the model gave {dim}-d: "
                                 f"the model changed under the same name; use another --cache-dir")
            write_atomic(self.path / name, data, durable=True)
            kept = tuple(p for p in manifest.parts if p not in replaces)
            self._commit(Manifest(self.fingerprint, dim, kept + (PartEntry.of(name, len(table), data),)))
        return self.path / name

    # ------------------------------------------------------------------ reading

    def read_part(self, entry: PartEntry, strong: bool = False) -> pa.Table:
        """A listed part, refused unless its bytes are exactly those listed and its pages pass their checksums."""
        import pyarrow as pa

        if not strong and entry.name in self._tables:
            return self._tables[entry.name]
        path = self.path / entry.name
        try:  # one lstat: a part a merge deletes meanwhile is missing (a reader retries), never "not a file"
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "a link, device or pipe"
                raise CorruptPart(path, f"{kind} where a cache part belongs", self.path, self.refill)
            with pa.OSFile(str(path)) as f:  # one read into an Arrow buffer: checked, then parsed without a copy
                data = f.read_buffer()
        except FileNotFoundError:
            raise CorruptPart(path, MISSING, self.path, self.refill) from None
        if (problem := entry.check(data, strong)) is not None:
            raise CorruptPart(path, problem, self.path, self.refill)
        table = parse_part(data, self.fingerprint)
        if isinstance(table, str):
            raise CorruptPart(path, table, self.path, self.refill)
        self._tables[entry.name] = table
        return table

    def _fresh(self, read):
        """`read()`, started over from the manifest on disk when a listed part vanished because another process
        replaced the manifest meanwhile (a merge deletes the parts it replaced): damage only if it stays missing."""
        for _ in range(READ_RETRIES):
            try:
                return read()
            except CorruptPart as e:
                if not (e.missing and self._manifest_changed()):
                    raise
                self._manifest, self._index = None, None
        return read()

    def _manifest_changed(self) -> bool:
        try:
            return Manifest.parse(self.path / MANIFEST_FILE) != self._manifest
        except (EmbrmError, OSError):  # gone or damaged: manifest() says so on the next try
            return True

    def index(self) -> pl.DataFrame:
        """key -> (part number, row in part); the first copy of a key wins."""
        return self._fresh(self._built_index)

    def _built_index(self) -> pl.DataFrame:
        if self._index is None:
            frames = [pl.DataFrame({"key": self.read_part(p).column("key").to_numpy(zero_copy_only=False)})
                      .with_columns(part=pl.lit(i, pl.Int32), row=pl.int_range(pl.len(), dtype=pl.Int64))
                      for i, p in enumerate(self.manifest().parts)]
            empty = pl.DataFrame(schema={"key": pl.Utf8, "part": pl.Int32, "row": pl.Int64})
            self._index = pl.concat(frames).unique("key", keep="first", maintain_order=True) if frames else empty
        return self._index

    def listed_rows(self) -> int:
        """Rows of the parts the manifest on disk lists now, re-read each call: other processes (shards) write
        too. A progress count, not a check: readers still go through manifest()."""
        file = self.path / MANIFEST_FILE
        return sum(p.rows for p in Manifest.parse(file).parts) if file.exists() else 0

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

    def gather(self, keys: list[str], *columns: str) -> tuple[np.ndarray, ...]:
        """Columns aligned with keys ("embedding" as the (n, d) float32 matrix, the flags as (n,) arrays), in one
        pass: one join and one read per part file, not per row or per column. Every key must be present."""
        return self._fresh(lambda: self._gathered(keys, columns))

    def _gathered(self, keys: list[str], columns: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        where = pl.DataFrame({"key": keys}).with_row_index("pos").join(self.index(), on="key", how="left")
        if where["part"].null_count():
            first = where.filter(pl.col("part").is_null())["key"][0]
            raise EmbrmError(f"{self.path}: key {first} is not cached: run `embrm embed` first")
        empty = {"embedding": np.empty((0, self.dim or 0), np.float32)}
        out = {c: empty.get(c, np.zeros(0, bool)) for c in columns}
        entries = self.manifest().parts
        for (part_no,), group in where.group_by("part"):
            table = self.read_part(entries[part_no])
            pos, rows = group["pos"].to_numpy(), group["row"].to_numpy()
            for c in columns:
                values = self.part_matrix(table) if c == "embedding" else _column(table, c)
                if len(out[c]) != len(keys):
                    out[c] = np.empty((len(keys), *values.shape[1:]), values.dtype)
                out[c][pos] = values[rows]
        X = out.get("embedding")
        if X is not None and len(keys) and X.shape[1] != self.dim:
            raise EmbrmError(f"{self.path}: {X.shape[1]}-d vectors in a {self.dim}-d cache: "
                             f"run `embrm cache verify --repair {self.path}`")
        return tuple(out[c] for c in columns)

    def lookup(self, keys: list[str]) -> np.ndarray:
        """(len(keys), d) float32 aligned with keys; every key must be present."""
        return self.gather(keys, "embedding")[0]

    def flags(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(truncated, response_cut) aligned with keys: which texts lost tokens to the embedder's window."""
        return self.gather(keys, "truncated", "response_cut")

    # ------------------------------------------------------------------ maintenance

    def settle(self) -> None:
        """After a run: remove what interrupted runs left (temp files, unlisted parts) and merge all parts into one
        (a warm read is then one file). A no-op, and no write, when the cache is already one clean part."""
        if len(self.manifest().parts) <= 1 and not self.leftovers():
            return
        with self.writing():
            manifest = self.manifest()
            for leftover in self.leftovers():
                if leftover.is_file():
                    leftover.unlink()
            if len(manifest.parts) > 1 and self._room_to_merge(manifest):
                try:
                    self._merge(manifest)
                except OSError as e:  # out of space after all: the listed parts stay, and read as before
                    if e.errno not in NO_SPACE:
                        raise

    def _room_to_merge(self, manifest: Manifest) -> bool:
        """Merging is only for speed: on a disk without room for the merged part (about the parts' size), the cache
        stays in parts, so a warm command on a full disk still reads every vector."""
        return shutil.disk_usage(self.path).free > 2 * sum(p.bytes for p in manifest.parts) + (64 << 20)

    compact = settle

    def _merge(self, manifest: Manifest) -> None:
        """Write the merged part and list it alone (one manifest replace), then delete the old parts; a crash
        anywhere leaves either the old listing or the new one, plus files the next settle() removes."""
        import pyarrow as pa

        tables = [self.read_part(p) for p in manifest.parts]
        index = self.index()
        offsets = np.cumsum([0] + [len(t) for t in tables])
        take = offsets[index["part"].to_numpy()] + index["row"].to_numpy()
        merged = pa.concat_tables([_complete(t) for t in tables]).take(pa.array(take)).combine_chunks()
        self._add_part(merged.replace_schema_metadata(self._metadata(manifest.dim)), manifest.dim,
                       replaces=manifest.parts)
        for p in manifest.parts:
            (self.path / p.name).unlink(missing_ok=True)

    def info(self) -> CacheInfo:
        return self._fresh(self._info)

    def _info(self) -> CacheInfo:
        index = self.index()
        truncated, response_cut = self.flags(index["key"].to_list())
        manifest = self.manifest()  # the one index and flags were read from
        return CacheInfo(str(self.path), self.fingerprint, self.spec, manifest.dim, len(manifest.parts),
                         sum(p.rows for p in manifest.parts), len(index), sum(p.bytes for p in manifest.parts),
                         int(truncated.sum()), int(response_cut.sum()), len(self.leftovers()))


def parse_part(data: bytes | pa.Buffer, fingerprint: str) -> pa.Table | str:
    """The part's table (page checksums verified), or what is wrong with it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.py_buffer(data) if isinstance(data, bytes) else data,
                              page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        return f"unreadable Parquet ({str(e).splitlines()[0][:120]})"
    meta = table.schema.metadata or {}
    if meta.get(b"embrm.fingerprint", b"").decode() != fingerprint:
        return "written by another embedder (footer fingerprint differs)"
    if table.column_names[:2] != ["key", "embedding"] or not pa.types.is_fixed_size_list(table.schema.field(1).type):
        return f"not an embrm cache part (columns {table.column_names})"
    return table


def _column(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:  # parts written before the column existed
        return np.zeros(len(table), bool)
    return table.column(name).to_numpy(zero_copy_only=False)


def _complete(table: pa.Table) -> pa.Table:
    """A part's table with every column of today's schema (older parts lack response_cut) and no metadata."""
    import pyarrow as pa

    if "response_cut" not in table.column_names:
        table = table.append_column("response_cut", pa.array(np.zeros(len(table), bool)))
    return table.select(list(COLUMNS)).replace_schema_metadata(None)


def looks_like_cache(path: Path) -> bool:
    """A cache directory, even one whose fingerprint.json or manifest.json is gone (verify says which)."""
    own = [path / FINGERPRINT_FILE, path / MANIFEST_FILE]
    return path.is_dir() and (any(f.exists() or f.is_symlink() for f in own) or any(path.glob(PART_GLOB)))


def list_caches(root: str | Path) -> list[EmbeddingCache]:
    root = Path(root)
    return [EmbeddingCache.open(p.parent) for p in sorted(root.glob(f"*/{FINGERPRINT_FILE}"))]
