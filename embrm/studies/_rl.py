"""A study's RL runs (its [rl] table, embrm.rl) across jobs: the tidy table, its seed-aggregated markdown, the
gold-vs-KL plot averaged over seeds, and the findings, each paired per held-out prompt as the Best-of-n findings:

    Gao et al. (RL)   the mean's gold falls from its peak step to the end of RL (peak step chosen on the OTHER
                      seeds' curves of the same learner, annotator and run: cross-fitted)
    Coste et al.      a conservative aggregation (min, UWO, LCB, conformal) keeps more gold than the mean at the end
                      of RL ("resists over-optimisation under RL")
    embrm             a KL penalty, and a reward transform (sigmoid, cdf), keeps more gold at the end than none
    Coste et al.      members that differ (bootstrap, features, disjoint) make a conservative aggregation resist:
                      (agg − mean) at the end exceeds that of the same learner with independent members
Effects are gain differences in units of each prompt's oracle - random gold (as the Best-of-n findings).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import fmt, md_table
from embrm.evaluation import Unit, paired_effect, pyplot, save_figure
from embrm.rl import frame_gold_axes
from embrm.studies._findings import CONSERVATIVE, Finding, differences, diverse_pairs, diversity_claim
from embrm.studies._store import JobResult
from embrm.studies._tables import summarise

__all__ = ["rl_table", "rl_markdown", "plot_rl_study", "plot_name", "rl_findings", "rl_skipped"]

METRICS = ["start_gold", "peak_gold", "peak_step", "peak_kl", "end_gold", "end_kl", "drop_from_peak", "bon_end_gold"]


def _runs(r: JobResult, policy: str) -> list[dict]:
    return (r.rl or {}).get(policy, {}).get("runs", [])


def _policies(results: list[JobResult]) -> list[str]:
    return list(dict.fromkeys(p for r in results for p, v in (r.rl or {}).items() if "runs" in v))


def rl_skipped(results: list[JobResult]) -> dict[str, str]:
    """{"dataset / policy": why} for the policies a dataset could not run."""
    return {f"{r.dataset} / {p}": v["skipped"] for r in results for p, v in (r.rl or {}).items() if "skipped" in v}


def rl_table(results: list[JobResult]) -> pl.DataFrame:
    """One row per (job, policy, run): the run's summary (embrm.rl.RLRun.summary) and Best-of-n's gold at n = N of
    its aggregation on the same prompts."""
    rows = []
    for r in results:
        for policy, v in (r.rl or {}).items():
            if "summary" not in v:
                continue
            bon = v["summary"]["bon"]
            for s in v["summary"]["runs"]:
                rows.append({"dataset": r.dataset, "policy": policy, "learner": r.learner, "noise": r.noise,
                             "seed": r.seed, **s, "bon_end_gold": bon.get(s["aggregation"], {}).get("end_gold"),
                             "random": v["summary"]["random"], "oracle": v["summary"]["oracle"]})
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def rl_markdown(table: pl.DataFrame, dataset: str, policy: str) -> str:
    """Mean ± 95 % interval over seeds per (learner, annotator, run)."""
    sub = table.filter((pl.col("dataset") == dataset) & (pl.col("policy") == policy))
    stats = summarise(sub, ["learner", "noise", "run"], METRICS)
    rows = [[s["learner"], s["noise"], s["run"], fmt(s["start_gold"], s["start_gold_ci"]),
             fmt(s["peak_gold"], s["peak_gold_ci"]), fmt(s["peak_step"], s["peak_step_ci"], 0),
             fmt(s["end_gold"], s["end_gold_ci"]), fmt(s["drop_from_peak"], s["drop_from_peak_ci"]),
             fmt(s["end_kl"], s["end_kl_ci"], 2), fmt(s["bon_end_gold"], s["bon_end_gold_ci"])]
            for s in stats.to_dicts()]
    return md_table(["learner", "labels", "run", "gold at step 0", "peak gold", "peak step", "gold at end",
                     "drop from peak", "KL at end", "Best-of-n gold at n = N"], rows)


def plot_rl_study(results: list[JobResult], out: Path, dataset: str, policy: str) -> Path | None:
    """Gold vs sqrt(KL) of every run of the first learner and annotator, averaged over seeds (steps align)."""
    runs = [r for r in results if r.dataset == dataset and _runs(r, policy)]
    if not runs:
        return None
    first = [r for r in runs if (r.learner, r.noise) == (runs[0].learner, runs[0].noise)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8), constrained_layout=True)
    for i, name in enumerate(dict.fromkeys(run["name"] for run in _runs(first[0], policy))):
        curves = [next(x for x in _runs(r, policy) if x["name"] == name)["curve"] for r in first]
        kl = np.mean([c["kl"] for c in curves], axis=0)
        gold = np.mean([c["gold"] for c in curves], axis=0)
        # ten colours, then the same colours dashed: every run stays distinguishable
        ax.plot(np.sqrt(kl), gold, marker="o", ms=2.5, lw=1.5, ls=("-", "--", ":")[i // 10 % 3], label=name)
    refs = [(np.mean(run["random"]), np.mean(run["oracle"])) for r in first for run in _runs(r, policy)]
    random, oracle = np.mean(refs, axis=0)
    frame_gold_axes(ax, None, float(random), float(oracle))
    ax.set(xlabel="sqrt KL(pi || pi_ref) (exact)", ylabel="held-out expected gold",
           title=f"{dataset}: RL ({policy} policy), {runs[0].learner}, {runs[0].noise} labels, mean of "
                 f"{len(first)} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out / plot_name(dataset, policy), dpi=110)


def plot_name(dataset: str, policy: str) -> str:
    """The file name of a pool's RL plot (the report links it)."""
    return re.sub(r"[^\w.-]+", "_", f"rl_{Path(dataset).name}_{policy}") + ".png"


# ----------------------------------------------------------------------------- findings

def _unit(r: JobResult, run: dict, a: np.ndarray, b: np.ndarray) -> Unit:
    random, oracle = np.asarray(run["random"], np.float64), np.asarray(run["oracle"], np.float64)
    return Unit(r.seed, f"{r.noise}/{r.learner}/{run['name']}", np.asarray(run["prompt_id"]), a - random,
                b - random, oracle - random)


def _end(run: dict) -> np.ndarray:
    return np.asarray(run["gold_prompt"][-1], np.float64)


def _effect(units: list[Unit]):
    units = [u for u in units if u.den.sum() > 0]
    return paired_effect(units) if units else None


def _paired_end(jobs: list[JobResult], policy: str, a: dict, b: dict) -> list[Unit]:
    """Units of the end gold of run `a` against run `b` (selected by their fields) of each job."""
    units = []
    for r in jobs:
        runs = _runs(r, policy)
        ra = next((x for x in runs if all(x[k] == v for k, v in a.items())), None)
        rb = next((x for x in runs if all(x[k] == v for k, v in b.items())), None)
        if ra is not None and rb is not None and ra["prompt_id"] == rb["prompt_id"]:
            units.append(_unit(r, ra, _end(ra), _end(rb)))
    return units


def _diversity_units(jobs: list[JobResult], policy: str, learner: str, twin: str, a: dict, b: dict) -> list[Unit]:
    """Per seed and annotator: (run a − run b) at the end of the diverse learner against the same of its twin."""
    twins = {(r.noise, r.seed): r for r in jobs if r.learner == twin}
    return [u for r in jobs if r.learner == learner and (r.noise, r.seed) in twins
            for u in differences(_paired_end([r], policy, a, b), _paired_end([twins[(r.noise, r.seed)]], policy, a, b))]


def _peak_units(jobs: list[JobResult], policy: str, base: dict) -> list[Unit]:
    """Per job: its base run's gold at the step where the OTHER seeds' mean curves of the same learner and annotator
    peak, against its gold at the end, per prompt."""
    units = []
    for r in jobs:
        run = next((x for x in _runs(r, policy) if all(x[k] == v for k, v in base.items())), None)
        others = [next((x for x in _runs(o, policy) if x["name"] == run["name"]), None) for o in jobs
                  if run is not None and o.seed != r.seed and (o.learner, o.noise) == (r.learner, r.noise)]
        others = [o for o in others if o is not None and o["steps"] == run["steps"]]
        if run is None or not others:
            continue
        peak = int(np.argmax(np.mean([o["curve"]["gold"] for o in others], axis=0)))
        units.append(_unit(r, run, np.asarray(run["gold_prompt"][peak], np.float64), _end(run)))
    return units


def rl_findings(results: list[JobResult], dataset: str) -> list[Finding]:
    """The RL claims on one dataset's plain learners, per policy (see the module docstring)."""
    out = []
    jobs = [r for r in results if r.dataset == dataset and r.plain]
    for policy in _policies(jobs):
        runs = [x for r in jobs for x in _runs(r, policy)]
        kls = sorted({x["kl_coef"] for x in runs})
        transforms = list(dict.fromkeys(x["transform"] for x in runs))
        aggs = list(dict.fromkeys(x["aggregation"] for x in runs))
        base = {"aggregation": "mean", "transform": transforms[0], "kl_coef": kls[0]}
        where = f"{dataset}|all|rl-{policy}"
        tested = [("overoptimisation", "Gao et al.", "over-optimisation under RL: the ensemble mean's gold falls from "
                   "its peak step to the end (peak step chosen on the other seeds)",
                   "gain difference (mean at the peak step − mean at the end)", _peak_units(jobs, policy, base))]
        tested += [(f"{a}-vs-mean", "Coste et al.", f"{a} resists over-optimisation under RL: more gold than the "
                    f"ensemble mean at the end", f"gain difference at the end ({a} − mean)",
                    _paired_end(jobs, policy, {**base, "aggregation": a}, base))
                   for a in aggs if a in CONSERVATIVE]
        tested += [(f"kl{k:g}-vs-kl{kls[0]:g}", "embrm", f"a KL penalty (kl = {k:g}) resists over-optimisation: more "
                    f"gold at the end than kl = {kls[0]:g}", f"gain difference at the end (kl {k:g} − kl {kls[0]:g})",
                    _paired_end(jobs, policy, {**base, "kl_coef": k}, base)) for k in kls[1:]]
        tested += [(f"{t}-vs-{transforms[0]}", "embrm", f"the {t} reward transform resists over-optimisation: more "
                    f"gold at the end than {transforms[0]}", f"gain difference at the end ({t} − {transforms[0]})",
                    _paired_end(jobs, policy, {**base, "transform": t}, base)) for t in transforms[1:]]
        for learner, twin in sorted(diverse_pairs(jobs).items()):
            tested += [(f"{a}-vs-mean|{learner}-vs-{twin}", "Coste et al.", *diversity_claim(learner, twin, a),
                        _diversity_units(jobs, policy, learner, twin, {**base, "aggregation": a}, base))
                       for a in aggs if a in CONSERVATIVE]
        for key, source, claim, measure, units in tested:
            effect = _effect(units)
            if effect is not None:
                out.append(Finding(f"{where}|{key}", dataset, "all", source, f"[RL, {policy} policy] {claim}",
                                   measure, +1, effect))
    return out
