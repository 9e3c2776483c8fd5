"""Benchmark: embrm.rl's training loop on a CPU, the pool policy and the Gaussian policy, each against a baseline
measured in the same run.

    EMBRM_THREADS=1 .venv/bin/python benchmarks/bench_rl.py            # full size (~3 min on 2 cores)
    EMBRM_THREADS=1 .venv/bin/python benchmarks/bench_rl.py --quick    # a smoke run (~30 s)

pool      PoolPolicy over 1,000 prompts x pools of 500 candidates (uniform pi_ref), 1,000 GRPO steps with G = 16
          (embrm.rl.train with RLConfig's defaults otherwise: lr 0.05, 40 evaluation points), on synthetic rewards
          r ~ N(0, 1) and gold = r + N(0, 0.5^2). Target (the issue): within 15 s on this 2-core machine.
          Baseline: the step's elementwise floor, plain torch on the same (1000, 500) float32 tensor without
          autograd, sampling or update: ref + logits, log_softmax, exp (three passes a step cannot avoid).
gaussian  GaussianPolicy over 1,000 prompts of a generated overopt dataset (dim 32; each prompt's pi_ref N(mu_p, I)),
          its samples scored by a FITTED 10-member ensemble (embrm.pipeline.fit: 1,000 simulated BT labels), built as
          embrm.rl's experiment builds it (SampleReward + PromptReward, aggregation mean), G = 64, GRPO.
          Scored samples per second = steps x prompts x G / seconds of embrm.rl.train (with points = 2: the
          evaluations at step 0 and at the end, 256 fresh samples a prompt each, are inside the time; one
          evaluation's cost is reported on its own). Targets: >= 1,000,000 samples/s with linear members,
          >= 50,000 samples/s with MLP members (hidden 256, 128).
          Baselines: SampleReward alone on one batch of 256,000 samples (the scoring the loop cannot beat), and the
          generic path embrm.rl used before (ensemble.predict, float64 standardisation, aggregate_all); MLP scoring
          also as GFLOP/s against a plain float32 matmul of the second layer's shape.

Threads: every row runs inside embrm.core.fit_threads() ($EMBRM_THREADS, default 1, the package's policy); with
--also-threads N (default 2) each section is run again at N threads as a second row.
Writes benchmarks/results/rl.json (or --out): the machine, every timing, the targets and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fit import machine_facts, matmul_peak  # noqa: E402

from embrm.core import fit_threads, policy_threads, take_rows  # noqa: E402
from embrm.data import overopt_dataset  # noqa: E402
from embrm.evaluation import aggregate_all, rows_of  # noqa: E402
from embrm.pipeline import LabelConfig, Learner, Protocol, fit  # noqa: E402
from embrm.rl import GaussianPolicy, PoolPolicy, PoolSet, PromptReward, RLConfig, SampleReward, train  # noqa: E402
from embrm.rl._rewards import REFERENCE_SAMPLES  # noqa: E402

POOL_TARGET_S = 15.0
GAUSSIAN_TARGETS = {"linear": 1_000_000.0, "mlp": 50_000.0}
MLP_HIDDEN = (256, 128)


def warm_up() -> None:
    """First use of Adam(fused=True) imports torch's compiler stack (~2 s): once, before anything is timed."""
    r = np.zeros((2, 3))
    train(PoolPolicy(PoolSet(np.arange(2), np.full((2, 3), -np.log(3)), r, r, r)), RLConfig(steps=2, points=2))


# ----------------------------------------------------------------------------- pool policy

def pool_section(P: int, N: int, steps: int, group: int, threads: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    r = rng.standard_normal((P, N))
    gold = r + 0.5 * rng.standard_normal((P, N))
    ref = np.full((P, N), -np.log(N))
    config = RLConfig(algo="grpo", steps=steps, group=group)
    with fit_threads(threads):
        seconds, result = [], None
        for _ in range(repeats):
            policy = PoolPolicy(PoolSet(np.arange(P), ref, r, r, gold))
            t = time.perf_counter()
            at, history = train(policy, config)
            seconds.append(time.perf_counter() - t)
            result = history
        t = time.perf_counter()
        for _ in range(5):
            policy.evaluate()
        eval_s = (time.perf_counter() - t) / 5
        floor_s = elementwise_floor(P, N, steps)
    best = min(seconds)
    return {"section": "pool", "threads": threads, "prompts": P, "candidates": N, "steps": steps, "group": group,
            "evaluations": len(at), "seconds": seconds, "seconds_best": best, "ms_per_step": 1e3 * best / steps,
            "evaluation_ms": 1e3 * eval_s, "floor_seconds": floor_s, "floor_ms_per_step": 1e3 * floor_s / steps,
            "step_over_floor": best / floor_s, "target_seconds": POOL_TARGET_S * steps / 1000,
            "meets_target": best <= POOL_TARGET_S * steps / 1000,
            "end_kl": float(result[-1]["kl"].mean()), "end_gold": float(result[-1]["gold"].mean()),
            "oracle_gold": float(gold[np.arange(P), r.argmax(1)].mean()), "random_gold": float(gold.mean())}


def elementwise_floor(P: int, N: int, steps: int) -> float:
    """Seconds of `steps` x (ref + logits, log_softmax, exp) over (P, N) float32, best of 3."""
    ref = torch.full((P, N), -float(np.log(N)))
    theta = torch.randn(P, N) * 0.1
    best = float("inf")
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(steps):
                torch.log_softmax(ref + theta, dim=1).exp()
            best = min(best, time.perf_counter() - t)
    return best


# ----------------------------------------------------------------------------- Gaussian policy

def fitted(head: str, P: int, k: int, dim: int) -> dict:
    """A generated dataset of P prompts and a K-member ensemble fitted on it (not timed)."""
    ds, X = overopt_dataset(n_prompts=P, n_candidates=20, dim=dim, seed=0)
    params = {"hidden": list(MLP_HIDDEN)} if head == "mlp" else {}
    protocol = Protocol(Learner(head, params=params), LabelConfig("simulated", 10.0, None, 1000), k=k,
                        aggregations=("mean",))
    t = time.perf_counter()
    model = fit(ds, X, protocol, progress=False)
    fit_s = time.perf_counter() - t
    reference = rows_of(ds.responses, model.split.train) & ds.usable
    return {"ds": ds, "X": X, "model": model, "reference": reference, "protocol": protocol, "fit_s": fit_s}


def gaussian_section(f: dict, head: str, steps: int, group: int, transform: str, threads: int,
                     repeats: int, score_rows: int) -> dict:
    ds, X, model, reference, protocol = f["ds"], f["X"], f["model"], f["reference"], f["protocol"]
    ens = model.ensemble
    mu = ds.truth.mu
    P, d = mu.shape
    config = RLConfig(algo="grpo", policy="gaussian", steps=steps, group=group, points=2)
    with fit_threads(threads):
        sr = SampleReward(ens, model.scores, reference, take_rows(X, np.flatnonzero(reference)), "mean",
                          params=protocol.aggregation_params())
        gen = torch.Generator().manual_seed(2)
        ref_x = (torch.from_numpy(mu)[:, None, :]
                 + torch.randn((P, REFERENCE_SAMPLES, d), generator=gen)).numpy()
        prompt_reward = PromptReward(sr, transform, ref_x)
        seconds = []
        for _ in range(repeats):
            policy = GaussianPolicy(mu, prompt_reward, ds.truth.gold)
            t = time.perf_counter()
            at, history = train(policy, config)
            seconds.append(time.perf_counter() - t)
        t = time.perf_counter()
        policy.evaluate(torch.Generator().manual_seed(3))
        eval_s = time.perf_counter() - t

        # baselines: SampleReward alone on one big batch; the generic path (predict, float64, aggregate_all)
        x = torch.randn((score_rows, d), generator=torch.Generator().manual_seed(4)).numpy() + mu[0]
        sr(x[:1000])
        t = time.perf_counter()
        fast = sr(x)
        score_s = time.perf_counter() - t
        t = time.perf_counter()
        z = (ens.predict(x).astype(np.float64) - sr.mu) / sr.sd
        generic = (aggregate_all(z, ("mean",))["mean"] - sr.scale[0]) / sr.scale[1]
        generic_s = time.perf_counter() - t
        peak = matmul_peak(torch.float32, 512, MLP_HIDDEN[0], MLP_HIDDEN[1], 0.5) if head == "mlp" else None
    best = min(seconds)
    samples = steps * P * group
    rate = samples / best
    out = {"section": f"gaussian-{head}", "head": head, "k": ens.k, "dim": d, "transform": transform,
           "threads": threads, "prompts": P, "group": group, "steps": steps, "samples": samples,
           "evaluations": len(at), "evaluation_samples_per_prompt": policy.eval_samples,
           "seconds": seconds, "seconds_best": best, "samples_per_s": rate, "evaluation_s": eval_s,
           "samples_per_s_without_evaluations": samples / max(best - len(at) * eval_s, 1e-9),
           "target_samples_per_s": GAUSSIAN_TARGETS[head], "meets_target": rate >= GAUSSIAN_TARGETS[head],
           "scoring_rows": score_rows, "scoring_per_s": score_rows / score_s,
           "generic_scoring_per_s": score_rows / generic_s, "fast_vs_generic_scoring": generic_s / score_s,
           "fast_vs_generic_max_abs_diff": float(np.abs(fast - generic).max()),
           "loop_over_scoring": rate / (score_rows / score_s), "fit_seconds": f["fit_s"],
           "gold_start": float(history[0]["gold"].mean()), "gold_end": float(history[-1]["gold"].mean()),
           "kl_end": float(history[-1]["kl"].mean())}
    if peak is not None:
        flops = 2.0 * ens.k * (d * MLP_HIDDEN[0] + MLP_HIDDEN[0] * MLP_HIDDEN[1] + MLP_HIDDEN[1])
        out.update(scoring_gflops=flops * out["scoring_per_s"] / 1e9, matmul_peak_gflops=peak,
                   scoring_over_matmul_peak=flops * out["scoring_per_s"] / 1e9 / peak)
    return out


# ----------------------------------------------------------------------------- table

def print_table(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"{'section':<20}{'thr':>4}  {'measured':>26}  {'target':>16}  {'met':>4}  baseline ratio")
    for r in rows:
        if r["section"] == "pool":
            measured = f"{r['seconds_best']:.2f} s ({r['ms_per_step']:.2f} ms/step)"
            target = f"<= {r['target_seconds']:.1f} s"
            ratio = (f"step = {r['step_over_floor']:.1f}x the elementwise floor ({r['floor_ms_per_step']:.2f} "
                     f"ms); one evaluation {r['evaluation_ms']:.1f} ms")
        else:
            measured = f"{r['samples_per_s']:,.0f} samples/s"
            target = f">= {r['target_samples_per_s']:,.0f}"
            ratio = (f"loop = {r['loop_over_scoring']:.2f}x scoring alone ({r['scoring_per_s']:,.0f}/s, "
                     f"{r['fast_vs_generic_scoring']:.1f}x the generic path); without its {r['evaluations']} "
                     f"evaluations {r['samples_per_s_without_evaluations']:,.0f}/s")
            if "scoring_gflops" in r:
                ratio += (f"; scoring {r['scoring_gflops']:.0f} GFLOP/s = {r['scoring_over_matmul_peak']:.2f}x a "
                          f"plain matmul ({r['matmul_peak_gflops']:.0f})")
        name = r["section"] + ("" if r.get("transform", "none") == "none" else f"/{r['transform']}")
        print(f"{name:<20}{r['threads']:>4}  {measured:>26}  {target:>16}  {'yes' if r['meets_target'] else 'NO':>4}"
              f"  {ratio}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--also-threads", type=int, default=2, help="run every section again at this many threads "
                                                                  "(0: only $EMBRM_THREADS)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rl.json"))
    args = ap.parse_args(argv)
    q = args.quick
    pool = dict(P=200 if q else 1000, N=100 if q else 500, steps=100 if q else 1000, group=16)
    gauss = dict(P=200 if q else 1000, group=64, steps={"linear": 10 if q else 100, "mlp": 2 if q else 20},
                 score_rows=20_000 if q else 256_000)
    threads = [policy_threads()] + ([args.also_threads] if args.also_threads and args.also_threads
                                    != policy_threads() else [])
    load_before = os.getloadavg()
    warm_up()
    rows = []
    for n in threads:
        rows.append(pool_section(pool["P"], pool["N"], pool["steps"], pool["group"], n, args.repeats))
        print_table(rows[-1:], header=len(rows) == 1)
    for head in ("linear", "mlp"):
        f = fitted(head, gauss["P"], 10, 32)
        for transform in (("none", "cdf") if head == "linear" else ("none",)):
            for n in threads if transform == "none" else threads[:1]:
                rows.append(gaussian_section(f, head, gauss["steps"][head], gauss["group"], transform, n,
                                             args.repeats, gauss["score_rows"]))
                print_table(rows[-1:], header=False)
    argv_ = argv if argv is not None else sys.argv[1:]
    result = {"benchmark": "rl", "command": " ".join([f"EMBRM_THREADS={policy_threads()}", ".venv/bin/python",
                                                       "benchmarks/bench_rl.py", *argv_]),
              "quick": q, "rows": rows,
              "machine": {**machine_facts(), "policy_threads": policy_threads(), "loadavg_before": load_before,
                          "loadavg_after": os.getloadavg()},
              "note": "timings of one run on a shared 2-core VM: compare the ratios within this run; seconds are "
                      "the best of --repeats runs (all in 'seconds')"}
    print()
    print_table(rows)
    m = result["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpu_count']} cpus, avx512_bf16 {m['avx512_bf16']}, amx_bf16 "
          f"{m['amx_bf16']}, torch {m['torch']}; load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
