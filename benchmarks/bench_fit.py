"""Benchmark: training a 10-member MLP reward ensemble in Sun et al.'s setting, batched vs one after another.

Setting: d = 2048 synthetic embeddings, 10,000 training pairs, each member its own 80/20 train/validation split
(8,000 / 2,000 pairs), MLP d -> 1024 -> 512 -> 1 ReLU, BT loss, Adam lr 1e-3, up to 30 epochs of FULL-BATCH steps
(as Sun et al.'s code), early stopping with patience 3, 10 members with their own seeds and initialisations.
Every pair has two fresh responses (no response occurs in two pairs), so the batched engine's row deduplication
saves nothing here and both trainers execute the same matmul FLOPs.

    baseline   the 10 members trained one after another in float32 the plain way (nn.Sequential, autograd,
               torch.optim.Adam; embrm.rewards.heads._mlp.train_reference)
    batched    embrm.rewards._ensemble.fit_ensemble(head="mlp", k=10): all members in one stacked forward/backward per step,
               for each --dtypes entry ("auto" resolves from the CPU flags; see embrm.rewards.heads._mlp.resolve_dtype)

Reports wall time and speed-up vs the baseline ("speedup": fit_ensemble end to end, which also predicts every
row of X once for the members' validation accuracy; "train x": train_stack alone, the like-for-like loop), the
training loop's achieved matmul GFLOP/s against single large matmuls of each dtype measured in the same run, and
held-out pairwise accuracy (ensemble mean and mean member) on 5,000 pairs of unseen responses. A half dtype whose
CPU lacks its instructions and whose single-matmul peak is under a tenth of float32's (float16 without
avx512_fp16 / amx_fp16: a scalar fallback) is recorded as skipped, not run for hours.

Real-data section (skipped with --no-real or when the data / cached embeddings are missing): the same 10-member
MLP ensemble on MiniLM embeddings (384-d) of alpaca-eval-models; 80/20 split of the prompts, 10,000 BT pairs
(beta = 10, embrm.data._labels.simulate_pairs) on the training prompts, held-out accuracy against the gold order on
5,000 noiseless pairs of test prompts. Here responses recur across pairs, so the batched engine's per-member row
deduplication forwards fewer rows than the baseline (which forwards chosen and rejected rows of every pair).

    python benchmarks/bench_fit.py            # the full setting (~20 min on 2 loaded cores)
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

from embrm.core._hardware import cpu_flags as _cpu_flags  # noqa: E402
from embrm.core._hardware import cpuinfo as _cpuinfo
from embrm.core._hardware import fast_bf16
from embrm.data._labels import split_pairs  # noqa: E402
from embrm.evaluation._metrics import pairwise_accuracy  # noqa: E402
from embrm.rewards._ensemble import fit_ensemble, member_seeds  # noqa: E402
from embrm.rewards.heads._mlp import (  # noqa: E402
    MemberData,
    forward_stack,
    init_params,
    matmul_flops,
    resolve_dtype,
    train_reference,
)


def machine_facts() -> dict:
    flags = _cpu_flags()
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cpu_model": _cpuinfo().get("model name", platform.processor()), "vendor": _cpuinfo().get("vendor_id"),
            **{f: f in flags for f in ("amx_bf16", "avx512_bf16", "avx512_fp16", "amx_fp16")},
            "fast_bf16": fast_bf16(), "torch": torch.__version__, "numpy": np.__version__}


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


def run_baseline(X, pairs, test_pairs, k, hidden, common, label) -> dict:
    """The k members one after another, float32, the plain way (same seeds, splits and inits as fit_ensemble)."""
    d = X.shape[1]
    t0 = time.perf_counter()
    params, epochs = [], []
    for j, s in enumerate(member_seeds(0, k)):
        tr, va = split_pairs(len(pairs), 0.2, seed=s)
        p, info = train_reference(X, MemberData(pairs[tr], pairs[va], s), init_params(d, hidden, s), **common)
        params.append(p)
        epochs.append(info["n_epochs"])
        print(f"  {label} baseline member {j + 1}/{k}: {info['n_epochs']} epochs, "
              f"{time.perf_counter() - t0:.1f} s cumulative", flush=True)
    t = time.perf_counter() - t0
    acc = scores_accuracy(forward_stack(X, [np.stack(ps) for ps in zip(*params)]), test_pairs)
    sizes = [d, *hidden, 1]
    n_tr, n_va = 2 * int(len(pairs) - round(0.2 * len(pairs))), 2 * int(round(0.2 * len(pairs)))
    flops = sum(e * (matmul_flops(n_tr, sizes, True) + matmul_flops(n_va, sizes, False)) for e in epochs)
    return {"run": "baseline: sequential float32 (plain)", "dtype": "float32", "seconds": t, "speedup": 1.0,
            "epochs": epochs, "gflops": flops / t / 1e9, "acc_mean": acc[0], "acc_member": acc[1]}


def run_batched(X, pairs, test_pairs, k, hidden, common, name, base) -> dict:
    t0 = time.perf_counter()
    ens = fit_ensemble(X, pairs, head="mlp", k=k, mode="independent", seed=0, warm=False, hidden=hidden,
                       dtype=name, **common)
    t = time.perf_counter() - t0
    acc = scores_accuracy(ens.predict(X), test_pairs)
    used = ens.info["dtype"]
    row = {"run": f"batched K={k} ({name}{'' if used == name else ' -> ' + used})", "dtype": used, "seconds": t,
           "train_seconds": ens.info["train_seconds"], "speedup": base["seconds"] / t,
           "train_speedup": base["seconds"] / ens.info["train_seconds"],
           "epochs": ens.info["n_epochs"], "gflops": ens.info["matmul_flops"] / ens.info["train_seconds"] / 1e9,
           "acc_mean": acc[0], "acc_member": acc[1],
           "acc_diff_points_vs_baseline": 100 * (acc[0] - base["acc_mean"])}
    print(f"  {row['run']}: {t:.1f} s", flush=True)
    return row


HW_FLAGS = {"float32": (), "bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def slow_path(dtype: str, peaks: dict) -> bool:
    """A half dtype without its CPU instructions and a measured matmul peak under a tenth of float32's runs on a
    scalar fallback here (float16 without avx512_fp16: < 1 GFLOP/s): not worth hours."""
    hw = not HW_FLAGS[dtype] or any(f in _cpu_flags() for f in HW_FLAGS[dtype])
    return not hw and peaks[dtype] < 0.1 * peaks["float32"]


def print_table(title: str, rows: list[dict], peaks: dict | None) -> None:
    print(f"\n{title}")
    hdr = f"{'run':44s} {'time s':>8s} {'speedup':>8s} {'train x':>8s} {'GFLOP/s':>8s} {'%bf16pk':>8s} " \
          f"{'%ownpk':>7s} {'acc(mean)':>9s} {'acc(memb)':>9s} {'epochs':>8s}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r.get("skipped"):
            print(f"{r['run']:44s} skipped: {r['skipped']}")
            continue
        pk = (f"{100 * r['gflops_vs_bf16_peak']:7.0f}% {100 * r['gflops_vs_own_dtype_peak']:6.0f}%" if peaks
              else f"{'':8s} {'':7s}")
        ep = f"{min(r['epochs'])}-{max(r['epochs'])}"
        print(f"{r['run']:44s} {r['seconds']:8.1f} {r['speedup']:8.2f} {r.get('train_speedup', 1.0):8.2f} "
              f"{r['gflops']:8.0f} {pk} "
              f"{r['acc_mean']:9.4f} {r['acc_member']:9.4f} {ep:>8s}")


def real_data(k: int, hidden, common, dtypes: list[str], peaks: dict) -> dict | None:
    """The ensemble on MiniLM embeddings of alpaca-eval-models (see the module doc); None where unavailable."""
    try:
        from embrm.data._labels import pair_indices, simulate_pairs, split_prompts
        from embrm.data._registry import load_dataset
        from embrm.embedding._embed import DEFAULT_TEMPLATE, cache_spec, cached_embeddings
        from embrm.embedding.backends import make_embedder
        ds = load_dataset("alpaca-eval-models")
        X = cached_embeddings(ds, cache_spec(make_embedder("st"), DEFAULT_TEMPLATE),
                              cache_dir=Path(__file__).resolve().parents[1] / "cache")
    except Exception as e:  # data or model not available on this machine: the synthetic section still stands
        print(f"real-data section skipped: {type(e).__name__}: {e}")
        return None
    resp = ds.responses
    train_ids, test_ids = split_prompts(resp["prompt_id"], test_size=0.2, seed=0)
    pairs = pair_indices(simulate_pairs(resp, 10_000, beta=10, prompt_ids=train_ids, seed=0), resp)
    test = pair_indices(simulate_pairs(resp, 5_000, prompt_ids=test_ids, seed=1), resp)  # noiseless: gold order
    uniq = np.mean([len(np.unique(pairs[split_pairs(len(pairs), 0.2, seed=s)[0]]))
                    for s in member_seeds(0, k)])
    print(f"\nreal data: alpaca-eval-models, MiniLM {X.shape}, {len(pairs)} BT pairs (beta=10) on "
          f"{len(train_ids)} training prompts, {len(test)} gold-order test pairs on {len(test_ids)} test prompts; "
          f"{uniq:.0f} distinct rows per member's training pairs (of {2 * 0.8 * len(pairs):.0f} pair slots)",
          flush=True)
    base = run_baseline(X, pairs, test, k, hidden, common, "real")
    runnable = [name for name in dtypes if not slow_path(resolve_dtype(name, X, (X.shape[1], *hidden)), peaks)]
    rows = [base] + [run_batched(X, pairs, test, k, hidden, common, name, base) for name in runnable]
    print_table(f"real data (alpaca-eval-models, MiniLM d={X.shape[1]}): GFLOP/s are of executed matmuls "
                f"(the batched rows execute fewer after deduplication)", rows, None)
    return {"dataset": "alpaca-eval-models", "embedder": "st (all-MiniLM-L6-v2)", "d": int(X.shape[1]),
            "n_train_pairs": int(len(pairs)), "beta": 10, "n_test_pairs": int(len(test)),
            "train_prompts": int(len(train_ids)), "test_prompts": int(len(test_ids)),
            "mean_distinct_rows_per_member": float(uniq), "runs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run: d=256, 1,000 pairs, 3 members, 5 epochs")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16",
                    help="batched runs, comma-separated (float32, bfloat16, float16, auto)")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--no-real", action="store_true", help="skip the real-data (alpaca-eval-models) section")
    ap.add_argument("--real-only", action="store_true", help="only the real-data section (default --out: "
                                                                 "results/fit_real.json)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fit.json"))
    args = ap.parse_args()
    if args.real_only and args.out == ap.get_default("out"):
        args.out = str(Path(args.out).with_name("fit_real.json"))
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

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
    dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    auto = resolve_dtype("auto", X, (d, *hidden))
    print(f"embrm fit benchmark: d={d}, hidden={hidden}, {len(pairs)} training pairs (80/20 per member), "
          f"K={k}, <= {epochs} full-batch epochs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"auto -> {auto}, load average {load_start[0]:.1f}", flush=True)

    # matmul peaks, measured in this run (shape of the first layer's forward over one member's batch)
    m_rows = 2 * int(round(0.8 * len(pairs)))
    peaks = {"float32": matmul_peak(torch.float32, m_rows, d, hidden[0]),
             "bfloat16": matmul_peak(torch.bfloat16, m_rows, d, hidden[0])}
    peaks["float16"] = matmul_peak(torch.float16, 256, d, hidden[0], min_seconds=0.2)  # small: may be a slow path
    print("single-matmul peaks (GFLOP/s): " + ", ".join(f"{k_}={v:.1f}" for k_, v in peaks.items()), flush=True)

    rows = [] if args.real_only else [run_baseline(X, pairs, test_pairs, k, hidden, common, "synthetic")]
    for name in dtypes if rows else []:
        used = auto if name == "auto" else name
        if slow_path(used, peaks):
            rows.append({"run": f"batched K={k} ({name})", "dtype": used, "skipped":
                         f"{used} matmul peak {peaks[used]:.1f} GFLOP/s < 10% of float32's, no "
                         f"{'/'.join(HW_FLAGS[used])} on this CPU"})
            print(f"  {rows[-1]['run']}: skipped ({rows[-1]['skipped']})", flush=True)
            continue
        rows.append(run_batched(X, pairs, test_pairs, k, hidden, common, name, rows[0]))
    for r in rows:
        if not r.get("skipped"):
            r["gflops_vs_bf16_peak"] = r["gflops"] / peaks["bfloat16"]
            r["gflops_vs_own_dtype_peak"] = r["gflops"] / peaks[r["dtype"]]
    if rows:
        print_table(f"synthetic (Sun et al. setting, d={d})", rows, peaks)
        print("single-matmul peaks (GFLOP/s): " + ", ".join(f"{k_}={v:.1f}" for k_, v in peaks.items()))
    real = None if args.no_real or args.quick else real_data(k, hidden, common, dtypes, peaks)

    load_end = os.getloadavg()
    out = {
        "benchmark": "fit", "command": " ".join(["python"] + sys.argv), "config": cfg,
        "machine": {**machine_facts(), "auto_dtype": auto,
                    "load_average_1min": {"start": load_start[0], "end": load_end[0]},
                    "loaded": max(load_start[0], load_end[0]) > 0.5 * (os.cpu_count() or 1) + 0.5},
        "note": "timings from one run; the machine is shared, so compare the ratios within this run",
        "matmul_peak_gflops": peaks, "runs": rows, "real_data": real,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
