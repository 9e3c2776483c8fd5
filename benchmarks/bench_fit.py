"""Benchmark: training a 10-member MLP reward ensemble in Sun et al.'s setting, batched vs one after another.

Setting: d = 2048 synthetic embeddings, 10,000 training pairs, each member its own 80/20 train/validation split
(8,000 / 2,000 pairs), MLP d -> 1024 -> 512 -> 1 ReLU, BT loss, Adam lr 1e-3, up to 30 epochs of FULL-BATCH steps
(as Sun et al.'s code), early stopping with patience 3, 10 members with their own seeds and initialisations.
Every pair has two fresh responses (no response occurs in two pairs), so the batched engine's row deduplication
saves nothing here and both trainers execute the same matmul FLOPs.

    baseline   the 10 members trained one after another in float32 the plain way (nn.Sequential, autograd,
               torch.optim.Adam; embrm.heads.mlp.train_reference)
    batched    embrm.ensemble.fit_ensemble(head="mlp", k=10): all members in one stacked forward/backward per step,
               for each --dtypes entry ("auto" resolves from the CPU flags; see embrm.heads.mlp.resolve_dtype)

Reports wall time and speed-up vs the baseline, the training loop's achieved matmul GFLOP/s against single
large matmuls of each dtype measured in the same run, and held-out pairwise accuracy (ensemble mean and mean
member) on 5,000 pairs of unseen responses. Prints a table and writes benchmarks/results/fit.json.

    python benchmarks/bench_fit.py            # the full setting (~10 min on 2 cores)
    python benchmarks/bench_fit.py --quick    # a small smoke run (seconds)
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embrm.ensemble import fit_ensemble, member_seeds  # noqa: E402
from embrm.heads.mlp import (MemberData, _cpu_flags, forward_stack, init_params, resolve_dtype,  # noqa: E402
                             train_reference)
from embrm.labels import split_pairs  # noqa: E402
from embrm.metrics import pairwise_accuracy  # noqa: E402


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def make_data(d: int, n_train_pairs: int, n_test_pairs: int, pairs_per_prompt: int, seed: int = 0):
    """Embeddings = prompt vector + response vector; gold = a fixed nonlinear function of the embedding."""
    rng = np.random.default_rng(seed)
    n_pairs = n_train_pairs + n_test_pairs
    n_prompts = -(-n_pairs // pairs_per_prompt)
    P = rng.standard_normal((n_prompts, d)).astype(np.float32) * 0.5
    prompt_of_pair = np.repeat(np.arange(n_prompts), pairs_per_prompt)[:n_pairs]
    X = (P[np.repeat(prompt_of_pair, 2)] + rng.standard_normal((2 * n_pairs, d)).astype(np.float32)) / np.sqrt(1.25)
    X = X.astype(np.float32)
    u, v = rng.standard_normal(d) / np.sqrt(d), rng.standard_normal(d) / np.sqrt(d)
    gold = X @ u + 0.5 * np.tanh(2 * (X @ v))
    a, b = np.arange(0, 2 * n_pairs, 2), np.arange(1, 2 * n_pairs, 2)
    # simulated annotator (Sun et al.): BT with beta = 10 on the training pairs, noiseless on the test pairs
    s = gold.std()
    p = 1 / (1 + np.exp(-10 * (gold[a] - gold[b]) / s))
    a_wins = rng.random(n_pairs) < p
    a_wins[n_train_pairs:] = gold[a[n_train_pairs:]] > gold[b[n_train_pairs:]]
    pairs = np.where(a_wins[:, None], np.stack([a, b], 1), np.stack([b, a], 1)).astype(np.int64)
    return X, pairs[:n_train_pairs], pairs[n_train_pairs:], prompt_of_pair[:n_train_pairs].astype(str)


def matmul_peak(dtype: torch.dtype, m: int, k: int, n: int, min_seconds: float = 1.0) -> float:
    """Best-of-runs GFLOP/s of one (m, k) @ (k, n) matmul in dtype."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        a @ b
        best = max(best, 2.0 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def scores_accuracy(R: np.ndarray, test_pairs: np.ndarray) -> tuple[float, float]:
    """(accuracy of the ensemble mean, mean accuracy of the members) on the test pairs."""
    mean_acc = pairwise_accuracy(R.mean(1), test_pairs)
    member = float(np.mean([pairwise_accuracy(R[:, j], test_pairs) for j in range(R.shape[1])]))
    return mean_acc, member


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run: d=256, 1,000 pairs, 3 members, 5 epochs")
    ap.add_argument("--dtypes", default="float32,auto", help="batched runs, comma-separated (float32, bfloat16, "
                                                              "float16, auto)")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fit.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        cfg = dict(d=256, hidden=(128, 64), n_pairs=1000, n_test=1000, k=3, epochs=5)
    else:
        cfg = dict(d=2048, hidden=(1024, 512), n_pairs=10_000, n_test=5_000, k=10, epochs=30)
    if args.members:
        cfg["k"] = args.members
    if args.epochs:
        cfg["epochs"] = args.epochs
    d, hidden, k, epochs = cfg["d"], cfg["hidden"], cfg["k"], cfg["epochs"]
    X, pairs, test_pairs, pp = make_data(d, cfg["n_pairs"], cfg["n_test"], pairs_per_prompt=5)
    common = dict(objective="bt", lr=1e-3, epochs=epochs, batch_size=None, patience=3, weight_decay=0.0)
    seed = 0
    seeds = member_seeds(seed, k)
    print(f"embrm fit benchmark: d={d}, hidden={hidden}, {len(pairs)} training pairs (80/20 per member), "
          f"K={k}, <= {epochs} full-batch epochs, torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)

    # matmul peaks, measured in this run (shape of the first layer's forward over one member's batch)
    m_rows = 2 * int(round(0.8 * len(pairs)))
    peaks = {name: matmul_peak(dt, m_rows, d, hidden[0]) for name, dt in
             (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16))}
    print("single-matmul peaks (GFLOP/s): " + ", ".join(f"{k_}={v:.0f}" for k_, v in peaks.items()), flush=True)

    # baseline: members one after another, float32, the plain way
    t0 = time.perf_counter()
    base_params, base_epochs = [], []
    for j, s in enumerate(seeds):
        tr, va = split_pairs(len(pairs), 0.2, seed=s)
        params, info = train_reference(X, MemberData(pairs[tr], pairs[va], s), init_params(d, hidden, s), **common)
        base_params.append(params)
        base_epochs.append(info["n_epochs"])
        print(f"  baseline member {j + 1}/{k}: {info['n_epochs']} epochs, "
              f"{time.perf_counter() - t0:.1f} s cumulative", flush=True)
    t_base = time.perf_counter() - t0
    R_base = forward_stack(X, [np.stack(ps) for ps in zip(*base_params)])
    base_acc = scores_accuracy(R_base, test_pairs)
    rows = []
    rows.append({"run": "baseline: sequential float32 (plain)", "dtype": "float32", "seconds": t_base,
                 "speedup": 1.0, "epochs": base_epochs, "gflops": None,
                 "acc_mean": base_acc[0], "acc_member": base_acc[1]})

    for name in [s.strip() for s in args.dtypes.split(",") if s.strip()]:
        t0 = time.perf_counter()
        ens = fit_ensemble(X, pairs, head="mlp", k=k, mode="independent", seed=seed, warm=False,
                           hidden=hidden, dtype=name, **common)
        t = time.perf_counter() - t0
        acc = scores_accuracy(ens.predict(X), test_pairs)
        used = ens.info["dtype"]
        gf = ens.info["matmul_flops"] / ens.info["train_seconds"] / 1e9
        rows.append({"run": f"batched K={k} ({name} -> {used})", "dtype": used, "seconds": t,
                     "train_seconds": ens.info["train_seconds"], "speedup": t_base / t,
                     "epochs": ens.info["n_epochs"], "gflops": gf,
                     "gflops_vs_bf16_peak": gf / peaks["bfloat16"], "gflops_vs_own_dtype_peak": gf / peaks[used],
                     "acc_mean": acc[0], "acc_member": acc[1],
                     "acc_diff_points_vs_baseline": 100 * (acc[0] - base_acc[0])})
        print(f"  {rows[-1]['run']}: {t:.1f} s", flush=True)

    # baseline GFLOP/s from the same FLOP count (same rows, same epochs -> same matmuls)
    from embrm.heads.mlp import matmul_flops
    sizes = [d, *hidden, 1]
    n_tr, n_va = 2 * int(len(pairs) - round(0.2 * len(pairs))), 2 * int(round(0.2 * len(pairs)))
    base_flops = sum(e * (matmul_flops(n_tr, sizes, True) + matmul_flops(n_va, sizes, False)) for e in base_epochs)
    rows[0]["gflops"] = base_flops / t_base / 1e9
    rows[0]["gflops_vs_bf16_peak"] = rows[0]["gflops"] / peaks["bfloat16"]
    rows[0]["gflops_vs_own_dtype_peak"] = rows[0]["gflops"] / peaks["float32"]

    print()
    hdr = f"{'run':42s} {'time s':>8s} {'speedup':>8s} {'GFLOP/s':>8s} {'%bf16pk':>8s} {'%ownpk':>7s} " \
          f"{'acc(mean)':>9s} {'acc(memb)':>9s} {'epochs':>14s}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ep = f"{min(r['epochs'])}-{max(r['epochs'])}"
        print(f"{r['run']:42s} {r['seconds']:8.1f} {r['speedup']:8.2f} {r['gflops']:8.0f} "
              f"{100 * r['gflops_vs_bf16_peak']:7.0f}% {100 * r['gflops_vs_own_dtype_peak']:6.0f}% "
              f"{r['acc_mean']:9.4f} {r['acc_member']:9.4f} {ep:>14s}")
    print("single-matmul peaks (GFLOP/s): " + ", ".join(f"{k_}={v:.0f}" for k_, v in peaks.items()))

    out = {
        "benchmark": "fit", "command": " ".join(["python"] + sys.argv), "config": cfg,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "amx_bf16": "amx_bf16" in _cpu_flags(),
                    "avx512_fp16": "avx512_fp16" in _cpu_flags(), "cpu_model": _cpu_model(), "auto_dtype": resolve_dtype("auto", X, (d, *hidden)),
                    "torch": torch.__version__, "numpy": np.__version__},
        "matmul_peak_gflops": peaks, "runs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
