"""Decisions over a study's findings: many findings at once, power, and adding seeds until they are decided.

    family_control(p_values, q)          Benjamini-Hochberg adjusted p-values (q-values) over a study's findings
    power_of(effect)                     -> Power: the minimum detectable effect at 80 % power, and the seeds or
                                            pool prompts that would detect the observed estimate
    detectable_effect(se, df)            (t_{1 - alpha/2} + t_power) se: the minimum detectable effect
    se_at(effect, seeds, pool)           the standard error the same finding would have at another design
    spending_bounds(fractions, alpha)    group-sequential z boundaries (Lan-DeMets, O'Brien-Fleming spending)
    SequentialTest(max_seeds).look(key, effect, direction) -> Look: decided, futile or continue

Family: a study reports dozens of findings at 95 %; under no effect at all about 1 in 20 would still read
"reproduced" or "reversed". Benjamini & Hochberg (1995) control the false discovery rate over the family: a verdict
survives when its q-value is <= q (the findings' p-values are positively dependent through shared jobs, which BH
tolerates: Benjamini & Yekutieli 2001).

Power: with the finding's variance components (embrm.evaluation.Components), se_at scales its standard error to
another number of seeds or another pool size (the held-out fraction kept; Components.seeds_for / pool_for solve it
for a target); the minimum detectable effect (detectable_effect) is (t_{1 - alpha/2} + t_power) se at the
finding's degrees of freedom (a two-sided test at alpha with the stated power;
the normal's z when the degrees of freedom are many).

Sequential: looking after every batch of seeds and stopping at the first interval that excludes 0 inflates false
findings. Lan & DeMets (1983) spend alpha over the looks with O'Brien & Fleming's function alpha(t) = 2 - 2
Phi(z_{1 - alpha/2} / sqrt(t)), t the information fraction (the variance at the planned maximum of seeds over the
variance now); the boundary at each look keeps the chance of any false crossing at alpha. A finding whose
conditional power (under its current estimate) to cross by the last look is below `futility` stops as futile
(non-binding: it cannot raise the error rate).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from scipy import stats as st

from embrm.core import EmbrmError
from embrm.evaluation._stats import VERDICTS, Effect

PATHS = 200_000  # Monte Carlo paths for the boundaries (seeded: the same fractions give the same bounds)


def family_control(p_values, q: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a family of p-values: a finding survives at false
    discovery rate q iff its q-value is <= q. NaN p-values stay NaN and are not counted in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = st.false_discovery_control(np.clip(p[ok], 0, 1), method="bh")
    return out


def se_at(effect: Effect, seeds: int | None = None, pool: int | None = None) -> float:
    """The finding's standard error at `seeds` seeds and a pool of `pool` prompts: its se now scaled by the ratio of
    its components' model variances (Components.variance), so that the current design gives the current se."""
    c = effect.components
    if c is None:
        raise EmbrmError("this effect has no variance components (two-stage bootstrap): use the random-effects "
                         "estimator of paired_effect")
    now = c.variance()
    return effect.se * float(np.sqrt(c.variance(seeds, pool) / now)) if now > 0 else effect.se


def detectable_effect(se: float, df: float = np.inf, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest |effect| a two-sided test at alpha detects with probability `power` when the estimate has
    standard error se: (t_{1 - alpha/2} + t_power) se at df degrees of freedom (the normal's z when infinite)."""
    return float(st.t.ppf(1 - alpha / 2, df) + st.t.ppf(power, df)) * se


@dataclass(frozen=True)
class Power:
    """What the design can detect, and what would detect the observed estimate.

    mde: the smallest |effect| detected with probability `power` by a two-sided test at `alpha`, at this design.
    seeds_needed: the fewest seeds (same pool) at which the observed |estimate| is the mde; None when more seeds
        cannot reach it (the pool's prompts set a floor: every seed draws from them) or beyond max_seeds.
    prompts_needed: the fewest pool prompts (same seeds, same held-out fraction) at which it is; None when more
        prompts cannot (the seeds' own variation sets the floor) or the estimate is 0.
    """

    mde: float
    seeds_needed: int | None
    prompts_needed: int | None
    seeds: int
    pool: int
    power: float = 0.8
    alpha: float = 0.05

    def describe(self) -> str:
        seeds = f"{self.seeds_needed} seeds" if self.seeds_needed else "no number of seeds"
        prompts = f"{self.prompts_needed:,} prompts" if self.prompts_needed else "no number of prompts"
        return (f"detectable at {self.power:.0%} power: |effect| >= {self.mde:.3f} (with {self.seeds} seeds, "
                f"{self.pool:,} prompts); the observed estimate needs {seeds} (pool kept) or {prompts} (seeds kept)")

    def to_dict(self) -> dict:
        return asdict(self)


def power_of(effect: Effect, *, power: float = 0.8, alpha: float = 0.05, max_seeds: int = 10_000) -> Power | None:
    """The Power of a finding's design (None when the effect has no variance components). At the finding's own
    degrees of freedom: few seeds, a wider test (conservative for the needs, whose designs have more)."""
    c = effect.components
    if c is None or not np.isfinite(effect.se):
        return None
    mde = detectable_effect(effect.se, effect.df, power, alpha)
    seeds = prompts = None
    now = c.variance()
    if now > 0 and effect.estimate != 0 and mde > 0:
        # the mde scales with se, i.e. with sqrt(model variance): the variance at which the estimate is the mde
        target = (abs(effect.estimate) / mde) ** 2 * now
        seeds, prompts = c.seeds_for(target), c.pool_for(target)
    return Power(mde=mde, seeds_needed=max(1, math.ceil(seeds)) if seeds is not None and seeds <= max_seeds else None,
                 prompts_needed=None if prompts is None else max(2, math.ceil(prompts)), seeds=c.seeds, pool=c.pool,
                 power=power, alpha=alpha)


# ----------------------------------------------------------------------------- group-sequential looks

def _spent(t: np.ndarray, alpha: float) -> np.ndarray:
    """O'Brien-Fleming-type cumulative alpha spent by information fraction t (Lan & DeMets 1983)."""
    return 2 - 2 * st.norm.cdf(st.norm.ppf(1 - alpha / 2) / np.sqrt(t))


def spending_bounds(fractions, alpha: float = 0.05, *, paths: int = PATHS, seed: int = 0) -> np.ndarray:
    """Two-sided z boundaries c_1..c_K for looks at increasing information fractions t_1 < ... <= 1: the chance,
    under no effect, that |Z_k| >= c_k at some look is alpha, spent by O'Brien-Fleming's function. Z_k are the
    standardised estimates of a Brownian motion at t_k (independent increments: a later estimate pools the earlier
    seeds). Found by seeded Monte Carlo over `paths` paths: the same fractions give the same bounds,
    cached: every finding at one look asks for the same fractions' bounds."""
    t = np.asarray(fractions, dtype=np.float64)
    if t.ndim != 1 or not len(t) or np.any(t <= 0) or np.any(t > 1) or np.any(np.diff(t) <= 0):
        raise EmbrmError(f"information fractions must increase within (0, 1]; got {t.tolist()}")
    if not 0 < alpha < 1:
        raise EmbrmError(f"alpha must be in (0, 1); got {alpha!r}")
    return _spending_bounds(tuple(np.round(t, 9)), float(alpha), paths, seed).copy()


@lru_cache(maxsize=4096)
def _spending_bounds(fractions: tuple, alpha: float, paths: int, seed: int) -> np.ndarray:
    """The bounds of spending_bounds for checked, hashable fractions."""
    t = np.asarray(fractions)
    rng = np.random.default_rng(seed)
    steps = np.diff(np.concatenate([[0.0], t]))
    z = np.cumsum(rng.standard_normal((paths, len(t))) * np.sqrt(steps), axis=1) / np.sqrt(t)
    spend = np.diff(np.concatenate([[0.0], _spent(t, alpha)]))
    bounds = np.empty(len(t))
    bounds[0] = st.norm.isf(spend[0] / 2)                   # the first look is exact
    alive = np.abs(z[:, 0]) < bounds[0]
    for k in range(1, len(t)):  # one pass per look (a handful): each bound depends on the paths still alive
        tail = np.abs(z[alive, k])
        share = spend[k] * paths / max(len(tail), 1)         # of the surviving paths, the share to stop here
        bounds[k] = np.quantile(tail, 1 - share) if 0 < share < 1 else (np.inf if share <= 0 else 0.0)
        alive[alive] = tail < bounds[k]
    return bounds


@dataclass(frozen=True)
class Look:
    """One finding at one look: its z, the boundary, its status, and the repeated confidence interval
    (estimate -/+ bound se: all looks' intervals cover together with probability 1 - alpha; Jennison & Turnbull
    1989). status: "reproduced" / "reversed" (crossed), "futile" (cannot cross by the last look), "continue", or
    "not reproduced (inconclusive)" at the last look."""

    key: str
    seeds: int
    fraction: float
    z: float
    bound: float
    status: str
    lo: float
    hi: float
    conditional_power: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SequentialTest:
    """Group-sequential looks at a study's findings while seeds are added (`embrm run --until-decided`).

    test = SequentialTest(max_seeds=12)
    for each batch of seeds: looks = [test.look(f.key, f.effect, f.direction) for f in findings]
    stop when no look says "continue" (or max_seeds is reached: every look is then final).
    """

    max_seeds: int
    alpha: float = 0.05
    futility: float = 0.10
    history: dict[str, list[float]] = field(default_factory=dict)  # per finding: its information fractions so far

    def look(self, key: str, effect: Effect, direction: int = +1) -> Look:
        fractions = self.history.setdefault(key, [])
        last = effect.n_seeds >= self.max_seeds or effect.se <= 0  # se 0: more seeds cannot change a point
        t = 1.0 if last else float(np.clip(se_at(effect, seeds=self.max_seeds) ** 2 / effect.se ** 2, 1e-6, 1.0))
        if fractions and t <= fractions[-1]:
            t = 1.0 if last else min(1.0, fractions[-1] + 1e-6)  # information only grows
        fractions.append(t)
        bounds = spending_bounds(fractions if last or t == 1.0 else fractions + [1.0], self.alpha)
        bound, final = float(bounds[len(fractions) - 1]), float(bounds[-1])
        z = _z_equivalent(effect)
        power = _conditional_power(z, t, final)
        if abs(z) >= bound:
            status = VERDICTS[0] if np.sign(z) == direction else VERDICTS[1]
        elif t >= 1.0:
            status = VERDICTS[2]
        elif power < self.futility:
            status = "futile"
        else:
            status = "continue"
        half = bound * effect.se
        return Look(key, effect.n_seeds, t, float(z), bound, status, effect.estimate - half, effect.estimate + half,
                    power)


def _z_equivalent(effect: Effect) -> float:
    """The normal z with the same two-sided p-value as the finding's t statistic at its degrees of freedom: with
    few seeds the seed part is estimated from few degrees of freedom, and the boundaries (normal) must not read a
    t of 2.7 at 2 degrees of freedom as a z of 2.7."""
    if effect.se <= 0:
        return float(np.sign(effect.estimate)) * np.inf if effect.estimate else 0.0
    t = effect.estimate / effect.se
    return float(np.sign(t) * st.norm.isf(st.t.sf(abs(t), effect.df)))


def _conditional_power(z: float, t: float, final: float) -> float:
    """The chance of |Z| >= final at t = 1 given Z = z at t, if the drift is the current estimate's."""
    if t >= 1.0 or not np.isfinite(z):
        return float(abs(z) >= final)
    b = z * np.sqrt(t)
    mean, sd = b / t, np.sqrt(1 - t)  # B(1) | B(t) ~ N(b + (b / t)(1 - t), 1 - t)
    return float(st.norm.sf((final - mean) / sd) + st.norm.cdf((-final - mean) / sd))
