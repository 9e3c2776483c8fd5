"""Benchmark: `embrm embed` (cold and warm) against a raw SentenceTransformer.encode of the same real texts.

Texts: real (prompt, response) texts of the 58-model pool (../shared/data/alpaca_eval_models), rendered with embrm's
template, the same texts for every run. Runs, each timed once after a small warm-up:

    raw float32     SentenceTransformer(packaged MiniLM).encode(texts, batch_size=64), float32 weights
    raw bfloat16    the same with the model cast to bfloat16
    embrm cold      embed_dataset into an empty cache, for each dtype (what `embrm embed --dtype D` runs)
    embrm warm      the same call again: every text is cached, the model is not loaded

Reports texts/s, the ratios the embed issue targets (cold vs raw float32; cold vs raw at the same dtype; warm vs
cold) and the cosine of the bfloat16 vectors to the float32 ones. Whether bfloat16 pays depends on the CPU: with
AMX (amx_bf16 in /proc/cpuinfo) it is several times faster; without it, oneDNN's bfloat16 path is slower than
float32, and `--dtype auto` picks float32. Prints a table and writes benchmarks/results/embed.json.

    python benchmarks/bench_embed.py            # 600 texts (~1-2 min per run on 2 cores)
    python benchmarks/bench_embed.py --n 200    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embrm.data._registry import load_dataset  # noqa: E402
from embrm.embedding._embed import DEFAULT_TEMPLATE, embed_dataset, render  # noqa: E402
from embrm.embedding.backends import make_embedder  # noqa: E402
from embrm.embedding.backends._st import packaged_minilm  # noqa: E402


def cpu_flags() -> set:
    try:
        return set(next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def real_subset(n: int, seed: int = 0):
    ds = load_dataset("alpaca-eval-models", os.environ.get("EMBRM_DATA_DIR"))
    rows = np.sort(np.random.default_rng(seed).choice(len(ds.responses), n, replace=False))
    return replace(ds, responses=ds.responses[rows])


def raw_encode(texts, dtype: str) -> tuple[np.ndarray, float]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(packaged_minilm(), device="cpu")
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.encode(texts[:16], batch_size=16)  # warm-up (kernels, allocator)
    t = time.perf_counter()
    X = model.encode(texts, batch_size=64, convert_to_numpy=False, normalize_embeddings=True)
    seconds = time.perf_counter() - t
    return torch.stack(X).float().numpy(), seconds


def embrm_runs(ds, dtype: str) -> tuple[np.ndarray, float, float]:
    embedder = make_embedder("st", dtype=dtype)
    with tempfile.TemporaryDirectory() as cache:
        embedder.embed(["warm-up text"] * 16)  # load + warm-up outside the timing, as for the raw runs
        t = time.perf_counter()
        cold = embed_dataset(ds, embedder, cache_dir=cache, progress=False)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = embed_dataset(ds, make_embedder("st", dtype=dtype), cache_dir=cache, progress=False)
        warm_s = time.perf_counter() - t
        assert warm.n_embedded == 0 and np.array_equal(warm.X, cold.X)
    return cold.X, cold_s, warm_s


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="number of real texts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed.json"))
    args = ap.parse_args(argv)
    import torch

    ds = real_subset(args.n)
    texts, _ = render(ds.responses, DEFAULT_TEMPLATE)
    runs, vectors = [], {}
    for dtype in ("float32", "bfloat16"):
        X, s = raw_encode(texts, dtype)
        vectors[f"raw {dtype}"] = X
        runs.append({"run": f"raw encode {dtype}", "dtype": dtype, "seconds": s})
        X, cold_s, warm_s = embrm_runs(ds, dtype)
        vectors[f"embrm {dtype}"] = X
        runs.append({"run": f"embrm cold {dtype}", "dtype": dtype, "seconds": cold_s})
        runs.append({"run": f"embrm warm {dtype}", "dtype": dtype, "seconds": warm_s})
    by = {r["run"]: r["seconds"] for r in runs}
    for r in runs:
        r["texts_per_s"] = args.n / r["seconds"]
        r["speedup_vs_raw_float32"] = by["raw encode float32"] / r["seconds"]
    ratios = {
        f"cold {d} vs raw {d} (1.0 = no overhead)": by[f"raw encode {d}"] / by[f"embrm cold {d}"]
        for d in ("float32", "bfloat16")}
    ratios |= {f"warm vs cold {d}": by[f"embrm cold {d}"] / by[f"embrm warm {d}"] for d in ("float32", "bfloat16")}
    ratios["best cold vs raw float32"] = by["raw encode float32"] / min(by["embrm cold float32"],
                                                                        by["embrm cold bfloat16"])
    cos = cosine(vectors["embrm bfloat16"], vectors["raw float32"])
    result = {
        "benchmark": "embed", "command": "python benchmarks/bench_embed.py " + " ".join(argv or sys.argv[1:]),
        "n_texts": args.n, "mean_chars": float(pl.Series(texts).str.len_chars().mean()),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "amx_bf16": "amx_bf16" in cpu_flags(), "avx512_bf16": "avx512_bf16" in cpu_flags(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "auto_dtype": make_embedder("st").spec().get("dtype")},
        "runs": runs, "ratios": ratios,
        "cosine_bf16_vs_fp32": {"min": float(cos.min()), "mean": float(cos.mean())},
        "cosine_embrm_fp32_vs_raw_fp32_min": float(cosine(vectors["embrm float32"], vectors["raw float32"]).min()),
    }
    print(f"{'run':<24}{'seconds':>9}{'texts/s':>9}{'vs raw fp32':>13}")
    for r in runs:
        print(f"{r['run']:<24}{r['seconds']:>9.2f}{r['texts_per_s']:>9.1f}{r['speedup_vs_raw_float32']:>12.2f}x")
    for k, v in ratios.items():
        print(f"{k:<44}{v:>8.2f}x")
    print(f"cosine bf16 vs fp32: min {cos.min():.5f}, mean {cos.mean():.5f}; AMX: {result['machine']['amx_bf16']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
