"""Simulated studies whose true effect is known: how often does an interval cover it at a study's design?

    design = Design(pool=805, held_out=0.2, seeds=3, units=3, prompt_sd=0.3, interaction_sd=0.3, seed_sd=0.02)
    coverage(design, studies=2000)                 -> Coverage(coverage, mean width, ...) of paired_effect
    Design.of(finding.effect)                      the design and variance components a finding was measured on
    coverage(design, studies=300, estimator="two-stage bootstrap", n_boot=500)

A simulated study draws a pool of `pool` prompts from a population (so the interval must cover the effect on new
prompts, not on this pool), then per seed a random held-out subset (held_out x pool prompts, the seeds' subsets
overlap as a study's splits do) and `units` learners evaluated on it. A unit's per-prompt numerator difference is
den_p (effect + a_p + b_s + e_ps + noise_psu): a_p a prompt's own effect (heavy-tailed: Student t with 3 degrees of
freedom, scaled to prompt_sd; optionally sparse, nonzero on a share of prompts as in pick-rate findings), b_s the
seed's (normal, seed_sd), e_ps what the seed's training does on that prompt (t3, interaction_sd), noise the unit's
own (normal, unit_sd), den_p > 0 a prompt's denominator (oracle - random). The true effect is `effect`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from embrm.core import EmbrmError
from embrm.evaluation._stats import Effect, Unit, paired_effect


@dataclass(frozen=True)
class Design:
    """A study's design and the variance of its per-prompt effects (see the module docstring)."""

    pool: int = 805
    held_out: float = 0.2
    seeds: int = 3
    units: int = 3
    prompt_sd: float = 0.3
    interaction_sd: float = 0.3
    seed_sd: float = 0.0
    unit_sd: float = 0.05
    sparse: float = 1.0  # share of prompts with a nonzero prompt and interaction effect
    effect: float = 0.0

    def with_seeds(self, seeds: int) -> Design:
        return replace(self, seeds=seeds)

    @classmethod
    def of(cls, effect: Effect) -> Design:
        """The design a finding was measured on, with its estimated variance components (the unit noise folded into
        the interaction, as it is estimated) and no effect: simulate it to ask how its interval covers."""
        c = effect.components
        if c is None:
            raise EmbrmError("this effect has no variance components (two-stage bootstrap): no design to simulate")
        return cls(pool=c.pool, held_out=min(1.0, c.held_out / c.pool), seeds=c.seeds,
                   units=max(1, round(effect.n_units / effect.n_seeds)), prompt_sd=float(np.sqrt(c.prompt)),
                   interaction_sd=float(np.sqrt(c.interaction)), seed_sd=float(np.sqrt(c.seed)), unit_sd=0.0)


def _t3(rng: np.random.Generator, sd: float, size) -> np.ndarray:
    return rng.standard_t(3, size) * sd / np.sqrt(3.0)  # t3 has variance 3


def simulate_units(design: Design, rng: np.random.Generator) -> list[Unit]:
    """One simulated study's units (every seed's learners on its held-out prompts)."""
    d = design
    m = max(2, int(round(d.held_out * d.pool)))
    active = rng.random(d.pool) < d.sparse
    a = _t3(rng, d.prompt_sd, d.pool) * active
    den = rng.uniform(0.2, 1.8, d.pool)
    held = np.stack([rng.choice(d.pool, m, replace=False) for _ in range(d.seeds)])      # (S, m)
    b = rng.normal(0, d.seed_sd, (d.seeds, 1))
    e = _t3(rng, d.interaction_sd, held.shape) * active[held]
    noise = rng.normal(0, d.unit_sd, (d.units,) + held.shape)                             # (U, S, m)
    diff = den[held] * (d.effect + a[held] + b + e + noise)
    ids = held.astype(str)
    zero = np.zeros(m)
    return [Unit(s, f"unit{u}", ids[s], diff[u, s], zero, den[held[s]]) for s in range(d.seeds)
            for u in range(d.units)]


@dataclass(frozen=True)
class Coverage:
    """How often `studies` simulated studies' intervals covered the true effect, and their mean width."""

    design: Design
    estimator: str
    studies: int
    coverage: float
    width: float
    level: float

    @property
    def standard_error(self) -> float:
        """Monte Carlo standard error of the coverage."""
        return float(np.sqrt(self.coverage * (1 - self.coverage) / self.studies))


def coverage(design: Design, *, studies: int = 2000, level: float = 0.95, estimator: str = "random effects",
             n_boot: int = 500, seed: int = 0) -> Coverage:
    """Coverage and mean width of paired_effect's interval over `studies` simulated studies of `design`."""
    rng = np.random.default_rng(seed)
    hits, widths = np.zeros(studies, bool), np.zeros(studies)
    for i in range(studies):
        e = paired_effect(simulate_units(design, rng), level=level, pool=design.pool, estimator=estimator,
                          n_boot=n_boot, seed=i)
        hits[i], widths[i] = e.lo <= design.effect <= e.hi, e.hi - e.lo
    return Coverage(design, estimator, studies, float(hits.mean()), float(widths.mean()), level)
