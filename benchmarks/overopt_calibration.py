"""Calibration: does Best-of-n on LEARNED reward ensembles over-optimise in embrm.data._overopt's setting, and what do the
aggregations do?

    python benchmarks/overopt_calibration.py           # 3 seeds; linear + MLP; labels 250/1000/4000 at K = 5,
                                                       # K = 1/2/5/10 at 1,000 labels (~5 min on 2 cores)
    python benchmarks/overopt_calibration.py --quick   # 1 seed, linear, 1,000 labels, K = 5 (~15 s)

Every run is the real pipeline: ``overopt_dataset(seed=s)`` (100 prompts x 2,000 candidates, dim 32, the module's
default gold), then ``run_experiment`` with ``Protocol(learner, LabelConfig(beta=10, n_pairs=L), k=K, seed=s)``:
simulated BT labels on the training prompts (80 %), K members fitted by embrm, Best-of-n on the 20 held-out prompts
(``result.evaluation.bon["pool"]``). Per aggregation (mean, min, median, uwo, lcb, single; warm for the MLP) and
run: the n where the gold curve peaks, the gold there, the gold at n = N = 2,000, and the drop (peak - at N; >= 0
by construction, so a drop of a few tenths is within the noise of 20 prompts' single picks: compare with the
seed-averaged curve's drop and the sd over seeds). Also the mean proxy's pick at n = N: its h = v . x and the
share of picks past the threshold / past the gold's peak along v, and (linear) the members' w.v / w.u.

Memory: run_experiment's held-out pairwise metrics self-join every held-out prompt's pool
(embrm.evaluation._heldout.gold_order_pairs, N^2 rows per prompt before subsampling): ~6 GB peak at 20 x 2,000; runs are
sequential. Prints a table and writes benchmarks/results/overopt_calibration.json (or --out), with the seed-averaged curves.
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

from embrm.data._overopt import ideal_proxy_curve, overopt_dataset, overopt_truth
from embrm.pipeline._protocol import DEFAULT_LEARNERS, LabelConfig, Protocol
from embrm.pipeline._steps import proxies, run_experiment

SHOWN = ("mean", "min", "median", "uwo", "lcb", "warm", "single")


def picks_of(ds, X, result, truth) -> dict:
    """Per aggregation: the held-out prompts' top picks at n = N (whole pools): mean h, share past t / peak_h."""
    fitted = result.fit
    scored = proxies(ds, X, fitted.ensemble, fitted.scores, fitted.split, fitted.protocol)
    test = np.isin(ds.responses["prompt_id"].to_numpy(), fitted.split.test)
    N = truth.n_candidates
    h = truth.parts(X[test])["h"].reshape(-1, N)  # rows are grouped by prompt, equal pools
    out = {}
    for name in SHOWN:
        if name not in scored:
            continue
        top = np.argmax(np.asarray(scored[name])[test].reshape(-1, N), axis=1)
        hp = h[np.arange(len(h)), top]
        out[name] = {"h": float(hp.mean()), "past_threshold": float(np.mean(hp > truth.threshold)),
                     "past_peak": float(np.mean(hp > truth.peak_h))}
    return out


def one_run(ds, X, truth, head: str, n_pairs: int, k: int, seed: int) -> dict:
    protocol = Protocol(DEFAULT_LEARNERS[head], LabelConfig(beta=10.0, n_pairs=n_pairs), k=k, seed=seed)
    t0 = time.perf_counter()
    result = run_experiment(ds, X, protocol, progress=False)
    seconds = time.perf_counter() - t0
    bon = result.evaluation.bon["pool"]
    c = bon.curves
    run = {"head": head, "n_pairs": n_pairs, "k": k, "seed": seed, "seconds": round(seconds, 2),
           "accuracy": result.evaluation.metrics.accuracy, "label_accuracy": result.fit.label_accuracy,
           "random": bon.random_at_n_max, "oracle": bon.oracle_at_n_max, "n": c.n.tolist(), "aggregations": {},
           "length_effect": result.evaluation.length_effect}
    for j, name in enumerate(c.aggregations):
        if name not in SHOWN:
            continue
        g = np.asarray(c.gold[j], np.float64)
        best = int(np.nanargmax(g))
        run["aggregations"][name] = {"peak_n": int(c.n[best]), "gold_peak": float(g[best]), "gold_N": float(g[-1]),
                                     "drop": float(g[best] - g[-1]), "curve": g.tolist()}
    for name, p in picks_of(ds, X, result, truth).items():
        run["aggregations"][name]["pick_at_N"] = p
    ens = result.fit.ensemble
    if ens.head == "linear":
        W = np.stack([m.coef_ for m in ens.members], 1).astype(np.float64)
        run["w_v_over_w_u"] = (truth.v @ W / (truth.u @ W)).tolist()
    return run


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (head, n_pairs, k): per aggregation, drop / gold at peak / at N over seeds, and the
    seed-averaged curve's peak and drop."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["head"], r["n_pairs"], r["k"]), []).append(r)
    rows = []
    for (head, n_pairs, k), rs in groups.items():
        row = {"head": head, "n_pairs": n_pairs, "k": k, "seeds": [r["seed"] for r in rs],
               "accuracy": float(np.mean([r["accuracy"] for r in rs])),
               "random": float(np.mean([r["random"] for r in rs])), "oracle": float(np.mean([r["oracle"] for r in rs])),
               "n": rs[0]["n"], "aggregations": {}}
        for name in SHOWN:
            if name not in rs[0]["aggregations"]:
                continue
            a = [r["aggregations"][name] for r in rs]
            drops = np.array([x["drop"] for x in a])
            vs_mean = np.array([x["gold_N"] - r["aggregations"]["mean"]["gold_N"] for x, r in zip(a, rs)])
            curve = np.mean([x["curve"] for x in a], axis=0)
            best = int(np.argmax(curve))
            row["aggregations"][name] = {
                "drop_mean": float(drops.mean()), "drop_sd": float(drops.std(ddof=1)) if len(drops) > 1 else None,
                "drops": drops.tolist(), "peak_n": [x["peak_n"] for x in a],
                "vs_mean_at_N": float(vs_mean.mean()),
                "vs_mean_at_N_sd": float(vs_mean.std(ddof=1)) if len(vs_mean) > 1 else None,
                "vs_mean_at_N_by_seed": vs_mean.tolist(),
                "gold_peak_mean": float(np.mean([x["gold_peak"] for x in a])),
                "gold_N_mean": float(np.mean([x["gold_N"] for x in a])),
                "avg_curve_peak_n": int(rs[0]["n"][best]), "avg_curve_peak": float(curve[best]),
                "avg_curve_at_N": float(curve[-1]), "avg_curve_drop": float(curve[best] - curve[-1]),
                "pick_h_mean": float(np.mean([x["pick_at_N"]["h"] for x in a])),
                "pick_past_peak_h": float(np.mean([x["pick_at_N"]["past_peak"] for x in a])),
                "avg_curve": curve.tolist()}
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("\nMEAN proxy (seed-averaged curve): peak n, gold at peak, gold at N; acc = held-out pairwise accuracy")
    print(f"{'head':6} {'labels':>6} {'K':>3} {'acc':>5} {'rand':>5} {'orac':>5} | {'peak n':>6} {'gold@pk':>7} "
          f"{'gold@N':>6} {'drop':>5} | {'pick h':>6} {'>peak':>5}")
    for r in rows:
        m = r["aggregations"]["mean"]
        print(f"{r['head']:6} {r['n_pairs']:>6} {r['k']:>3} {r['accuracy']:5.3f} {r['random']:5.2f} "
              f"{r['oracle']:5.2f} | {m['avg_curve_peak_n']:>6} {m['avg_curve_peak']:7.2f} {m['avg_curve_at_N']:6.2f} "
              f"{m['avg_curve_drop']:5.2f} | {m['pick_h_mean']:6.2f} {m['pick_past_peak_h']:5.2f}")
    print("\nDrop from each run's peak to n = N, mean ± sd over seeds  [gold at N, seed mean]")
    print(f"{'head':6} {'labels':>6} {'K':>3} | " + " | ".join(f"{a:>17}" for a in SHOWN))
    for r in rows:
        cells = []
        for a in SHOWN:
            x = r["aggregations"].get(a)
            if x is None:
                cells.append(f"{'-':>17}")
                continue
            sd = "" if x["drop_sd"] is None else f"±{x['drop_sd']:.2f}"
            cells.append(f"{x['drop_mean']:.2f}{sd:>6} [{x['gold_N_mean']:.2f}]".rjust(17))
        print(f"{r['head']:6} {r['n_pairs']:>6} {r['k']:>3} | " + " | ".join(cells))
    print("\nGold at n = N minus the MEAN's gold at n = N, paired by seed: mean ± sd over seeds (> 0: resists better)")
    print(f"{'head':6} {'labels':>6} {'K':>3} | " + " | ".join(f"{a:>11}" for a in SHOWN[1:]))
    for r in rows:
        cells = []
        for a in SHOWN[1:]:
            x = r["aggregations"].get(a)
            if x is None:
                cells.append(f"{'-':>11}")
                continue
            sd = "" if x["vs_mean_at_N_sd"] is None else f"±{x['vs_mean_at_N_sd']:.2f}"
            cells.append(f"{x['vs_mean_at_N']:+.2f}{sd:>6}".rjust(11))
        print(f"{r['head']:6} {r['n_pairs']:>6} {r['k']:>3} | " + " | ".join(cells))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--heads", nargs="+", default=["linear", "mlp"])
    ap.add_argument("--labels", type=int, nargs="+", default=[250, 1000, 4000], help="label counts at K = 5")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10], help="ensemble sizes at 1,000 labels")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overopt_calibration.json"))
    ap.add_argument("--reprint", action="store_true", help="re-summarise and print the runs already in --out")
    args = ap.parse_args(argv)
    if args.reprint:
        return reprint(Path(args.out))
    if args.quick:
        args.seeds, args.heads, args.labels, args.ks = [0], ["linear"], [1000], [5]
    configs = list(dict.fromkeys([(L, 5) for L in args.labels] + [(1000, k) for k in args.ks]))
    t_start = time.perf_counter()
    runs, truth = [], None
    for seed in args.seeds:
        t0 = time.perf_counter()
        ds, X = overopt_dataset(args.prompts, args.candidates, args.dim, seed=seed)
        truth = overopt_truth(args.prompts, args.candidates, args.dim, seed=seed)
        print(f"seed {seed}: {ds} in {time.perf_counter() - t0:.1f}s", flush=True)
        for head in args.heads:
            for n_pairs, k in configs:
                run = one_run(ds, X, truth, head, n_pairs, k, seed)
                m = run["aggregations"]["mean"]
                print(f"  {head:6} labels {n_pairs:>5} K {k:>2}: {run['seconds']:5.1f}s acc {run['accuracy']:.3f} "
                      f"mean peak n {m['peak_n']:>5} gold {m['gold_peak']:.2f} -> {m['gold_N']:.2f} at N", flush=True)
                runs.append(run)
        del ds, X
    rows = summarise(runs)
    print(f"\n{truth.describe()}")
    ideal = ideal_proxy_curve(truth, np.asarray(rows[0]["n"]))
    best = int(np.argmax(ideal))
    print(f"ideal linear proxy (u + hack v): gain peaks at n = {rows[0]['n'][best]} ({ideal[best]:.2f}), "
          f"{ideal[-1]:.2f} at n = {rows[0]['n'][-1]}")
    print_table(rows)
    total = time.perf_counter() - t_start
    print(f"\n{len(runs)} runs in {total:.0f}s")
    out = {"setting": {"prompts": args.prompts, "candidates": args.candidates, "dim": args.dim, "test_size": 0.2,
                       "labels": "simulated BT beta = 10 on the training prompts", "seeds": args.seeds,
                       "gold": {k: v for k, v in truth.to_dict().items() if k not in ("u", "v", "seed")},
                       "ideal_proxy_gain": {"n": rows[0]["n"], "gain": ideal.tolist()}},
           "summary": rows, "runs": runs,
           "seconds": round(total, 1), "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                    "python": platform.python_version()}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return out


def reprint(path: Path) -> dict:
    out = json.loads(path.read_text())
    out["summary"] = rows = summarise(out["runs"])
    s = out["setting"]
    print(f"{s['prompts']} prompts x {s['candidates']} candidates, dim {s['dim']}, seeds {s['seeds']}; gold {s['gold']}")
    ideal = out["setting"]["ideal_proxy_gain"]
    best = int(np.argmax(ideal["gain"]))
    print(f"ideal linear proxy (u + hack v): gain peaks at n = {ideal['n'][best]} ({ideal['gain'][best]:.2f}), "
          f"{ideal['gain'][-1]:.2f} at n = {ideal['n'][-1]}")
    print_table(rows)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"rewrote {path}")
    return out


if __name__ == "__main__":
    main()
