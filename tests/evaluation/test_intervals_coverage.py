"""The findings' intervals cover the truth at the studies' designs (simulated studies, known zero effect).

The designs are the default study's own: each tested finding of the committed report (its seeds, runs, pool,
held-out prompts and estimated variance components; benchmarks/results/study_default_findings.json), simulated by
embrm.evaluation.Design.of. benchmarks/bench_intervals.py runs the same with many more simulated studies and reports
the widths against the previous two-stage bootstrap; this test is its fast guard (about 1,900 simulated studies, a
Monte Carlo standard error of about 0.005 on the pooled coverage).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from embrm.evaluation import Design, Effect, coverage

FINDINGS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "study_default_findings.json"


def study_designs() -> list[Design]:
    found = json.loads(FINDINGS.read_text(encoding="utf-8"))
    return [Design.of(Effect.from_dict(f["effect"])) for f in found if f.get("effect")]


def test_pooled_coverage_over_the_default_studys_designs_is_near_95_percent():
    designs = study_designs()
    assert len(designs) >= 40
    pooled = np.mean([coverage(d, studies=40, seed=i).coverage for i, d in enumerate(designs)])
    # measured (bench_intervals.py, 300 per design): see benchmarks/results/intervals.json
    assert 0.94 <= pooled <= 0.97, pooled


def test_where_prompts_dominate_the_previous_bootstrap_over_covers():
    # three seeds, no seed effect, prompt variance only: the two-stage bootstrap counts it twice (seeds' spread,
    # then each seed's prompts) and nearly always covers; the new interval counts each prompt once
    design = Design(pool=805, seeds=3, prompt_sd=0.5, interaction_sd=0.4)
    new = coverage(design, studies=300, seed=1)
    old = coverage(design, studies=60, seed=2, estimator="two-stage bootstrap", n_boot=300)
    assert old.coverage >= 0.98 and 0.93 <= new.coverage < old.coverage, (new, old)


@pytest.mark.parametrize("seed_sd", [0.0, 0.05])
def test_with_ten_seeds_the_interval_is_near_nominal_with_or_without_a_seed_effect(seed_sd):
    design = Design(pool=400, seeds=10, prompt_sd=0.1, interaction_sd=0.3, seed_sd=seed_sd)
    assert 0.92 <= coverage(design, studies=300, seed=3).coverage <= 0.98
