"""Benchmark: exact Best-of-n on large pools (10^4-10^5 candidates) on the default log grid of n, chunked prompts.

    python benchmarks/bench_bon_scale.py              # the cases below + the sweeps behind embrm.evaluation._bon's constants
    python benchmarks/bench_bon_scale.py --quick      # small shapes (seconds)
    python benchmarks/bench_bon_scale.py --no-sweeps  # only the three cases

Cases (each in a FRESH child process, one at a time, so that its peak RSS is its own):
  a  1,000 prompts x 12,500 candidates x 10 members x 6 aggregations: the whole path (standardize + aggregate_all +
     bon_curves on the default grid, ~86 log-spaced n up to 12,500). Targets: a few seconds, peak <= 2 GB.
  b  100 prompts x 60,000 candidates, the same path. Target: peak within 4 GB.
  c  100 prompts x 4,000 candidates (float64 member scores, so that proxies have no ties and a naive loop that
     ignores ties is exact): bon_curves on the default log grid vs bon_curves(n_grid="all") read at the grid's n
     (identical values expected) vs a naive per-n loop (for each grid n: its weight column from gammaln; for each
     aggregation and prompt: argsort + dot), timed on a subset of prompts and extrapolated LINEARLY to all prompts.
Member scores: s, h ~ N(0, 1) per candidate; gold = s - 0.35 relu(h)^2; member k = s + hack_k h + 0.5 noise_k
(float32, generated with numpy in row chunks: cheaper than embrm.data._synthetic at 12.5M rows).

Peak memory: the child's VmHWM (peak RSS, inputs included: member scores, their standardised copy, aggregations)
and, separately, the peak during bon_curves alone (VmHWM reset through /proc/self/clear_refs before the call)
minus the RSS before it: bon_curves' own working set.

Sweeps (skip with --no-sweeps): ALL_N_LIMIT (all-n vs the log grid at ~2M cells for N = 256..4,096), CHUNK_BYTES
(8 MB .. 512 MB on three shapes) and SORT_THREADS (1 vs 2), each in its own child.
Writes benchmarks/results/bon_scale.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("mean", "min", "median", "uwo", "lcb", "single")


# ----------------------------------------------------------------------------- child helpers

def _status(key: str) -> float:
    """VmHWM / VmRSS of this process in MB (NaN where unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_scores(P: int, N: int, K: int, seed: int = 0, dtype=np.float32, chunk: int = 1 << 20):
    """(prompt_index int32, member scores (P*N, K), gold (P*N,)) of the docstring's model, in row chunks."""
    rng = np.random.default_rng(seed)
    n = P * N
    hack = (1.2 * (1 + 0.5 * rng.standard_normal(K))).astype(dtype)
    scores = np.empty((n, K), dtype)
    gold = np.empty(n, dtype)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        s = rng.standard_normal(hi - lo, dtype=dtype)
        h = rng.standard_normal(hi - lo, dtype=dtype)
        gold[lo:hi] = s - dtype(0.35) * np.square(np.maximum(h, 0))
        sc = scores[lo:hi]
        sc[...] = rng.standard_normal((hi - lo, K), dtype=dtype)
        sc *= dtype(0.5)
        sc += s[:, None]
        sc += h[:, None] * hack
    return np.repeat(np.arange(P, dtype=np.int32), N), scores, gold


def child_path(P: int, N: int, K: int, repeats: int) -> dict:
    """Case a / b: the whole path, peak memory of the process and of bon_curves alone."""
    from embrm.evaluation._aggregate import aggregate_all, standardize
    from embrm.evaluation._bon import bon_curves

    rss_imports = _status("VmRSS")  # the interpreter + numpy + `import embrm` (which imports torch)
    t = time.perf_counter()
    pidx, scores, gold = make_scores(P, N, K)
    gen_s = time.perf_counter() - t
    inputs_mb = (scores.nbytes + gold.nbytes + pidx.nbytes) / 2**20
    t = time.perf_counter()
    z = standardize(scores)
    del scores
    aggs = aggregate_all(z, METHODS)
    del z
    agg_s = time.perf_counter() - t
    rss_before = _status("VmRSS")
    reset = _reset_peak()
    t = time.perf_counter()
    curves = bon_curves(pidx, aggs, gold)
    cold_s = time.perf_counter() - t
    bon_hwm = _status("VmHWM") if reset else float("nan")
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        bon_curves(pidx, aggs, gold)
        warm.append(time.perf_counter() - t)
    return {
        "prompts": P, "candidates": N, "members": K, "aggregations": list(METHODS),
        "grid": {"all_n": curves.all_n, "points": len(curves.n), "n_first": curves.n[:12].tolist(),
                 "n_max": curves.n_max},
        "generate_s": gen_s, "standardize_aggregate_s": agg_s,
        "bon_cold_s": cold_s, "bon_warm_s": warm, "bon_best_s": min([cold_s] + warm),
        "path_s": agg_s + min([cold_s] + warm),
        "rss_after_imports_mb": rss_imports, "inputs_mb": inputs_mb,
        "aggregations_mb": sum(a.nbytes for a in aggs.values()) / 2**20,
        "rss_before_bon_mb": rss_before, "peak_rss_during_bon_mb": bon_hwm,
        "bon_working_set_mb": bon_hwm - rss_before,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_gain": curves.final_gain(), "best_n": curves.best_n(),
    }


def naive_curve(proxy_pn: np.ndarray, gold_pn: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """For each n: its weight column from gammaln; for each prompt: argsort, gather, dot (a Python loop)."""
    from scipy.special import gammaln

    P, N = proxy_pn.shape
    i = np.arange(1, N + 1, dtype=np.float64)
    out = np.empty(len(ns))
    for k, n in enumerate(ns):
        w = np.zeros(N)
        ii = i[n - 1:]
        w[n - 1:] = np.exp(gammaln(ii) - gammaln(n) - gammaln(ii - n + 1)
                           - (gammaln(N + 1) - gammaln(n + 1) - gammaln(N - n + 1)))
        acc = 0.0
        for p in range(P):
            acc += float(w @ gold_pn[p][np.argsort(proxy_pn[p])])
        out[k] = acc / P
    return out


def child_side_by_side(P: int, N: int, K: int, naive_prompts: int, repeats: int) -> dict:
    """Case c: default log grid vs all-n (same n) vs the naive loop."""
    from embrm.evaluation._aggregate import aggregate_all, standardize
    from embrm.evaluation._bon import bon_curves

    pidx, scores, gold = make_scores(P, N, K, seed=1, dtype=np.float64)
    aggs = aggregate_all(standardize(scores), METHODS)
    del scores

    def best(fn):
        fn()  # warm-up (weights cached, pages touched)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t)
        return out, min(ts)

    grid_c, grid_s = best(lambda: bon_curves(pidx, aggs, gold))
    grid64_c, grid64_s = best(lambda: bon_curves(pidx, aggs, gold, dtype=np.float64))
    all_c, all_s = best(lambda: bon_curves(pidx, aggs, gold, dtype=np.float64, n_grid="all"))
    pos = all_c.index(grid64_c.n)
    diff_all = max(float(np.max(np.abs(getattr(grid64_c, f) - getattr(all_c, f)[..., pos])))
                   for f in ("gold", "proxy", "percentile", "random", "oracle"))
    diff_32 = float(np.max(np.abs(grid_c.gold - grid64_c.gold)) / np.max(np.abs(grid64_c.gold)))

    bp = min(naive_prompts, P)
    ns = grid64_c.n
    t = time.perf_counter()
    naive = np.stack([naive_curve(aggs[m][: bp * N].reshape(bp, N), gold[: bp * N].reshape(bp, N), ns)
                      for m in METHODS])
    naive_sub_s = time.perf_counter() - t
    naive_s = naive_sub_s * P / bp
    sub = bon_curves(pidx[: bp * N], {m: aggs[m][: bp * N] for m in METHODS}, gold[: bp * N], dtype=np.float64)
    diff_naive = float(np.max(np.abs(sub.gold - naive)))
    # ties in the float64 proxies would make the naive (tie-order dependent) loop differ: count them
    ties = sum(int(np.count_nonzero(np.diff(np.sort(aggs[m].reshape(P, N), axis=1), axis=1) == 0)) for m in METHODS)
    return {
        "prompts": P, "candidates": N, "members": K, "aggregations": list(METHODS),
        "grid": {"points": len(ns), "n": ns.tolist()},
        "grid_float32_s": grid_s, "grid_float64_s": grid64_s, "all_n_float64_s": all_s,
        "all_n_vs_grid_max_abs_diff": diff_all,
        "grid_float32_vs_float64_max_rel_diff_gold": diff_32,
        "naive_measured": {"prompts": bp, "n_values": len(ns), "aggregations": len(METHODS),
                           "iterations": bp * len(ns) * len(METHODS), "seconds": naive_sub_s},
        "naive_s_extrapolated": naive_s, "naive_vs_embrm_max_abs_diff_gold": diff_naive,
        "tied_adjacent_proxies": ties,
        "speedup_grid_vs_all_n": all_s / grid64_s,
        "speedup_grid_vs_naive": naive_s / grid64_s,
        "speedup_grid_float32_vs_naive": naive_s / grid_s,
    }


def _noise_aggs(P: int, N: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gold = rng.standard_normal(P * N, dtype=np.float32)
    aggs = {m: gold + rng.standard_normal(P * N, dtype=np.float32) * np.float32(1 + j / 5)
            for j, m in enumerate(METHODS)}
    return np.repeat(np.arange(P, dtype=np.int32), N), aggs, gold


def _best_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def child_all_n_limit(sizes: list, cells: int, repeats: int) -> dict:
    """Seconds of bon_curves all-n vs the log grid at about ``cells`` (prompts x candidates) per pool size."""
    from embrm.evaluation._bon import bon_curves, log_grid

    out = []
    for N in sizes:
        P = max(1, cells // N)
        pidx, aggs, gold = _noise_aggs(P, N)
        args = (pidx, aggs, gold)
        t_log = _best_time(lambda a=args: bon_curves(*a, n_grid="log"), repeats)
        t_all = _best_time(lambda a=args: bon_curves(*a, n_grid="all"), repeats)
        out.append({"candidates": N, "prompts": P, "log_grid_points": len(log_grid(N)), "log_s": t_log,
                    "all_s": t_all, "all_over_log": t_all / t_log,
                    "all_n_weights_mb": N * N * 8 / 2**20})
    return {"rows": out}


def child_knob(shapes: list, knob: str, values: list, repeats: int) -> dict:
    """Seconds of bon_curves (default grid) per value of a module constant of embrm.evaluation._bon, on each shape."""
    from embrm.evaluation import _bon as bon

    out = []
    for P, N in shapes:
        pidx, aggs, gold = _noise_aggs(P, N)
        row = {"prompts": P, "candidates": N}
        for v in values:
            setattr(bon, knob, v)
            row[str(v)] = _best_time(lambda a=(pidx, aggs, gold): bon.bon_curves(*a), repeats)
        out.append(row)
    return {"knob": knob, "rows": out}


CHILDREN = {"path": child_path, "side_by_side": child_side_by_side, "all_n_limit": child_all_n_limit,
            "knob": child_knob}


# ----------------------------------------------------------------------------- parent

def run_child(kind: str, **kw) -> dict:
    """Run one case in a fresh interpreter; its last stdout line is its JSON result (plus its max RSS)."""
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(kw)], capture_output=True, text=True,
                       check=False)
    if p.returncode != 0:
        raise SystemExit(f"child {kind} failed:\n{p.stderr[-4000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    # RUSAGE_CHILDREN's maxrss is the max over finished children: exact for this one when it is the largest so far
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res["child_maxrss_mb"] = after / 1024 if after > before else res.get("process_peak_rss_mb")
    res["child_wall_s"] = time.perf_counter() - t
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    ap.add_argument("--no-sweeps", action="store_true", help="skip the ALL_N_LIMIT / CHUNK_BYTES / threads sweeps")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--naive-prompts", type=int, default=10, help="prompts the naive loop is timed on (case c)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bon_scale.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, kw = args.child
        print(json.dumps(CHILDREN[kind](**json.loads(kw))))
        return None

    from embrm.core._hardware import cpu_flags, cpuinfo
    from embrm.evaluation._bon import ALL_N_LIMIT, CHUNK_BYTES, GRID_POINTS, SORT_THREADS

    q = args.quick
    shape_a = (100, 12_500) if q else (1000, 12_500)
    shape_b = (10, 60_000) if q else (100, 60_000)
    shape_c = (20, 4000) if q else (100, 4000)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = {"benchmark": "bon_scale",
           "command": "python benchmarks/bench_bon_scale.py" + ("".join(" " + a for a in (argv or sys.argv[1:]))),
           "constants": {"ALL_N_LIMIT": ALL_N_LIMIT, "GRID_POINTS": GRID_POINTS, "CHUNK_BYTES": CHUNK_BYTES,
                         "SORT_THREADS": SORT_THREADS},
           "cases": {}, "sweeps": {}}
    print("case a ...", flush=True)
    res["cases"]["a"] = run_child("path", P=shape_a[0], N=shape_a[1], K=10, repeats=args.repeats)
    print("case b ...", flush=True)
    res["cases"]["b"] = run_child("path", P=shape_b[0], N=shape_b[1], K=10, repeats=args.repeats)
    print("case c ...", flush=True)
    res["cases"]["c"] = run_child("side_by_side", P=shape_c[0], N=shape_c[1], K=10,
                                  naive_prompts=args.naive_prompts, repeats=max(2, args.repeats))
    if not args.no_sweeps:
        cells = 200_000 if q else 2_000_000
        print("sweep ALL_N_LIMIT ...", flush=True)
        res["sweeps"]["all_n_limit"] = run_child("all_n_limit", sizes=[256, 512, 1024, 2048, 4096], cells=cells,
                                                 repeats=2)
        shapes = [[1000, 500], [20, 12_500], [3, 60_000]] if q else [[10_000, 500], [200, 12_500], [30, 60_000]]
        print("sweep CHUNK_BYTES ...", flush=True)
        res["sweeps"]["chunk_budget"] = run_child("knob", shapes=shapes, knob="CHUNK_BYTES",
                                                  values=[8 << 20, 32 << 20, 128 << 20, 512 << 20], repeats=2)
        print("sweep SORT_THREADS ...", flush=True)
        res["sweeps"]["threads"] = run_child("knob", shapes=shapes, knob="SORT_THREADS", values=[1, 2], repeats=2)
    a, b, c = res["cases"]["a"], res["cases"]["b"], res["cases"]["c"]
    res["ratios"] = {
        "c_speedup_grid_vs_all_n": c["speedup_grid_vs_all_n"],
        "c_speedup_grid_vs_naive": c["speedup_grid_vs_naive"],
        "c_speedup_grid_float32_vs_naive": c["speedup_grid_float32_vs_naive"],
        "a_bon_s_per_million_cells_per_aggregation": a["bon_best_s"] / (a["prompts"] * a["candidates"] / 1e6) / 6,
        "b_bon_s_per_million_cells_per_aggregation": b["bon_best_s"] / (b["prompts"] * b["candidates"] / 1e6) / 6,
    }
    info = cpuinfo()
    res["machine"] = {"cpus": os.cpu_count(), "model": info.get("model name"), "vendor": info.get("vendor_id"),
                      "cpu_flags": sorted(cpu_flags()), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "python": platform.python_version(),
                      "numpy": np.__version__, "platform": platform.platform()}
    res["total_s"] = time.perf_counter() - t0

    def mb(x):
        return f"{x:,.0f} MB"

    rows = [("case", "shape (prompts x candidates)", "grid", "std+agg s", "bon cold / best s", "path s",
             "peak RSS (imports)", "bon working set", "inputs")]
    for key, r in (("a", a), ("b", b)):
        rows.append((key, f"{r['prompts']:,} x {r['candidates']:,} x 10 x 6",
                     f"{r['grid']['points']} n (log)" if not r["grid"]["all_n"] else "all n",
                     f"{r['standardize_aggregate_s']:.2f}", f"{r['bon_cold_s']:.2f} / {r['bon_best_s']:.2f}",
                     f"{r['path_s']:.2f}", f"{mb(r['process_peak_rss_mb'])} ({mb(r['rss_after_imports_mb'])})",
                     mb(r["bon_working_set_mb"]),
                     mb(r["inputs_mb"])))
    w = [max(len(str(x[i])) for x in rows) for i in range(len(rows[0]))]
    print(f"\nBest-of-n at scale (default grid: ~{GRID_POINTS} log-spaced n; CHUNK_BYTES {CHUNK_BYTES >> 20} MB, "
          f"{SORT_THREADS} sort threads)")
    for x in rows:
        print("  " + "  ".join(str(v).ljust(w[i]) for i, v in enumerate(x)))
    print(f"\n  c: {c['prompts']} x {c['candidates']:,} x 6 aggregations, {c['grid']['points']} grid n")
    naive_x = c["prompts"] // c["naive_measured"]["prompts"]
    side = [
        ("bon_curves, log grid, float32 (default)", f"{c['grid_float32_s']:.3f} s"),
        ("bon_curves, log grid, float64", f"{c['grid_float64_s']:.3f} s"),
        ("bon_curves, all n (float64), read at the grid",
         f"{c['all_n_float64_s']:.3f} s   max |diff| vs grid {c['all_n_vs_grid_max_abs_diff']:.1e}"),
        (f"naive per-n loop (extrapolated x{naive_x} from {c['naive_measured']['prompts']} prompts)",
         f"{c['naive_s_extrapolated']:.1f} s   max |diff| vs embrm {c['naive_vs_embrm_max_abs_diff_gold']:.1e}"),
        ("speed-up: grid vs all n / grid vs naive (float64)",
         f"{c['speedup_grid_vs_all_n']:.1f}x / {c['speedup_grid_vs_naive']:.0f}x"),
    ]
    ww = max(len(k) for k, _ in side)
    for k, v in side:
        print(f"    {k:<{ww}}  {v}")
    if res["sweeps"]:
        print(f"\n  ALL_N_LIMIT sweep (all n vs log grid, ~{cells:,} cells):")
        for r in res["sweeps"]["all_n_limit"]["rows"]:
            print(f"    N={r['candidates']:>5} P={r['prompts']:>5}: log {r['log_s']:.3f} s, all {r['all_s']:.3f} s "
                  f"(x{r['all_over_log']:.2f}), all-n weights {r['all_n_weights_mb']:.0f} MB")
        for name in ("chunk_budget", "threads"):
            sw = res["sweeps"][name]
            print(f"\n  {sw['knob']} sweep (seconds, best of 2):")
            for r in sw["rows"]:
                vals = "  ".join(f"{(int(k) >> 20) if name == 'chunk_budget' else k}"
                                 f"{' MB' if name == 'chunk_budget' else ' thr'}: {v:.3f}"
                                 for k, v in r.items() if k not in ("prompts", "candidates"))
                print(f"    {r['prompts']:>6} x {r['candidates']:>6}: {vals}")
    print(f"\n  load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} ({os.cpu_count()} cpus)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
