"""Benchmark: the cost of the cache's integrity checks on a warm read of the largest real cache.

The largest cache directory under --cache-dir (default `cache/`, as filled by `make run` with the vectors of the
real datasets of ../shared/data) is read back whole, as `embrm fit` / `embrm run` read theirs (index the keys,
look every key up). Runs, each repeated --repeat times in this process with a fresh cache object (no memo) and the
files in the OS page cache, best time kept:

    disk read        each part parsed straight from disk, no checks (how embrm read parts before checksums)
    bytes, no check  each part read whole into memory and parsed from there, no checks (the shipped path minus
                     its checks: isolates what the checks cost)
    checked read     the read as shipped: whole-file size + CRC-32 against the manifest, Parquet page checksums
    verify           `embrm cache verify`: SHA-256, footer, row count, dimension and finite values of every part

Reports seconds and the ratios of the checked read to both unchecked ones (1.00 = free). Run `make run` (or `embrm embed`) first. Prints a table and writes benchmarks/results/cache.json.

    python benchmarks/bench_cache.py
    python benchmarks/bench_cache.py --cache-dir /path/to/cache --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_embed import cpu_flags  # noqa: E402

from embrm.cache import EmbeddingCache, list_caches  # noqa: E402
from embrm.cache_check import verify  # noqa: E402


def disk_read_part(self, entry, strong=False):
    """The pre-checksum read path: parse the file from disk, trust its bytes."""
    return pq.read_table(self.path / entry.name)


def bytes_read_part(self, entry, strong=False):
    """The shipped path without its checks."""
    return pq.read_table(pa.py_buffer((self.path / entry.name).read_bytes()))


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=str(ROOT / "cache"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cache.json"))
    args = ap.parse_args(argv)
    caches = [c for c in list_caches(args.cache_dir) if c.parts()]
    if not caches:
        sys.exit(f"no filled cache under {args.cache_dir}: run `make run` (or `embrm embed`) first")
    cache = max(caches, key=lambda c: c.info().bytes)
    info = cache.info()
    keys = cache.index()["key"].to_list()
    X = cache.lookup(keys)

    def read():
        assert (EmbeddingCache.open(cache.path).lookup(keys) == X).all()

    times = {}
    shipped = EmbeddingCache.read_part
    for run, reader in (("disk read", disk_read_part), ("bytes, no check", bytes_read_part), ("checked read", shipped)):
        EmbeddingCache.read_part = reader
        try:
            times[run] = best_of(args.repeat, read)
        finally:
            EmbeddingCache.read_part = shipped
    times["verify (full)"] = best_of(max(1, args.repeat // 2), lambda: verify(cache.path))
    runs = [{"run": run, "seconds": s} for run, s in times.items()]
    ratios = {f"checked read vs {run}": times["checked read"] / times[run] for run in ("disk read", "bytes, no check")}
    result = {
        "benchmark": "cache", "command": "python benchmarks/bench_cache.py " + " ".join(argv or sys.argv[1:]),
        "cache_dir": Path(cache.path).name, "model": cache.spec.get("model"), "rows_read": len(X), "dim": X.shape[1],
        "cache": {"vectors": info.n_unique, "parts": info.n_parts, "mb": round(info.bytes / 1e6, 1)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "sha_ni": "sha_ni" in cpu_flags(), "pclmulqdq": "pclmulqdq" in cpu_flags()},
        "runs": runs, "ratios": ratios,
    }
    print(f"{cache.path}: {len(X)} vectors x {X.shape[1]} in {info.n_parts} part(s), {info.bytes / 1e6:.1f} MB")
    print(f"{'run':<18}{'seconds':>9}")
    for r in runs:
        print(f"{r['run']:<18}{r['seconds']:>9.3f}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
