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

The same three reads are also timed end to end as `embrm fit alpaca-eval-models` does them (`cached_embeddings`:
render the texts, key them, index, look up) when that dataset is in the cache. Reports seconds and the ratios of
the checked read to both unchecked ones (1.00 = free). Run `make run` (or `embrm embed`) first. Prints a table and writes benchmarks/results/cache.json.

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

from embrm.core._errors import EmbrmError  # noqa: E402
from embrm.core._hardware import cpu_flags  # noqa: E402
from embrm.data._registry import load_dataset  # noqa: E402
from embrm.embedding._cache import EmbeddingCache, list_caches  # noqa: E402
from embrm.embedding._embed import cached_embeddings  # noqa: E402
from embrm.embedding._verify import verify  # noqa: E402


def _memoised(parse):
    """A read_part that keeps each part it parsed for the cache object's lifetime, as the shipped one does."""
    def read_part(self, entry, strong=False):
        if entry.name not in self._tables:
            self._tables[entry.name] = parse(self.path / entry.name)
        return self._tables[entry.name]
    return read_part


SHIPPED = EmbeddingCache.read_part
disk_read_part = _memoised(pq.read_table)  # the pre-checksum path: parse from disk, trust the bytes
bytes_read_part = _memoised(lambda path: pq.read_table(pa.py_buffer(path.read_bytes())))  # shipped minus checks


def _readable(cache) -> bool:
    try:
        cache.manifest()
        return True
    except EmbrmError:  # e.g. a cache from embrm < 0.3, which `embrm cache verify --repair` adopts
        return False


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
    caches = [c for c in list_caches(args.cache_dir) if _readable(c) and c.parts()]
    if not caches:
        sys.exit(f"no filled cache under {args.cache_dir}: run `make run` (or `embrm embed`) first")
    cache = max(caches, key=lambda c: c.info().bytes)
    info = cache.info()
    keys = cache.index()["key"].to_list()
    X = cache.lookup(keys)

    def read():
        assert (EmbeddingCache.open(cache.path).lookup(keys) == X).all()

    def fit_read():  # what `embrm fit alpaca-eval-models` reads before fitting: render, key, index, look up
        cached_embeddings(pool, cache.spec, args.cache_dir)

    try:
        pool = load_dataset("alpaca-eval-models", os.environ.get("EMBRM_DATA_DIR"))
        cached_embeddings(pool, cache.spec, args.cache_dir)
    except EmbrmError:
        pool = None  # not in this cache: the end-to-end rows are left out

    readers = {"disk read": disk_read_part, "bytes, no check": bytes_read_part, "checked read": SHIPPED}
    reads = {"": read, " (fit's read of alpaca-eval-models)": fit_read} if pool is not None else {"": read}
    times = {run + what: float("inf") for what in reads for run in readers}
    for _ in range(args.repeat):  # interleaved rounds, best of each: machine drift hits every run alike
        for what, fn in reads.items():
            for run, reader in readers.items():
                EmbeddingCache.read_part = reader
                try:
                    times[run + what] = min(times[run + what], best_of(1, fn))
                finally:
                    EmbeddingCache.read_part = SHIPPED
    times["verify (full)"] = best_of(max(1, args.repeat // 2), lambda: verify(cache.path))
    runs = [{"run": run, "seconds": s} for run, s in times.items()]
    ratios = {f"checked read{what} vs {run}": times["checked read" + what] / times[run + what]
              for what in reads for run in ("disk read", "bytes, no check")}
    result = {
        "benchmark": "cache", "command": "python benchmarks/bench_cache.py " + " ".join(argv or sys.argv[1:]),
        "cache_dir": Path(cache.path).name, "model": cache.spec.get("model"), "rows_read": len(X), "dim": X.shape[1],
        "cache": {"vectors": info.n_unique, "parts": info.n_parts, "mb": round(info.bytes / 1e6, 1)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "sha_ni": "sha_ni" in cpu_flags(), "pclmulqdq": "pclmulqdq" in cpu_flags()},
        "runs": runs, "ratios": ratios,
    }
    print(f"{cache.path}: {len(X)} vectors x {X.shape[1]} in {info.n_parts} part(s), {info.bytes / 1e6:.1f} MB")
    print(f"{'run':<54}{'seconds':>9}")
    for r in runs:
        print(f"{r['run']:<54}{r['seconds']:>9.3f}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
