"""Benchmark: active labelling (embrm.active) on the real pool alpaca-eval-models with MiniLM embeddings.

    python benchmarks/bench_active.py            # the default campaign (7 strategies x 3 seeds x 10 rounds of 50)
    python benchmarks/bench_active.py --quick    # 1 seed, 3 rounds

Measures, in one run:
  campaign     run_active with the default ActiveConfig: the whole campaign's wall time and, per strategy, the median
               seconds per round spent selecting and refitting (LaplaceBT, Newton warm-started), with the final
               accuracies (the curves and the plot are written too);
  dopt         the greedy rank-one D-optimal batch (embrm.active._strategies.greedy_dopt: Sherman-Morrison updates of
               every candidate's d^T S d through X @ (S d_j), O(n d + m + d^2) per pick) vs a naive baseline that,
               at every pick, solves the updated information matrix afresh (np.linalg.solve) and recomputes every
               candidate's log det gain log(1 + w d^T S d) from the (m, d) differences: both on the same random
               subset of the candidates after the seed set, the same picks expected; the naive time is also
               extrapolated linearly in m to all candidates (the solve is per pick, the rest is linear in m);
  threads      one short campaign with numpy's BLAS at its default thread count and at one thread (the campaign's
               default, embrm.active._campaign.BLAS_THREADS = 1, through threadpoolctl): the per-round matrices are
               small (d = 384), where BLAS threads help little and, on a loaded machine, cost much more.
Writes benchmarks/results/active.json (or --out) and active.png beside it.
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
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embrm.active import ActiveConfig, State, run_active  # noqa: E402
from embrm.active._campaign import BLAS_THREADS, prepare_seed  # noqa: E402
from embrm.active._strategies import greedy_dopt  # noqa: E402
from embrm.core._hardware import cpu_flags, cpuinfo  # noqa: E402
from embrm.rewards.heads._laplace import LaplaceBT  # noqa: E402


def load():
    """(Dataset, X) of alpaca-eval-models with the default MiniLM embeddings from the project cache."""
    from embrm.data._registry import load_dataset
    from embrm.embedding._embed import DEFAULT_TEMPLATE, cache_spec, cached_embeddings
    from embrm.embedding.backends import make_embedder

    ds = load_dataset("alpaca-eval-models")
    X = cached_embeddings(ds, cache_spec(make_embedder("st"), DEFAULT_TEMPLATE), cache_dir=ROOT / "cache")
    return ds, X


def campaign(ds, X, config: ActiveConfig) -> tuple[dict, object]:
    result = run_active(ds, X, config, progress=True)
    f = result.frame.filter(result.frame["round"] > 0)
    per = {}
    for name in config.strategies:
        s = f.filter(f["strategy"] == name)
        per[name] = {"select_s_median": float(s["select_seconds"].median()),
                     "fit_s_median": float(s["fit_seconds"].median()),
                     "round_s_mean": float((s["select_seconds"] + s["fit_seconds"]).mean()),
                     "final_accuracy": result.summary[name]["final_accuracy"],
                     "final_gain": result.summary[name]["final_gain"], "auc": result.summary[name]["auc"],
                     "labels_to_target": result.summary[name]["labels_to_target"],
                     "vs_random": result.summary[name]["vs_random"]}
    return {"seconds": result.seconds, "candidates": result.candidates, "target": result.target,
            "strategies": per, "config": config.to_dict()}, result


def naive_dopt(X: np.ndarray, pairs: np.ndarray, w: np.ndarray, A: np.ndarray, batch: int) -> np.ndarray:
    """Greedy log det with the information matrix solved afresh and every gain recomputed at every pick."""
    D = X[pairs[:, 0]] - X[pairs[:, 1]]
    picks = []
    for _ in range(batch):
        SD = np.linalg.solve(A, D.T)                          # (d, m): S d_i for every candidate
        gain = np.log1p(w * np.einsum("ij,ji->i", D, SD))
        gain[picks] = -np.inf
        j = int(np.argmax(gain))
        picks.append(j)
        A = A + w[j] * np.outer(D[j], D[j])
    return np.array(picks)


def dopt_comparison(ds, X, config: ActiveConfig, subset: int, batch: int, repeats: int) -> dict:
    """Greedy rank-one vs naive on the same candidate subset of seed 0 after its seed set."""
    pool = prepare_seed(ds.without_excluded(), X[~ds.excluded], config, 0)
    model = LaplaceBT(config.C).fit(pool.X, pool.oriented[pool.seed_set])
    available = np.ones(len(pool.candidates), bool)
    available[pool.seed_set] = False
    state = State(pool.X, pool.candidates, available, model, model.sample(4, seed=0))
    free = np.flatnonzero(available)
    sub = np.sort(np.random.default_rng(0).choice(free, min(subset, len(free)), replace=False))
    lam, X64 = model.prior_precision, state.X64
    p = 1 / (1 + np.exp(-state.margins(free)))
    w_all = p * (1 - p)
    w = w_all[np.searchsorted(free, sub)]
    d = X.shape[1]

    def fast(idx, ww):
        return greedy_dopt(X64, pool.candidates.pairs[idx], ww, pool.prior_sq_norms[idx] / lam, np.eye(d) / lam,
                           batch)

    def best(fn):
        times, out = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return out, min(times)

    fast_sub, fast_sub_s = best(lambda: fast(sub, w.copy()))
    naive_sub, naive_sub_s = best(lambda: naive_dopt(X64, pool.candidates.pairs[sub], w, lam * np.eye(d), batch))
    _, fast_all_s = best(lambda: fast(free, w_all.copy()))
    naive_all_s = naive_sub_s * len(free) / len(sub)
    return {"batch": batch, "d": d, "subset": len(sub), "all_candidates": len(free),
            "greedy_subset_s": fast_sub_s, "naive_subset_s": naive_sub_s, "speedup_subset": naive_sub_s / fast_sub_s,
            "same_picks": bool(np.array_equal(fast_sub, naive_sub)),
            "greedy_all_s": fast_all_s, "naive_all_s_extrapolated": naive_all_s,
            "speedup_all_extrapolated": naive_all_s / fast_all_s}


def threads_comparison(ds, X, config: ActiveConfig) -> dict:
    """The same short campaign with BLAS at its default thread count (BLAS_THREADS = None) and at one (the
    campaign's default, BLAS_THREADS = 1)."""
    from threadpoolctl import threadpool_info

    from embrm.active import _campaign as module

    default = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=None)
    saved, seconds = module.BLAS_THREADS, {}
    try:
        for threads in (None, 1):
            module.BLAS_THREADS = threads
            t = time.perf_counter()
            run_active(ds, X, config, progress=False)
            seconds[threads] = time.perf_counter() - t
    finally:
        module.BLAS_THREADS = saved
    default_s, one_s = seconds[None], seconds[1]
    return {"config": config.to_dict(), "default_threads": default, "default_s": default_s, "one_thread_s": one_s,
            "one_thread_speedup": default_s / one_s}


def print_tables(res: dict) -> None:
    c = res["campaign"]
    print(f"\nActive labelling on alpaca-eval-models (MiniLM d={res['dopt']['d']}): "
          f"{len(c['config']['seeds'])} seeds x {c['config']['rounds']} rounds of {c['config']['batch']} "
          f"from {c['config']['seed_pairs']}; {min(c['candidates'].values()):,} candidate pairs per seed; "
          f"whole campaign {c['seconds']:.1f} s")
    hdr = f"  {'strategy':14s} {'select s':>9s} {'fit s':>7s} {'round s':>8s} {'final acc':>9s} {'AUC':>7s} " \
          f"{'gain':>7s} {'to target':>9s}  final acc vs random"
    print(hdr)
    for name, s in c["strategies"].items():
        vs = s["vs_random"]["final_accuracy"] if s["vs_random"] else None
        eff = f"{vs['estimate']:+.4f} [{vs['lo']:+.4f}, {vs['hi']:+.4f}] {vs['verdict']}" if vs else "-"
        print(f"  {name:14s} {s['select_s_median']:9.3f} {s['fit_s_median']:7.3f} {s['round_s_mean']:8.3f} "
              f"{s['final_accuracy']:9.4f} {s['auc']:7.4f} {s['final_gain']:7.4f} "
              f"{str(s['labels_to_target'] or '-'):>9s}  {eff}")
    d = res["dopt"]
    print(f"\n  greedy D-optimal batch of {d['batch']}: rank-one updates vs naive re-solve (same run)")
    print(f"    subset of {d['subset']:,} candidates: greedy {d['greedy_subset_s']:.3f} s, naive "
          f"{d['naive_subset_s']:.3f} s -> {d['speedup_subset']:.1f}x (same picks: {d['same_picks']})")
    print(f"    all {d['all_candidates']:,} candidates: greedy {d['greedy_all_s']:.3f} s, naive extrapolated "
          f"{d['naive_all_s_extrapolated']:.1f} s -> {d['speedup_all_extrapolated']:.0f}x")
    t = res.get("threads")
    if t:
        print(f"\n  short campaign ({len(t['config']['strategies'])} strategies, {t['config']['rounds']} rounds): "
              f"BLAS {t['default_threads']} threads {t['default_s']:.1f} s, 1 thread {t['one_thread_s']:.1f} s "
              f"({t['one_thread_speedup']:.2f}x)")
    print(f"\n  load average before / after: {res['machine']['loadavg_before'][0]:.2f} / "
          f"{res['machine']['loadavg_after'][0]:.2f} ({res['machine']['cpus']} cpus)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 rounds")
    ap.add_argument("--subset", type=int, default=10_000, help="candidates the naive D-optimal baseline runs on")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-threads", action="store_true", help="skip the BLAS threads comparison")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "active.json"))
    args = ap.parse_args(argv)
    try:
        ds, X = load()
    except Exception as e:  # data or cached embeddings not there: nothing to measure
        raise SystemExit(f"bench_active needs alpaca-eval-models and its MiniLM embeddings in {ROOT / 'cache'} "
                         f"(embrm embed alpaca-eval-models): {type(e).__name__}: {e}") from None
    config = ActiveConfig(seeds=(0,), rounds=3) if args.quick else ActiveConfig()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = {"benchmark": "active", "command": "python benchmarks/bench_active.py" + "".join(
        " " + a for a in (argv if argv is not None else sys.argv[1:])), "dataset": "alpaca-eval-models",
        "embedder": "st (all-MiniLM-L6-v2)"}
    res["campaign"], result = campaign(ds, X, config)
    with threadpool_limits(BLAS_THREADS, user_api="blas"):  # as in the campaign
        res["dopt"] = dopt_comparison(ds, X, config, args.subset, config.batch, args.repeats)
    res["dopt"]["blas_threads"] = BLAS_THREADS
    if not args.no_threads:
        res["threads"] = threads_comparison(ds, X, ActiveConfig(seeds=(0,), rounds=3))
    info = cpuinfo()
    res["machine"] = {"cpus": os.cpu_count(), "model": info.get("model name"), "vendor": info.get("vendor_id"),
                      "cpu_flags": sorted(cpu_flags()), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "python": platform.python_version(),
                      "numpy": np.__version__, "platform": platform.platform()}
    res["total_s"] = time.perf_counter() - t0
    print_tables(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    result.plot(out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return res


if __name__ == "__main__":
    main()
