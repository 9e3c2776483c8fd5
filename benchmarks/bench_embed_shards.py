"""Benchmark: `embrm embed --shard I/N` scaling, 1 process against 2 shard processes on one cache.

Texts: a seeded sample of real (prompt, response) texts of the 58-model pool (../shared/data/alpaca_eval_models),
written to a Parquet file that every run embeds with the packaged MiniLM (float32) into an empty cache:

    1 process               `embrm embed` with torch's default threads (one per core)
    1 process, 1 thread     the same with OMP_NUM_THREADS=1: what one shard gets
    2 shards, 1 thread      `--shard 1/2` and `--shard 2/2` started together, one thread each

Each time is the wall clock from the start of the processes to the end of the last one (model loads included:
every shard loads the model once) and the texts/s that gives. The vectors of the 2-shard cache are compared with
the 1-process cache (they must be equal bit for bit). Prints a table and writes benchmarks/results/embed_shards.json.

    python benchmarks/bench_embed_shards.py            # 600 texts
    python benchmarks/bench_embed_shards.py --n 200    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_embed import cpu_flags, real_subset  # noqa: E402

from embrm.core._hardware import fast_bf16  # noqa: E402
from embrm.embedding._embed import EmbedderConfig  # noqa: E402

COLUMNS = ["--prompt-col", "prompt", "--response-col", "response", "--prompt-id-col", "prompt_id",
           "--gold-col", "gold", "--response-key", "response_id"]


def run(pool: Path, cache: Path, shards: int, threads: int | None) -> float:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "embrm", "embed", str(pool), *COLUMNS, "--dtype", "float32",
           "--cache-dir", str(cache), "--format", "json"]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd + (["--shard", f"{i}/{shards}"] if shards > 1 else []), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(1, shards + 1)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"embrm embed failed: {err.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    args = ap.parse_args()
    ds = real_subset(args.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool.parquet"
        ds.responses.select("prompt_id", "prompt", "response", "response_id", "gold").write_parquet(pool)
        for name, shards, threads in [("1 process", 1, None), ("1 process, 1 thread", 1, 1),
                                      ("2 shards, 1 thread each", 2, 1)]:
            cache = Path(tmp) / name.replace(" ", "_").replace(",", "")
            seconds = run(pool, cache, shards, threads)
            X = EmbedderConfig(dtype="float32").embed(ds, cache, progress=False).X
            rows.append({"run": name, "shards": shards, "threads": threads, "seconds": round(seconds, 2),
                         "texts_per_s": round(len(ds.responses) / seconds, 2), "X": X})
    base, X0 = rows[0], rows[0]["X"]
    print(f"{len(ds.responses)} real texts, MiniLM float32, {os.cpu_count()} cores ({platform.processor()})")
    print(f"{'run':<26}{'seconds':>9}{'texts/s':>10}{'vs 1 process':>14}{'equal':>8}")
    for r in rows:
        r["speedup_vs_1_process"] = round(base["seconds"] / r["seconds"], 2)
        r["bit_equal_to_1_process"] = bool(np.array_equal(r.pop("X"), X0))
        print(f"{r['run']:<26}{r['seconds']:>9.1f}{r['texts_per_s']:>10.1f}{r['speedup_vs_1_process']:>14.2f}"
              f"{str(r['bit_equal_to_1_process']):>8}")
    out = ROOT / "benchmarks" / "results" / "embed_shards.json"
    flags = cpu_flags()
    out.write_text(json.dumps({"n_texts": len(ds.responses), "cores": os.cpu_count(), "fast_bf16": fast_bf16(),
                               "cpu_flags": sorted(f for f in flags if "avx512" in f or "amx" in f),
                               "runs": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
