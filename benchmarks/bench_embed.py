"""Benchmark: every embedding path this machine has, on the same real texts, in one run; and the default study's
whole embedding stage.

Texts: real (prompt, response) texts of the 58-model pool (../shared/data/alpaca_eval_models), rendered with
embrm's template, whole answers (long ones are cut prompt-first to the model's window, as embrm embeds them).
For each backend (st: the packaged all-MiniLM-L6-v2; hf: the packaged SmolLM2-135M GGUF) and each precision it
offers here (torch float32, torch bfloat16, int8 on OpenVINO when installed), after a warm-up call that loads and
converts the model:

    texts/s        embedder.embed(texts) (tokenising, cutting, batching and pooling included)
    vs float32     the ratio to the same backend's float32 torch in this run
    cosine         per text, to float32 torch: min and mean (the int8 bar: min >= 0.99 on every text)

plus a raw SentenceTransformer.encode in float32 (embrm's own overhead) and what `dtype="auto"` picks here.
`--stage` also times the default study's embedding stage end to end (`embrm run`'s embed_all: every dataset,
RRM's texts and both halves' texts, into an empty cache; about 10-15 minutes on 2 cores without AMX).

Prints a table and writes benchmarks/results/embed.json (with the CPU's model and flags).

    python benchmarks/bench_embed.py                 # 400 st texts, 120 hf texts
    python benchmarks/bench_embed.py --stage         # + the default study's embedding stage, cold
    python benchmarks/bench_embed.py --n 0 --out /tmp/embed_hf.json   # hf only
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embrm.core import cpu_flags, cpuinfo, fast_bf16, fast_int8  # noqa: E402
from embrm.data._registry import load_dataset  # noqa: E402
from embrm.embedding._embed import DEFAULT_TEMPLATE, render  # noqa: E402
from embrm.embedding.backends import _openvino, make_embedder  # noqa: E402
from embrm.embedding.backends._st import packaged_minilm  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
MODELS = {"st": None, "hf": "smollm2"}


def real_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    ds = load_dataset("alpaca-eval-models", os.environ.get("EMBRM_DATA_DIR"))
    rows = np.sort(np.random.default_rng(seed).choice(len(ds.responses), n, replace=False))
    texts, starts = render(replace(ds, responses=ds.responses[rows]).responses, DEFAULT_TEMPLATE)
    return list(texts), list(starts)


def precisions(backend: str) -> list[str]:
    """float32 first (the baseline of the ratios), then what else runs here."""
    out = ["float32", "bfloat16"]
    if _openvino.available() and _supports_int8(backend):
        out.append("int8")
    return out


def _supports_int8(backend: str) -> bool:
    try:
        make_embedder(backend, MODELS[backend], dtype="int8")
        return True
    except Exception:  # noqa: BLE001 - a backend without an int8 path says so on construction
        return False


def time_path(backend: str, dtype: str, texts: list[str], starts: list[int]) -> tuple[np.ndarray, float]:
    with make_embedder(backend, MODELS[backend], dtype=dtype) as emb:
        emb.embed(texts[:8], starts[:8])  # load (and convert) outside the timing
        t = time.perf_counter()
        X = emb.embed(texts, starts).vectors
        return X, time.perf_counter() - t


def raw_st_float32(texts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(packaged_minilm(), device="cpu")
    model.encode(texts[:8])
    t = time.perf_counter()
    model.encode(texts, batch_size=64)
    return time.perf_counter() - t


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def bench_backend(backend: str, n: int) -> list[dict]:
    texts, starts = real_texts(n)
    rows, base = [], None
    for dtype in precisions(backend):
        X, seconds = time_path(backend, dtype, texts, starts)
        base = (X, seconds) if dtype == "float32" else base
        cos = cosines(X, base[0])
        rows.append({"backend": backend, "precision": dtype, "n_texts": n, "seconds": round(seconds, 3),
                     "texts_per_s": round(n / seconds, 2), "vs_float32": round(base[1] / seconds, 3),
                     "cos_min": float(cos.min()), "cos_mean": float(cos.mean())})
    if backend == "st":
        seconds = raw_st_float32(texts)
        rows.append({"backend": "st", "precision": "float32, raw SentenceTransformer.encode", "n_texts": n,
                     "seconds": round(seconds, 3), "texts_per_s": round(n / seconds, 2),
                     "vs_float32": round(base[1] / seconds, 3), "cos_min": None, "cos_mean": None})
    return rows


def embedding_stage() -> dict:
    """The default study's embedding stage into an empty cache, as `embrm run` does it (the agreement check and
    the model's conversion are recorded per machine beforehand by the runs above)."""
    from embrm.studies._config import load_study
    from embrm.studies._run import embed_all

    study = load_study(None)
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        _, seconds, facts, _ = embed_all(study, cache, progress=False, replicate=True)
        total = time.perf_counter() - t
    texts = sum(f.n_texts for f in facts.values())
    return {"seconds": round(total, 1), "per_group_seconds": seconds, "dataset_rows": texts,
            "precision": study.embedder.build().precision()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="real texts for the st paths (0: skip st)")
    ap.add_argument("--hf-n", type=int, default=120, help="real texts for the hf paths (0: skip hf)")
    ap.add_argument("--stage", action="store_true", help="also time the default study's embedding stage, cold")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed.json"))
    args = ap.parse_args(argv)
    import torch

    sizes = {b: n for b, n in (("st", args.n), ("hf", args.hf_n)) if n}
    rows = [row for backend, n in sizes.items() for row in bench_backend(backend, n)]
    result = {
        "benchmark": "embed", "command": "python benchmarks/bench_embed.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpu": cpuinfo().get("model name"), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "flags": sorted(set(FLAGS) & cpu_flags()),
                    "fast_bf16": fast_bf16(), "fast_int8": fast_int8(), "platform": platform.platform(),
                    "torch": torch.__version__, **(_openvino.versions() if _openvino.available() else {})},
        "auto": {b: make_embedder(b, MODELS[b]).precision() for b in sizes},
        "runs": rows,
    }
    print(f"CPU: {result['machine']['cpu']} ({', '.join(result['machine']['flags'])})")
    print(f"{'backend':<8}{'precision':<42}{'texts/s':>9}{'vs fp32':>9}{'cos min':>9}{'cos mean':>9}")
    for r in rows:
        cos = f"{r['cos_min']:>9.4f}{r['cos_mean']:>9.4f}" if r["cos_min"] is not None else ""
        print(f"{r['backend']:<8}{r['precision']:<42}{r['texts_per_s']:>9.1f}{r['vs_float32']:>8.2f}x{cos}")
    for backend, choice in result["auto"].items():
        print(f"dtype auto, {backend}: {choice}")
    if args.stage:
        result["stage"] = embedding_stage()
        print(f"default study's embedding stage, empty cache: {result['stage']['seconds']:.0f} s "
              f"({result['stage']['precision']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
