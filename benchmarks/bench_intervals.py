"""Benchmark: coverage and width of the findings' intervals, the random-effects estimator against the previous
two-stage bootstrap, on simulated studies with a known (zero) effect.

    python benchmarks/bench_intervals.py                      # the default study's designs + a grid, ~10 minutes
    python benchmarks/bench_intervals.py --quick              # fewer simulated studies

Designs:
  study    every tested finding of the committed default study (benchmarks/results/study_default_findings.json):
           its seeds, runs per seed, pool, held-out prompts and its ESTIMATED variance components (prompt,
           prompt x seed, seed), simulated with Design.of (embrm.evaluation._simulate): heavy-tailed (t3) prompt
           and interaction effects, a pool drawn anew per simulated study (the interval is about new prompts).
  grid     3 and 10 seeds, with and without a seed effect, on the two pools' sizes.
Coverage is the share of simulated studies whose 95 % interval holds 0; width the median interval width (the mean
is dominated by the few studies whose seed part has few degrees of freedom); old/new the geometric mean over designs
of each design's ratio of median widths. Writes benchmarks/results/intervals.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embrm.evaluation import Design, Effect, paired_effect, simulate_units  # noqa: E402

FINDINGS = ROOT / "benchmarks" / "results" / "study_default_findings.json"
GRID = {
    "bon16-like, 3 seeds": Design(pool=805, seeds=3, prompt_sd=0.5, interaction_sd=0.4),
    "bon16-like, 10 seeds": Design(pool=805, seeds=10, prompt_sd=0.5, interaction_sd=0.4),
    "models-like, 3 seeds": Design(pool=400, seeds=3, prompt_sd=0.1, interaction_sd=0.3),
    "models-like, 3 seeds, seed effect": Design(pool=400, seeds=3, prompt_sd=0.1, interaction_sd=0.3, seed_sd=0.05),
    "models-like, 10 seeds, seed effect": Design(pool=400, seeds=10, prompt_sd=0.1, interaction_sd=0.3,
                                                 seed_sd=0.05),
}


def study_designs(path: Path = FINDINGS) -> list[tuple[str, Design]]:
    """(finding key, Design.of its effect) for every tested finding of a committed study's findings.json."""
    found = json.loads(path.read_text(encoding="utf-8"))
    return [(f["key"], Design.of(Effect.from_dict(f["effect"]))) for f in found
            if f.get("effect") and f["effect"].get("components")]


def simulate(design: Design, studies: int, estimator: str, seed: int, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """(covered, width) per simulated study."""
    rng = np.random.default_rng(seed)
    covered, width = np.zeros(studies, bool), np.zeros(studies)
    for i in range(studies):
        e = paired_effect(simulate_units(design, rng), pool=design.pool, estimator=estimator, n_boot=n_boot, seed=i)
        covered[i], width[i] = e.lo <= design.effect <= e.hi, e.hi - e.lo
    return covered, width


def compare(name: str, designs: list[Design], new_n: int, old_n: int, n_boot: int) -> dict:
    t0 = time.perf_counter()
    new = [simulate(d, new_n, "random effects", i, n_boot) for i, d in enumerate(designs)]
    t1 = time.perf_counter()
    old = [simulate(d, old_n, "two-stage bootstrap", 10_000 + i, n_boot) for i, d in enumerate(designs)]
    t2 = time.perf_counter()
    row = {"designs": name, "n_designs": len(designs), "studies_new": new_n * len(designs),
           "studies_old": old_n * len(designs),
           "coverage_new": float(np.mean([c.mean() for c, _ in new])),
           "coverage_old": float(np.mean([c.mean() for c, _ in old])),
           "median_width_new": float(np.median(np.concatenate([w for _, w in new]))),
           "median_width_old": float(np.median(np.concatenate([w for _, w in old]))),
           "per_design_coverage_new": [round(float(c.mean()), 4) for c, _ in new],
           "seconds": {"new": round(t1 - t0, 1), "old": round(t2 - t1, 1)}}
    for key, n in (("new", row["studies_new"]), ("old", row["studies_old"])):
        p = row[f"coverage_{key}"]
        row[f"coverage_{key}_mc_se"] = float(np.sqrt(p * (1 - p) / n))
    ratios = [np.median(wo) / np.median(wn) for (_, wn), (_, wo) in zip(new, old)]  # per design: same scale
    row["width_ratio_old_over_new"] = float(np.exp(np.mean(np.log(ratios))))
    row["per_design_width_ratio_old_over_new"] = [round(float(r), 3) for r in ratios]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--findings", type=Path, default=FINDINGS, help="a study's findings.json (its designs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "intervals.json")
    args = ap.parse_args()
    per_study, per_old, per_grid, per_grid_old, n_boot = (40, 10, 300, 60, 300) if args.quick else \
        (300, 40, 2000, 300, 500)
    rows = []
    if args.findings.exists():
        keys, designs = zip(*study_designs(args.findings))
        rows.append(compare(f"default study's {len(designs)} findings", list(designs), per_study, per_old, n_boot))
        rows[-1]["keys"] = list(keys)
    for name, design in GRID.items():
        rows.append(compare(name, [design], per_grid, per_grid_old, n_boot))
    print(f"{'designs':44s} {'coverage new':>16s} {'coverage old':>16s} {'width new':>10s} {'old/new':>8s}")
    for r in rows:
        print(f"{r['designs']:44s} {r['coverage_new']:.3f} ± {r['coverage_new_mc_se']:.3f}    "
              f"{r['coverage_old']:.3f} ± {r['coverage_old_mc_se']:.3f} {r['median_width_new']:10.4f} "
              f"{r['width_ratio_old_over_new']:8.2f}")
    args.out.write_text(json.dumps({"rows": rows, "level": 0.95, "python": platform.python_version(),
                                    "note": "coverage of 0 by 95 % intervals over simulated studies with no effect; "
                                            "± is the Monte Carlo standard error"}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
