"""Benchmark: Sun et al.'s single setup at its own scale, end to end, out of core, on a CPU.

The data is Sun et al.'s release layout (embrm.data.write_sun_layout: `embd_*_{train,test}.npy` of
(40,000, 10, 2,048) and (2,000, 500, 2,048), `reward_*` of (P, R, 1); a planted gold with a known optimum),
written once per dtype (float32: 11.5 GB; float16: 5.7 GB) and reused. Every stage runs in a fresh process so its
peak memory is its own (ru_maxrss: resident pages, memory-mapped file pages included):

    load      load_dataset(declaration): shapes, dtypes, every value finite, each file's SHA-256 (cold: computed;
              warm: remembered by size and mtime)
    fit       10,000 labelled pairs on the training split (Sun's BT annotator), K = 10 members of each learner
              (MLP 2048-1024-512-1 as Sun's, LightGBM, linear) on the arrays left on disk (rows gathered for
              the pairs only), and the SAME fit on the training split materialised in memory (the baseline)
    score     every member on all test responses (2,000 x 500 = 1,000,000), streamed in blocks; MLP throughput
              against a plain torch float32 matmul of the first layer's shape measured in the same process
    bon       every aggregation (mean, min, median, uwo, lcb, conformal, single) and exact Best-of-n curves of the
              scored test split, then Sun et al.'s numbers (random-subsample Best-of-N, quantile, accuracy, Spearman)
    cli       at --cli-scale (1/10 by default): `embrm fit` and `embrm bon-sim` as a user runs them, peak memory of
              each process

    EMBRM_THREADS=2 python benchmarks/bench_sun_scale.py        # full size, float32 and float16 (~50 min, 2 cores)
    EMBRM_THREADS=2 python benchmarks/bench_sun_scale.py --dtypes float32 --learners mlp   # the MLP only (~20 min)
    python benchmarks/bench_sun_scale.py --scale 0.01 --dim 256 --k 3 --n-pairs 2000        # a smoke run (2 min)

EMBRM_THREADS sets the fits' and scoring's threads (embrm's default is 1, for bit-identical results everywhere).

Writes benchmarks/results/sun_scale.json (or --out) with the machine, each stage's seconds and peak RSS, and the
ratios the claims rest on (fit on disk / fit in memory, scoring / matmul throughput).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUN_MLP = {"hidden": (1024, 512)}  # Sun et al.'s MLP; Adam 1e-3, up to 30 epochs, patience 3 (embrm's defaults)
LEARNERS = {"mlp": SUN_MLP, "lgbm": None, "linear": {}}
AGGREGATIONS = ("mean", "min", "median", "uwo", "lcb", "conformal", "single")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- stages (each in its own process)

def stage_load(decl: str, state_dir: str) -> dict:
    os.environ["EMBRM_STATE_DIR"] = state_dir
    from embrm.data import load_dataset

    out = {}
    for run in ("cold", "warm"):
        t = time.perf_counter()
        ds = load_dataset(decl)
        out[f"{run}_seconds"] = time.perf_counter() - t
    out.update(responses=len(ds.responses), rows=repr(ds.vectors), peak_mb=peak_mb())
    return out


def _learner(head: str):
    from embrm.pipeline import DEFAULT_LEARNERS, Learner

    params = LEARNERS[head]
    return DEFAULT_LEARNERS[head] if params is None else Learner(head, params=tuple(params.items()))


def stage_fit(decl: str, state_dir: str, head: str, where: str, k: int, n_pairs: int, model_dir: str) -> dict:
    """One learner's K-member fit on 10,000 pairs, reading the arrays from disk or from memory."""
    os.environ["EMBRM_STATE_DIR"] = state_dir
    import numpy as np
    import polars as pl

    from embrm.data import load_dataset
    from embrm.pipeline import LabelConfig, fit_pairs, split, training_pairs
    from embrm.rewards import save_ensemble

    ds = load_dataset(decl)
    labels = LabelConfig(n_pairs=n_pairs).resolved(ds)
    pairs = training_pairs(ds, labels, split(ds, labels, 0.2, 0).train, seed=0)
    X = ds.vectors
    t_load = 0.0
    if where == "memory":  # the baseline: the training split as one float32 matrix in memory
        ds = ds.filter(pl.col("split") == "train")
        t = time.perf_counter()
        X = np.asarray(ds.vectors)
        t_load = time.perf_counter() - t
    t = time.perf_counter()
    ens = fit_pairs(ds, X, pairs, _learner(head), k=k, seed=0)
    seconds = time.perf_counter() - t
    if model_dir:
        save_ensemble(model_dir, ens, {"head": head}, overwrite=True)
    val = [v for v in ens.info.get("val_accuracy", []) if v is not None]
    return {"seconds": seconds, "materialise_seconds": t_load, "val_accuracy": float(np.mean(val)) if val else None,
            "dtype": ens.info.get("dtype"), "peak_mb": peak_mb()}


def stage_score(decl: str, state_dir: str, head: str, model_dir: str, scores_path: str) -> dict:
    """Every member on every test response, streamed; the MLP's achieved GFLOP/s vs a plain matmul's."""
    os.environ["EMBRM_STATE_DIR"] = state_dir
    import numpy as np
    import polars as pl
    import torch
    from bench_fit import matmul_peak

    from embrm.core import fit_threads
    from embrm.data import load_dataset
    from embrm.rewards import load_ensemble

    ds = load_dataset(decl).filter(pl.col("split") == "test")
    ens, _ = load_ensemble(model_dir)
    with fit_threads():
        t = time.perf_counter()
        scores = ens.predict(ds.vectors, progress=None)
        seconds = time.perf_counter() - t
        n, d = ds.vectors.shape
        out = {"rows": n, "seconds": seconds, "rows_per_second": n / seconds, "threads": torch.get_num_threads()}
        if head == "mlp":
            sizes = [d, *SUN_MLP["hidden"], 1]
            flops = sum(2.0 * n * a * b for a, b in zip(sizes[:-1], sizes[1:])) * ens.k
            peak = matmul_peak(torch.float32, 8192, d, sizes[1] * ens.k, min_seconds=3.0)
            out.update(gflops=flops / seconds / 1e9, matmul_gflops=peak, vs_matmul=flops / seconds / 1e9 / peak)
    np.save(scores_path, scores)
    out["peak_mb"] = peak_mb()
    return out


def stage_bon(decl: str, state_dir: str, scores_path: str) -> dict:
    """Every aggregation and exact Best-of-n on the scored test split; then Sun et al.'s numbers."""
    os.environ["EMBRM_STATE_DIR"] = state_dir
    import numpy as np
    import polars as pl

    from embrm.data import load_dataset
    from embrm.evaluation import (
        best_of_n,
        conformal_proxy,
        ensemble_proxies,
        sun_metrics,
    )

    ds = load_dataset(decl).filter(pl.col("split") == "test")
    scores = np.load(scores_path)
    rows = ds.usable
    t = time.perf_counter()
    proxies = ensemble_proxies(scores, rows, [a for a in AGGREGATIONS if a != "conformal"])
    proxies["conformal"] = conformal_proxy(ds, scores, rows, rows, coverage=0.9, seed=0).bound
    result = best_of_n(ds.responses, proxies, rows, texts=False)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    sun = sun_metrics(ds.responses["prompt_id"].to_numpy(), ds.responses["gold"].to_numpy(),
                      {"mean": scores.mean(1), "min": scores.min(1), "first": scores[:, 0]}, rows)
    sun_seconds = time.perf_counter() - t
    gain = {name: s.gain_at_n_max for name, s in result.proxies.items()}
    return {"seconds": seconds, "sun_seconds": sun_seconds, "n_max": result.n_max, "prompts": result.n_prompts,
            "gain_at_n_max": gain, "sun_accuracy_mean": next(r["value"] for r in sun.rows
                                                             if r["reward"] == "mean" and r["metric"] == "accuracy"),
            "peak_mb": peak_mb()}


STAGES = {"load": stage_load, "fit": stage_fit, "score": stage_score, "bon": stage_bon}


# ----------------------------------------------------------------------------- driver

def child(stage: str, **kwargs) -> dict:
    """Run one stage in a fresh interpreter; its JSON result (or the error it printed)."""
    cmd = [sys.executable, __file__, "--child", stage, "--child-args", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_peak(args: list[str]) -> dict:
    """An embrm command as a user runs it: seconds and that process's own peak RSS (os.wait4's rusage)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's embrm
        proc = subprocess.Popen([sys.executable, "-m", "embrm", *args], stdout=subprocess.DEVNULL, stderr=err,
                                env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        err.seek(0)
        lines = err.read().strip().splitlines()
    out = {"command": "embrm " + " ".join(args), "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024}
    if os.waitstatus_to_exitcode(status) != 0:
        out["error"] = (lines or ["?"])[-1]
    return out


def machine() -> dict:
    from embrm.core import fast_bf16
    from embrm.core._hardware import cpu_flags, cpuinfo

    flags = cpu_flags()
    return {"cpu_count": os.cpu_count(), "cpu_model": cpuinfo().get("model name", platform.processor()),
            "platform": platform.platform(), "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            / 2**30, **{f: f in flags for f in ("amx_bf16", "avx512_bf16", "avx2")}, "fast_bf16": fast_bf16(),
            "load_average_1min": os.getloadavg()[0]}


def sizes(scale: float) -> dict:
    return {"train_prompts": max(2, round(40_000 * scale)), "test_prompts": max(2, round(2_000 * scale))}


def run_dtype(dtype: str, args, work: Path) -> dict:
    from embrm.data import write_sun_layout

    t = time.perf_counter()
    layout = write_sun_layout(work / f"sun-{dtype}-{args.scale:g}", dtype=dtype, dim=args.dim, progress=None,
                              **sizes(args.scale))
    decl, state = str(layout.declaration), str(work / f"state-{dtype}-{args.scale:g}")
    out = {"dtype": dtype, "generate_seconds": time.perf_counter() - t, "layout": layout.params,
           "bytes": sum(p.stat().st_size for p in (layout.train_embeddings, layout.test_embeddings))}
    if Path(state).exists():  # a cold load computes the digests again
        for f in Path(state).glob("*"):
            f.unlink()
    out["load"] = child("load", decl=decl, state_dir=state)
    print(f"[{dtype}] load: {out['load']}", flush=True)
    out["fit"], out["score"], out["bon"] = {}, {}, {}
    for head in args.learners:
        model_dir = str(work / f"model-{dtype}-{head}")
        for where in ("disk", "memory"):
            out["fit"][f"{head}/{where}"] = child("fit", decl=decl, state_dir=state, head=head, where=where, k=args.k,
                                                  n_pairs=args.n_pairs, model_dir=model_dir if where == "disk" else "")
            print(f"[{dtype}] fit {head} ({where}): {out['fit'][f'{head}/{where}']}", flush=True)
        disk, mem = out["fit"][f"{head}/disk"], out["fit"][f"{head}/memory"]
        if "seconds" in disk and "seconds" in mem:
            out["fit"][f"{head}/disk_vs_memory"] = disk["seconds"] / mem["seconds"]
        scores = str(work / f"scores-{dtype}-{head}.npy")
        out["score"][head] = child("score", decl=decl, state_dir=state, head=head, model_dir=model_dir,
                                   scores_path=scores)
        print(f"[{dtype}] score {head}: {out['score'][head]}", flush=True)
        out["bon"][head] = child("bon", decl=decl, state_dir=state, scores_path=scores)
        print(f"[{dtype}] bon {head}: {out['bon'][head]}", flush=True)
    return out


def run_cli(args, work: Path) -> dict:
    from embrm.data import write_sun_layout

    layout = write_sun_layout(work / f"sun-float32-{args.cli_scale:g}", dim=args.dim, **sizes(args.cli_scale))
    model = work / "cli-model"
    os.environ["EMBRM_STATE_DIR"] = str(work / "state-cli")
    fit = cli_peak(["fit", str(layout.declaration), "--head", "mlp", "--ensemble", str(args.k), "--n-pairs",
                    str(args.n_pairs), "--out", str(model), "--overwrite"])
    print(f"[cli] {fit}", flush=True)
    bon = cli_peak(["bon-sim", str(layout.declaration), "--model", str(model), "--sun-metrics"])
    print(f"[cli] {bon}", flush=True)
    return {"scale": args.cli_scale, "fit": fit, "bon_sim": bon}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="share of Sun's prompts (1 = 40,000 train, 2,000 test)")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-pairs", type=int, default=10_000)
    ap.add_argument("--learners", default="mlp,lgbm,linear")
    ap.add_argument("--cli-scale", type=float, default=0.1, help="0 skips the CLI section")
    ap.add_argument("--work", default=os.environ.get("EMBRM_BENCH_DIR", "/tmp/embrm-sun-bench"),
                    help="where the arrays are written (and reused)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sun_scale.json"))
    ap.add_argument("--child")
    ap.add_argument("--child-args")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(STAGES[args.child](**json.loads(args.child_args))))
        return
    args.learners = args.learners.split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "sun_scale", "command": " ".join(["python", *sys.argv]), "machine": machine(),
              "embrm_threads": os.environ.get("EMBRM_THREADS", "1 (default)"),
              "config": {"scale": args.scale, "dim": args.dim, "k": args.k, "n_pairs": args.n_pairs,
                         "learners": args.learners, **sizes(args.scale)},
              "note": "each stage in its own process; peak_mb is ru_maxrss (resident pages incl. mapped file "
                      "pages); ratios are within this run", "runs": []}
    for dtype in args.dtypes.split(","):
        result["runs"].append(run_dtype(dtype, args, work))
    if args.cli_scale:
        result["cli"] = run_cli(args, work)
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print_table(result)
    print(f"-> {args.out}")


def print_table(result: dict) -> None:
    print(f"\n{'dtype':8} {'stage':22} {'seconds':>9} {'peak MB':>8}  notes")
    for run in result["runs"]:
        rows = [("load (cold)", run["load"].get("cold_seconds"), run["load"].get("peak_mb"), ""),
                ("load (warm)", run["load"].get("warm_seconds"), None, "")]
        for key, f in run["fit"].items():
            if isinstance(f, dict):
                rows.append((f"fit {key}", f.get("seconds"), f.get("peak_mb"), f.get("error", "")))
            else:
                rows.append((f"fit {key}", None, None, f"ratio {f:.2f}"))
        for head, s in run["score"].items():
            note = f"{s['vs_matmul']:.0%} of matmul" if "vs_matmul" in s else s.get("error", "")
            rows.append((f"score {head}", s.get("seconds"), s.get("peak_mb"), note))
        for head, b in run["bon"].items():
            rows.append((f"bon {head}", b.get("seconds"), b.get("peak_mb"), b.get("error", "")))
        for name, sec, mb, note in rows:
            s = f"{sec:9.1f}" if sec is not None else f"{'':9}"
            m = f"{mb:8.0f}" if mb is not None else f"{'':8}"
            print(f"{run['dtype']:8} {name:22} {s} {m}  {note}")
    for name, c in (result.get("cli") or {}).items():
        if isinstance(c, dict):
            print(f"{'cli':8} {name:22} {c['seconds']:9.1f} {c['peak_mb'] or 0:8.0f}  {c.get('error', '')}")


if __name__ == "__main__":
    main()
