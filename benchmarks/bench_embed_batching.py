"""Benchmark: how HFEmbedder batches texts (plain fixed batches vs length sorting vs a token budget).

Texts: a seeded random sample of real (prompt, response) texts of the alpaca-eval-bon16 pool
(../shared/data/alpaca_eval_bon16), rendered with embrm's template, embedded by the packaged SmolLM2 (135M GGUF)
with the default recipe (last layer, last token, 512 tokens, prompt-first cut). Variants, each timed once after a
warm-up, all on the same loaded model:

    plain            texts in the given order, fixed batches of --batch-size rows, each padded to its longest row
                     (the same tokens and forward as HFEmbedder, only without sorting)
    sorted           HFEmbedder: rows sorted by token length, then --batch-size rows per batch (the default)
    budget           HFEmbedder(max_tokens=--max-tokens): sorted rows grouped while rows x longest <= the budget

Reports texts/s, padding share (padding tokens / all tokens of the padded batches), speed vs plain and the max abs
difference of the vectors to plain's (batch composition changes the matmul shapes, hence the rounding). Prints a
table and writes benchmarks/results/embed_batching.json.

    python benchmarks/bench_embed_batching.py            # 96 texts (~15 s per variant on 2 cores in bf16)
    python benchmarks/bench_embed_batching.py --n 32     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embrm.core._hardware import cpu_flags, cpuinfo, fast_bf16  # noqa: E402
from embrm.data._registry import load_dataset  # noqa: E402
from embrm.embedding._embed import DEFAULT_TEMPLATE, render  # noqa: E402
from embrm.embedding.backends._hf import HFEmbedder  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def real_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    responses = load_dataset("alpaca-eval-bon16", os.environ.get("EMBRM_DATA_DIR")).responses
    rows = np.random.default_rng(seed).choice(len(responses), n, replace=False)  # random order: unsorted lengths
    texts, starts = render(responses[rows], DEFAULT_TEMPLATE)
    return texts, np.asarray(starts)


def padding_share(batches: list[np.ndarray], kept: np.ndarray) -> tuple[float, int]:
    """(padding tokens / padded tokens, padded tokens) over the batches."""
    padded = sum(len(b) * int(kept[b].max()) for b in batches)
    return 1 - int(kept.sum()) / padded, padded


def plain(emb: HFEmbedder, texts, starts, batch_size: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Fixed batches in the given order through HFEmbedder's own tokenization, cut and forward."""
    enc, kept, _, starts, _ = emb._prepare(texts, starts, offsets=False)
    view = [(emb.layer, emb.pooling)]
    batches = [np.arange(s, min(s + batch_size, len(texts))) for s in range(0, len(texts), batch_size)]
    X = np.concatenate([emb._embed_rows(enc, rows, kept[rows], starts, view)[0] for rows in batches])
    return X, batches, kept


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="number of real texts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=4096, help="token budget of the budget variant")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed_batching.json"))
    args = ap.parse_args(argv)
    import torch

    texts, starts = real_texts(args.n, args.seed)
    emb = HFEmbedder("smollm2", dtype=args.dtype, batch_size=args.batch_size)
    emb.embed(texts[:4], starts[:4])  # load + warm-up outside the timings
    kept = emb._prepare(texts, starts, offsets=False)[1]

    t = time.perf_counter()
    X0, batches, _ = plain(emb, texts, starts, args.batch_size)
    runs = [{"variant": f"plain (given order, {args.batch_size} rows)", "seconds": time.perf_counter() - t,
             "batches": batches, "X": X0}]
    for name, max_tokens in [(f"sorted ({args.batch_size} rows)", None), (f"budget ({args.max_tokens} tokens)",
                                                                            args.max_tokens)]:
        emb.max_tokens = max_tokens  # batching only: the same spec(), the same loaded model
        t = time.perf_counter()
        X = emb.embed(texts, starts).vectors
        runs.append({"variant": name, "seconds": time.perf_counter() - t, "batches": emb.batches(kept), "X": X})

    for r in runs:
        batches, X = r.pop("batches"), r.pop("X")
        share, padded = padding_share(batches, kept)
        cos = (X * X0).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(X0, axis=1))
        r |= {"texts_per_s": args.n / r["seconds"], "padding_share": share, "padded_tokens": padded,
              "n_batches": len(batches), "speedup_vs_plain": runs[0]["seconds"] / r["seconds"],
              "max_abs_diff_vs_plain": float(np.abs(X - X0).max()), "min_cosine_vs_plain": float(cos.min())}
    flags = cpu_flags()
    result = {
        "benchmark": "embed_batching",
        "command": "python benchmarks/bench_embed_batching.py " + " ".join(argv or sys.argv[1:]),
        "dataset": "alpaca-eval-bon16", "n_texts": args.n, "seed": args.seed, "model": emb.model_id,
        "dtype": emb.dtype, "max_length": emb.max_length, "real_tokens": int(kept.sum()),
        "max_abs_vector": float(np.abs(X0).max()),
        "kept_tokens": {"min": int(kept.min()), "median": float(np.median(kept)), "max": int(kept.max())},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cpu": cpuinfo().get("model name"), "flags": {f: f in flags for f in FLAGS},
                    "fast_bf16": fast_bf16(), "platform": platform.platform(), "torch": torch.__version__},
        "runs": runs,
    }
    print(f"{args.n} texts, {int(kept.sum())} real tokens, dtype {emb.dtype}, fast_bf16 {fast_bf16()}")
    print(f"{'variant':<28}{'batches':>8}{'seconds':>9}{'texts/s':>9}{'padding':>9}{'vs plain':>10}{'max|dX|':>10}")
    for r in runs:
        print(f"{r['variant']:<28}{r['n_batches']:>8}{r['seconds']:>9.2f}{r['texts_per_s']:>9.2f}"
              f"{r['padding_share']:>9.1%}{r['speedup_vs_plain']:>9.2f}x{r['max_abs_diff_vs_plain']:>10.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
