"""`embrm cache verify [--repair]`: check every byte of a cache, and put it back in order without destroying
vectors.

verify reads each listed part in full (size, CRC-32 and SHA-256 against the manifest, Parquet page checksums, the
footer's fingerprint, the row count, the dimension, finite values) and lists every other problem: a corrupt
fingerprint or manifest file, unlisted parts, temp files. repair never deletes a part: a part that fails a check
is moved to `quarantine/` and dropped from the manifest (its texts are re-embedded by the next `embrm embed`); an
unreadable fingerprint.json is restored from a part's footer; an unreadable or edited manifest (or a cache from
before manifests) is rebuilt from the parts that pass every check; temp files, which are never complete, are
removed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError, write_atomic
from embrm.embedding._cache import (
    FINGERPRINT_FILE,
    PART_GLOB,
    SCHEMA_VERSION,
    CorruptPart,
    EmbeddingCache,
    Manifest,
    PartEntry,
    fingerprint_of,
    parse_part,
    read_identity,
)

QUARANTINE = "quarantine"


@dataclass
class RepairReport:
    path: str
    quarantined: list[str] = field(default_factory=list)  # files moved to quarantine/
    removed: list[str] = field(default_factory=list)  # temp files deleted
    vectors_dropped: int = 0  # rows of quarantined listed parts: re-embedded by the next `embrm embed`
    notes: list[str] = field(default_factory=list)  # restored fingerprint.json, rebuilt manifest


def cache_dirs(path: Path) -> list[Path]:
    """A cache directory itself, or every cache directory under a cache root."""
    path = Path(path)
    if not path.exists():
        raise EmbrmError(f"{path}: no such cache directory: pass the --cache-dir used by `embrm embed`")
    if not path.is_dir():
        raise EmbrmError(f"{path}: a file, not an embrm cache: pass the --cache-dir used by `embrm embed`")
    if (path / FINGERPRINT_FILE).exists() or any(path.glob(PART_GLOB)):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and ((p / FINGERPRINT_FILE).exists()
                                                                or any(p.glob(PART_GLOB))))
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
    if _restore_identity(path):
        report.notes.append(f"restored {FINGERPRINT_FILE} from a part's footer")
    cache = EmbeddingCache.open(path)
    with cache.writing():
        try:
            manifest = cache.manifest()
        except EmbrmError:
            manifest = _rebuild(cache, report)
        kept = []
        for entry in manifest.parts:
            if _part_problem(cache, entry, manifest.dim) is None:
                kept.append(entry)
            else:
                report.vectors_dropped += entry.rows
                _quarantine(cache.path / entry.name, report)
        cache._commit(Manifest(cache.fingerprint, manifest.dim if kept else None, tuple(kept)))
        for leftover in cache.leftovers():
            if leftover.name.endswith(".tmp") and leftover.is_file():
                leftover.unlink()
                report.removed.append(str(leftover))
            else:
                _quarantine(leftover, report)
    return report


def _part_problem(cache: EmbeddingCache, entry: PartEntry, dim: int | None) -> str | None:
    try:
        table = cache.read_part(entry, strong=True)
    except CorruptPart as e:
        return e.problem
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
    return "part not in the manifest (an interrupted run's, or not embrm's; never read; the next `embrm embed` removes it, --repair quarantines it)"


def _rebuild(cache: EmbeddingCache, report: RepairReport) -> Manifest:
    """A manifest of the parts (listed or not) that parse and belong to this cache, at their majority dimension."""
    candidates = []  # (part, bytes, table)
    for part in sorted(cache.path.glob(PART_GLOB)):
        data = part.read_bytes() if part.is_file() else b""
        table = parse_part(data, cache.fingerprint) if data else "not a Parquet file"
        if isinstance(table, str) or not np.isfinite(cache.part_matrix(table)).all():
            _quarantine(part, report)
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
            _quarantine(part, report)
    report.notes.append(f"rebuilt the manifest from {len(entries)} part(s) that pass every check")
    return Manifest(cache.fingerprint, dim, tuple(entries))


def _restore_identity(path: Path) -> bool:
    """Rewrite a corrupt fingerprint.json from the spec in a part's footer; False when it is intact."""
    try:
        read_identity(path)
        return False
    except EmbrmError:
        pass
    for part in sorted(path.glob(PART_GLOB)):
        spec = _footer_spec(part)
        if spec is not None and path.name.endswith(fingerprint_of(spec)[:16]):
            body = {"schema_version": SCHEMA_VERSION, "fingerprint": fingerprint_of(spec), "spec": spec}
            write_atomic(path / FINGERPRINT_FILE, json.dumps(body, indent=2, sort_keys=True), durable=True)
            return True
    raise EmbrmError(f"{path / FINGERPRINT_FILE}: corrupt, and no part holds the embedder spec to restore it from: "
                     f"remove {path} and re-embed")


def _footer_spec(part: Path) -> dict | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(part).metadata or {}
        spec = json.loads(meta[b"embrm.spec"])
    except (OSError, pa.ArrowException, KeyError, ValueError):  # this part cannot vouch for the spec
        return None
    return spec if isinstance(spec, dict) else None


def _quarantine(path: Path, report: RepairReport) -> None:
    """Move a file (or a stray directory) out of the cache's way without destroying it."""
    target_dir = path.parent / QUARANTINE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    while target.exists():
        target = target.with_name(f"{target.name}.dup")
    if path.exists():
        path.replace(target)
        report.quarantined.append(str(path))
