"""`embrm plan`: a study's design before it runs, and what its last run's findings could detect.

    plan = plan_study(load_study(), "results/default", data_dir="../shared/data")
    plan.datasets[0].mde      # the standardised effect the design detects at 80 % power (two-sided, 5 %)
    plan.findings             # per tested finding of the last run: estimate, verdict, q, MDE, seeds / prompts needed

The standardised minimum detectable effect is for a finding whose variance is all prompt variance, in units of the
per-prompt standard deviation: d = (z_0.975 + z_0.8) sqrt((1 - f) / (S m) + 1 / P), with P the pool's prompts, m the
prompts each of the S seeds holds out and f = m / P (embrm.evaluation.Components.variance with sigma_a = 1). Seed and
prompt x seed variation only add to it. Prompt counts come from a declaration (`prompts = N`, a generated pool's
n_prompts) or from reading the data; nothing is embedded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats as st

from embrm.core import EmbrmError
from embrm.data import load_dataset
from embrm.evaluation import Components, Effect, Power, detectable_effect, family_control, power_of
from embrm.studies._config import Study, _prompt_count, jobs_of
from embrm.studies._run import replication_jobs
from embrm.studies._store import ResultStore

POWER, ALPHA = 0.8, 0.05


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset of the study: its prompts, the prompts each seed holds out, its jobs and the design's MDE."""

    label: str
    kind: str  # "pool" or "human"
    prompts: int
    held_out: int
    jobs: int
    replication_jobs: int
    mde: float  # standardised (per-prompt sd units), all variance prompt variance


@dataclass(frozen=True)
class FindingPlan:
    """A tested finding of the last run and what its design could detect (None: not known from the file)."""

    key: str
    claim: str
    estimate: float
    verdict: str
    q_value: float | None
    mde: float | None
    seeds_needed: int | None
    prompts_needed: int | None


@dataclass
class StudyPlan:
    study: str
    seeds: int
    test_size: float
    jobs: int
    replication_jobs: int
    datasets: list[DatasetPlan]
    findings_path: Path
    findings: list[FindingPlan] | None = None  # None: no findings.json yet
    note: str = ""  # about the findings (none yet, or an older file)
    power: float = POWER
    alpha: float = ALPHA

    def to_dict(self) -> dict:
        return {"study": self.study, "seeds": self.seeds, "test_size": self.test_size, "jobs": self.jobs,
                "replication_jobs": self.replication_jobs, "power": self.power, "alpha": self.alpha,
                "datasets": [d.__dict__ for d in self.datasets], "findings_path": str(self.findings_path),
                "findings": None if self.findings is None else [f.__dict__ for f in self.findings], "note": self.note}


def standardised_mde(prompts: int, held_out: int, seeds: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """d = (z_{1 - alpha/2} + z_power) sqrt((1 - f) / (S m) + 1 / P): the MDE when all variance is prompt variance
    (the variance model of embrm.evaluation.Components with sigma_a = 1 and no other part)."""
    design = Components(prompt=1.0, interaction=0.0, seed=0.0, seeds=seeds, held_out=held_out, pool=prompts)
    return detectable_effect(math.sqrt(design.variance()), power=power, alpha=alpha)


def _prompts(spec, data_dir, test_size: float) -> tuple[int, int]:
    """(prompts in the pool, prompts each seed holds out): declared, else read from the data (not embedded). Data
    that come split (array datasets) hold out their test prompts on every seed."""
    known = _prompt_count(spec)
    if known:
        return known[1], int(round(test_size * known[1]))
    r = load_dataset(spec, data_dir).responses
    if "split" in r.columns:
        test = r.filter(r["split"] == "test")["prompt_id"].n_unique()
        return test, test
    prompts = r["prompt_id"].n_unique()
    return prompts, int(round(test_size * prompts))


def _dataset_plans(study: Study, data_dir) -> list[DatasetPlan]:
    jobs, halves = jobs_of(study), replication_jobs(study) if study.replicate else []
    plans = []
    for kind, specs in (("pool", study.datasets), ("human", study.human_pairs)):
        for spec in specs:
            prompts, held = _prompts(spec, data_dir, study.test_size)
            n_half = sum(replace(j.dataset, half=0) == spec for j in halves)
            plans.append(DatasetPlan(spec.label, kind, prompts, held, sum(j.dataset == spec for j in jobs), n_half,
                                     standardised_mde(prompts, max(held, 1), len(study.seeds))))
    return plans


def plan_study(study: Study, out_dir, data_dir=None) -> StudyPlan:
    """The study's design and, when out_dir holds this study's findings.json, each tested finding's power."""
    out = Path(out_dir)
    owner = ResultStore(out).owner()
    if owner is not None and owner != study.name:
        raise EmbrmError(f"--out {out} holds the results of study {owner!r}, not {study.name!r}: give --out the "
                         f"directory of this study's results (default: results/{study.name})", field="--out")
    datasets = _dataset_plans(study, data_dir)
    plan = StudyPlan(study.name, len(study.seeds), study.test_size, len(jobs_of(study)),
                     sum(d.replication_jobs for d in datasets), datasets, out / "findings.json")
    if not plan.findings_path.is_file():
        plan.note = (f"no findings yet in {out}: `embrm run` this study (with --out {out}) to measure them, then "
                     f"plan again for each finding's power")
        return plan
    plan.findings, older = read_findings(plan.findings_path)
    if older:
        plan.note = (f"{plan.findings_path} is from an earlier embrm: {older}; q-values recomputed where p-values "
                     f"exist; re-run the study for every column")
    return plan


def read_findings(path: Path) -> tuple[list[FindingPlan], str]:
    """The tested findings of a findings.json, with their power (stored, or recomputed from the stored effect's
    variance components), and what an older file lacks ("" when nothing)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "key" in r for r in rows):
            raise ValueError("not a list of findings")
        tested = [(r, _with_se(Effect.from_dict(r["effect"]))) for r in rows if r.get("effect")]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise EmbrmError(f"{path}: not a findings.json of `embrm run` ({str(e)[:80]}): re-run the study, or remove "
                         f"the file", field="--out") from None
    q = family_control([e.p_value for _, e in tested])
    plans, missing = [], set()
    for (row, effect), q_recomputed in zip(tested, q):
        power = _power(row, effect)
        if effect.components is None:
            missing.add("effects without variance components (the two-stage bootstrap): se and p read off the 95 % "
                        "interval (normal), so MDE and q-values but no seeds or prompts needed")
        q_value = row.get("q_value", None if np.isnan(q_recomputed) else float(q_recomputed))
        if "q_value" not in row:
            missing.add("no q-values stored")
        mde = power.mde if power else detectable_effect(effect.se, power=POWER, alpha=ALPHA) \
            if np.isfinite(effect.se) else None
        plans.append(FindingPlan(row["key"], row.get("claim", ""), effect.estimate, row.get("verdict", ""), q_value,
                                 mde, power and power.seeds_needed, power and power.prompts_needed))
    return plans, "; ".join(sorted(missing))


def _with_se(effect: Effect) -> Effect:
    """An older effect (two-stage bootstrap: no se or p) with both read off its interval, taken as normal."""
    if np.isfinite(effect.se) or not (np.isfinite(effect.lo) and np.isfinite(effect.hi)):
        return effect
    se = (effect.hi - effect.lo) / (2 * st.norm.ppf(0.5 + effect.level / 2))
    p = float(2 * st.norm.sf(abs(effect.estimate) / se)) if se > 0 else float(effect.estimate == 0)
    return replace(effect, se=se, p_value=p)


def _power(row: dict, effect: Effect) -> Power | None:
    stored = row.get("power")
    if isinstance(stored, dict):
        try:
            return Power(**stored)
        except TypeError:
            pass  # an older Power: recomputed below
    return power_of(effect, power=POWER, alpha=ALPHA)
