"""`embrm cache verify [--repair]`: check every byte of a cache, and put it back in order without destroying
vectors.

verify reads each listed part in full (size, CRC-32 and SHA-256 against the manifest, Parquet page checksums, the
footer's fingerprint, the row count, the dimension, finite values) and lists every other problem: a corrupt
fingerprint or manifest file, unlisted parts, temp files. repair never deletes a part: a part that fails a check
is moved to `quarantine/` and dropped from the manifest (its texts are re-embedded by the next `embrm embed`, or
re-imported); an unlisted part embrm wrote that passes every check and holds texts the listing lacks (the merged
part of a manifest restored from before the merge, the last batch of a killed run) is listed again; a missing or
unreadable fingerprint.json is restored from a part's footer; an unreadable or edited manifest (or a cache from
before manifests) is rebuilt from the parts that pass every check; temp files, which are never complete, are
removed. repair touches only the cache directory's own files, and changes nothing when this user cannot write
there.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, write_atomic
from embrm.embedding._cache import (
    FINGERPRINT_FILE,
    MANIFEST_FILE,
    PART_GLOB,
    PART_NAME,
    SCHEMA_VERSION,
    CorruptPart,
    EmbeddingCache,
    Manifest,
    PartEntry,
    fingerprint_of,
    is_plain_file,
    looks_like_cache,
    parse_part,
    read_identity,
)

QUARANTINE = "quarantine"


@dataclass
class RepairReport:
    path: str
    quarantined: list[str] = field(default_factory=list)  # files moved to quarantine/
    removed: list[str] = field(default_factory=list)  # temp files deleted
    vectors_dropped: int = 0  # rows of listed parts set aside, less the texts that re-listed parts brought back
    notes: list[str] = field(default_factory=list)  # restored fingerprint.json, rebuilt manifest, re-listed parts
    refill: str = "re-run `embrm embed`"  # what puts dropped vectors back (embed, or the import that made them)


def cache_dirs(path: Path) -> list[Path]:
    """A cache directory itself, or every cache directory under a cache root."""
    path = Path(path)
    if not path.exists():
        raise EmbrmError(f"{path}: no such cache directory: pass the --cache-dir used by `embrm embed`")
    if not path.is_dir():
        raise EmbrmError(f"{path}: a file, not an embrm cache: pass the --cache-dir used by `embrm embed`")
    if looks_like_cache(path):
        return [path]
    found = sorted(p for p in path.iterdir() if looks_like_cache(p))
    if not found:
        raise EmbrmError(f"{path}: holds no embrm cache: pass the --cache-dir used by `embrm embed`")
    return found


def verify(path: Path) -> list[str]:
    """One line per problem in one cache directory; [] when every listed byte checks out. Leftovers of interrupted
    runs are not problems (readers never see them): `leftovers` lists them."""
    try:
        cache = EmbeddingCache.open(path)
        manifest = cache.manifest()
    except EmbrmError as e:
        return [str(e)]
    problems = [_part_problem(cache, entry, manifest.dim) for entry in manifest.parts]
    return [f"{cache.path / e.name}: {p}" for e, p in zip(manifest.parts, problems) if p]


def leftovers(path: Path) -> list[str]:
    """Temp files and unlisted parts, one line each: harmless (never read), removed by the next `embrm embed` or
    by --repair."""
    try:
        return [f"{p}: {_leftover_kind(p)}" for p in EmbeddingCache.open(path).leftovers()]
    except EmbrmError:  # a cache verify() already reports as broken
        return []


def repair(path: Path) -> RepairReport:
    """Quarantine what fails a check, restore what can be restored, and leave a cache that verifies."""
    path = Path(path)
    report = RepairReport(str(path))
    _check_writable(path)
    for name in (FINGERPRINT_FILE, MANIFEST_FILE):  # a directory under either name blocks rewriting the file
        if (path / name).is_dir() and not (path / name).is_symlink():
            _quarantine(path, name, report)
    if _restore_identity(path):
        report.notes.append(f"restored {FINGERPRINT_FILE} from a part's footer")
    cache = EmbeddingCache.open(path)
    report.refill = cache.refill
    with cache.writing():
        try:
            manifest = cache.manifest()
        except EmbrmError:
            manifest = _rebuild(cache, report)
        kept, dropped = [], 0
        for entry in manifest.parts:
            if _part_problem(cache, entry, manifest.dim) is None:
                kept.append(entry)
            else:
                dropped += entry.rows
                _quarantine(cache.path, entry.name, report)
        dim, recovered = _relist(cache, kept, manifest.dim, {e.name for e in manifest.parts}, report)
        report.vectors_dropped = max(0, dropped - recovered)
        cache._commit(Manifest(cache.fingerprint, dim if kept else None, tuple(kept)))
        for leftover in cache.leftovers():
            if leftover.name.endswith(".tmp") and leftover.is_file():
                leftover.unlink()
                report.removed.append(str(leftover))
            else:
                _quarantine(cache.path, leftover.name, report)
    return report


def _check_writable(path: Path) -> None:
    """Refuse before changing anything when this user cannot write what repair renames or rewrites (a read-only
    cache would otherwise be half repaired). Tried for real, not only asked (os.access), so it holds for any user."""
    quarantine, lock = path / QUARANTINE, path / ".lock"
    if quarantine.is_symlink() or (quarantine.exists() and not quarantine.is_dir()):
        raise EmbrmError(f"{quarantine}: not a directory of this cache (a link or a file): move it away, then run "
                         f"`embrm cache verify --repair {path}` again")
    if (lock.exists() or lock.is_symlink()) and not is_plain_file(lock):
        raise EmbrmError(f"{lock}: a link where the cache's lock file belongs: remove it, then run "
                         f"`embrm cache verify --repair {path}` again")
    try:
        for folder in (path, quarantine):
            if folder.is_dir():
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise PermissionError(13, "Permission denied", str(folder))
                tempfile.TemporaryFile(dir=folder).close()
        if is_plain_file(path / ".lock"):
            open(path / ".lock", "a").close()  # appends nothing: can this user take the writer lock?
    except OSError as e:
        raise EmbrmError(f"{path}: cannot repair: {e.filename or path} is not writable by this user "
                         f"({e.strerror or type(e).__name__}): run `embrm cache verify --repair {path}` as a user "
                         f"who can write the cache; nothing was changed") from None


def _relist(cache: EmbeddingCache, kept: list[PartEntry], dim: int | None, listed: set[str],
            report: RepairReport) -> tuple[int | None, int]:
    """Append to `kept` the unlisted parts embrm wrote that pass every check and hold texts `kept` lacks, newest
    first (a merged part holds everything listed before it); the rest stay leftovers. Returns (dim, texts
    recovered)."""
    have = pl.concat([pl.Series("key", [], pl.Utf8)] + [_keys(cache.read_part(e)) for e in kept])
    recovered = 0
    unlisted = [p for p in cache.path.glob(PART_GLOB) if p.name not in listed and PART_NAME.fullmatch(p.name)]
    for part in sorted(unlisted, key=lambda p: p.name, reverse=True):
        found = _intact(cache, part, dim)
        if found is None:
            continue
        entry, keys, dim_found = found
        new = int((~keys.is_in(have.implode())).sum())
        if new:
            kept.append(entry)
            dim, recovered, have = dim_found, recovered + new, pl.concat([have, keys])
            report.notes.append(f"re-listed {part}: not in the manifest, passes every check, holds {new} texts the "
                                f"manifest lacked")
    return dim, recovered


def _intact(cache: EmbeddingCache, part: Path, dim: int | None) -> tuple[PartEntry, pl.Series, int] | None:
    """An unlisted part's entry, keys and dim when it passes every check a listed part must (at `dim` when the
    cache has one), else None."""
    data = part.read_bytes() if is_plain_file(part) else b""
    table = parse_part(data, cache.fingerprint) if data else "empty"
    if isinstance(table, str):
        return None
    entry = PartEntry.of(part.name, len(table), data)
    dim = dim or table.schema.field("embedding").type.list_size
    return None if _table_problem(cache, table, entry, dim) else (entry, _keys(table), dim)


def _keys(table) -> pl.Series:
    return pl.Series("key", pl.from_arrow(table.column("key")), pl.Utf8)


def _part_problem(cache: EmbeddingCache, entry: PartEntry, dim: int | None) -> str | None:
    try:
        table = cache.read_part(entry, strong=True)
    except CorruptPart as e:
        return e.problem
    return _table_problem(cache, table, entry, dim)


def _table_problem(cache: EmbeddingCache, table, entry: PartEntry, dim: int | None) -> str | None:
    vectors = cache.part_matrix(table)
    if len(table) != entry.rows:
        return f"{len(table)} rows where the manifest lists {entry.rows}"
    if vectors.shape[1] != dim:
        return f"{vectors.shape[1]}-d vectors in a {dim}-d cache"
    if not np.isfinite(vectors).all():
        return "non-finite values"
    return None


def _leftover_kind(path: Path) -> str:
    if path.name.endswith(".tmp"):
        return "temporary file of an interrupted write (never read; the next `embrm embed` or --repair removes it)"
    return ("part not in the manifest (an interrupted run's, or not embrm's; never read; the next `embrm embed` "
            "removes it, --repair lists it again if it is intact and holds texts the manifest lacks, else "
            "quarantines it)")


def _rebuild(cache: EmbeddingCache, report: RepairReport) -> Manifest:
    """A manifest of the parts (listed or not) that parse and belong to this cache, at their majority dimension."""
    candidates = []  # (part, bytes, table)
    for part in sorted(cache.path.glob(PART_GLOB)):
        ours = PART_NAME.fullmatch(part.name) and is_plain_file(part)  # another name or a link is not embrm's
        data = part.read_bytes() if ours else b""
        table = parse_part(data, cache.fingerprint) if data else "not a Parquet file"
        if isinstance(table, str) or not np.isfinite(cache.part_matrix(table)).all():
            _quarantine(cache.path, part.name, report)
        else:
            candidates.append((part, data, table))
    dims = Counter()
    for _, _, table in candidates:
        dims[table.schema.field("embedding").type.list_size] += len(table)
    dim = dims.most_common(1)[0][0] if dims else None
    entries = []
    for part, data, table in candidates:
        if table.schema.field("embedding").type.list_size == dim:
            entries.append(PartEntry.of(part.name, len(table), data))
        else:
            _quarantine(cache.path, part.name, report)
    report.notes.append(f"rebuilt the manifest from {len(entries)} part(s) that pass every check")
    return Manifest(cache.fingerprint, dim, tuple(entries))


def _restore_identity(path: Path) -> bool:
    """Rewrite a corrupt fingerprint.json from the spec in a part's footer; False when it is intact."""
    try:
        read_identity(path)
        return False
    except EmbrmError:
        pass
    for part in sorted(p for p in path.glob(PART_GLOB) if is_plain_file(p)):  # a pipe would hang the read
        spec = _footer_spec(part)
        if spec is not None and path.name.endswith(fingerprint_of(spec)[:16]):
            body = {"schema_version": SCHEMA_VERSION, "fingerprint": fingerprint_of(spec), "spec": spec}
            write_atomic(path / FINGERPRINT_FILE, json.dumps(body, indent=2, sort_keys=True), durable=True)
            return True
    raise EmbrmError(f"{path / FINGERPRINT_FILE}: missing or corrupt, and no part holds the embedder spec to "
                     f"restore it from: remove {path} and re-embed")


def _footer_spec(part: Path) -> dict | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(part).metadata or {}
        spec = json.loads(meta[b"embrm.spec"])
    except (OSError, pa.ArrowException, KeyError, ValueError):  # this part cannot vouch for the spec
        return None
    return spec if isinstance(spec, dict) else None


def _quarantine(cache_dir: Path, name: str, report: RepairReport) -> None:
    """Move a file of the cache directory (or a stray directory) out of the cache's way without destroying it;
    `name` is one entry of that directory (never a path: repair touches nothing outside the cache)."""
    if not name or Path(name).name != name or name in (".", "..", QUARANTINE):
        raise EmbrmError(f"{cache_dir}: refusing to move {ascii(name)}, not an entry of the cache directory")
    path = cache_dir / name
    target_dir = cache_dir / QUARANTINE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    while target.exists():
        target = target.with_name(f"{target.name}.dup")
    if path.exists() or path.is_symlink():
        path.replace(target)
        report.quarantined.append(str(path))
