"""Intervals for a study's findings that account for prompt sampling, seeds and learners.

A study runs, per seed s, a split of the prompts (held-out prompts H_s, different per seed) and several *units*
(learners) that are all evaluated on the SAME held-out prompts of that seed. A finding compares two arms a and b
paired within each unit and prompt. A unit carries per-prompt arrays num_a, num_b and a common denominator den over
its seed's held-out prompts, and its effect over a set S of prompts (with multiplicity) is

    effect(S) = (sum_S num_a - sum_S num_b) / sum_S den

(a Best-of-N gain difference: num = gold of the arm's pick - random, den = oracle - random; an accuracy above
chance: num_a = correct pairs, num_b = 0.5 * pairs, den = pairs). The study's estimate is the mean over seeds of the
mean over that seed's units of the unit effect on all its prompts.

    Unit(seed, name, prompts, num_a, num_b, den)     one learner's per-prompt arrays on one seed's held-out prompts
    paired_effect(units, level, pool)                -> Effect: estimate, standard error, interval, p-value, and the
                                                        variance components (Components) that plan the next study
    verdict(lo, hi, direction)                       "reproduced" / "reversed" / "not reproduced (inconclusive)"
    Effect.verdict(direction), Effect.interval()     the same for an Effect; "+estimate [+lo, +hi]"
    agreement(first, second, direction)              replication check over two disjoint halves of the prompts

What the interval is about: the effect on NEW prompts of the same kind (the pool is a sample of prompts) with new
training randomness (seeds). The held-out sets of different seeds are random subsets of ONE pool, so they share
prompts: a prompt held out by three seeds weighs three times in the estimate, and its luck is counted once, not
three times independently. The model is crossed random effects, per prompt p and seed s,

    y_ps = mu + a_p + b_s + e_ps        a: prompt (sigma_a^2), b: seed (sigma_b^2), e: prompt x seed (sigma_e^2)

and the variance of the estimate is estimated in two parts (see paired_effect): the prompt part by the prompt-
clustered linearisation (sandwich) of the ratio estimator, in which each distinct prompt contributes once with all
its seeds and units, and the seed part, sigma_b^2 / S, by the method of moments: the seeds' spread less its prompt
part (sigma_e^2 from the paired differences on the prompts two seeds share, which cancel a_p). The interval is
Student-t with Welch-Satterthwaite degrees of freedom. The previous estimator, a two-stage bootstrap (seeds, then
each seed's prompts; `estimator="two-stage bootstrap"`), counts the prompt variance in both stages and ignores that
seeds share prompts: tests/evaluation/test_intervals_coverage.py and benchmarks/bench_intervals.py compare their
coverage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as st

from embrm.core import EmbrmError

VERDICTS = ("reproduced", "reversed", "not reproduced (inconclusive)")
ESTIMATORS = ("random effects", "two-stage bootstrap")


@dataclass(frozen=True, eq=False)
class Unit:
    """One unit (e.g. a learner) of one seed: per-prompt arrays over that seed's held-out prompts.

    prompts: (P,) prompt ids (stored as str, unique); num_a, num_b, den: (P,) finite float64 with sum(den) > 0.
    Every unit of a seed must hold the same prompt ids (in any order: paired_effect aligns them by id).
    Checked on construction; a bad unit raises a one-line EmbrmError. (eq=False: the fields are arrays.)
    """

    seed: int
    name: str
    prompts: np.ndarray
    num_a: np.ndarray
    num_b: np.ndarray
    den: np.ndarray

    def __post_init__(self):
        who = f"unit {self.name!r} of seed {self.seed}"
        prompts = np.asarray(self.prompts)
        if prompts.ndim != 1 or len(prompts) == 0:
            raise EmbrmError(f"{who}: prompts must be a non-empty 1-D array of prompt ids; got shape {prompts.shape}")
        prompts = prompts.astype(str)
        if len(np.unique(prompts)) != len(prompts):
            raise EmbrmError(f"{who}: prompt ids must be unique (one row per held-out prompt); found duplicates")
        object.__setattr__(self, "prompts", prompts)
        for key in ("num_a", "num_b", "den"):
            try:
                values = np.asarray(getattr(self, key), dtype=np.float64)
            except (TypeError, ValueError):
                raise EmbrmError(f"{who}: {key} must be numeric") from None
            if values.shape != prompts.shape:
                raise EmbrmError(f"{who}: {key} has shape {values.shape} but there are {len(prompts)} prompts: "
                                 f"give one value per held-out prompt")
            if not np.all(np.isfinite(values)):
                raise EmbrmError(f"{who}: {key} has {int((~np.isfinite(values)).sum())} non-finite value(s) "
                                 f"(NaN/inf): drop or fix those prompts")
            object.__setattr__(self, key, values)
        if not self.den.sum() > 0:
            raise EmbrmError(f"{who}: the denominator sums to {self.den.sum():g} over its prompts; it must be > 0")


@dataclass(frozen=True)
class Components:
    """The variance components of a finding's per-prompt effects and the design they were measured on.

    prompt, interaction, seed: sigma_a^2 (a prompt's own effect), sigma_e^2 (prompt x seed: what changes when the
        same prompt is held out by another seed) and sigma_b^2 (a seed's training and split), in squared units of
        the effect. `interaction` is 0 and folded into `prompt` when no two seeds share >= 2 prompts.
    seeds, held_out, pool: S, the mean held-out prompts per seed (m) and the prompts the splits draw from (P).
    """

    prompt: float
    interaction: float
    seed: float
    seeds: int
    held_out: float
    pool: int

    def variance(self, seeds=None, pool=None):
        """The model's variance of the estimate with `seeds` seeds and a pool of `pool` prompts (the held-out
        fraction m / P kept): sigma_a^2 ((1 - f) / (S m) + 1 / P) + sigma_e^2 / (S m) + sigma_b^2 / S.
        The 1 / P term is the floor more seeds cannot remove: every seed draws from the same pool. seeds and pool
        may be arrays (a float or an array comes back)."""
        s = np.asarray(self.seeds if seeds is None else seeds, dtype=np.float64)
        p = np.asarray(self.pool if pool is None else pool, dtype=np.float64)
        f = min(self.held_out / self.pool, 1.0)
        m = f * p
        v = self.prompt * ((1 - f) / (s * m) + 1 / p) + self.interaction / (s * m) + self.seed / s
        return float(v) if v.ndim == 0 else v

    def seeds_for(self, variance: float) -> float | None:
        """The (fractional) seeds at which `variance` would be reached with this pool: the model is per_seed / S +
        sigma_a^2 / P; None when `variance` is at or below that prompt floor."""
        f = min(self.held_out / self.pool, 1.0)
        room = variance - self.prompt / self.pool
        per_seed = (self.prompt * (1 - f) + self.interaction) / self.held_out + self.seed
        return per_seed / room if room > 0 else None

    def pool_for(self, variance: float) -> float | None:
        """The (fractional) pool prompts at which `variance` would be reached with these seeds (held-out fraction
        kept): the model is per_prompt / P + sigma_b^2 / S; None at or below that seed floor."""
        f = min(self.held_out / self.pool, 1.0)
        room = variance - self.seed / self.seeds
        per_prompt = self.prompt * ((1 - f) / (self.seeds * f) + 1) + self.interaction / (self.seeds * f)
        return per_prompt / room if room > 0 else None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Effect:
    """A finding's estimate with its interval.

    estimate: mean over seeds of the mean over the seed's units of effect(all held-out prompts).
    se: its standard error (see paired_effect); lo, hi: the `level` (default 95 %) interval estimate -/+ z se;
        p_value: two-sided, of "no effect" (Student t with df degrees of freedom); the interval excludes 0 iff
        p < 1 - level. df: Welch-Satterthwaite's (capped at 1e6: normal).
    effect_size: estimate / sd of the per-prompt differences (num_a - num_b) / mean(den), averaged over a seed's
        units and pooled over seeds (ddof=1); NaN when that sd is 0 or there is a single prompt.
    n_seeds, n_units, n_prompts: seeds, units over all seeds, held-out prompts counted once per seed.
    method: a short human sentence saying how the interval was computed (used verbatim in reports).
    components: the variance components (None for the two-stage bootstrap), for planning (embrm.evaluation.power).
    """

    estimate: float
    lo: float
    hi: float
    effect_size: float
    n_seeds: int
    n_units: int
    n_prompts: int
    method: str
    level: float = field(default=0.95)
    se: float = float("nan")
    p_value: float = float("nan")
    components: Components | None = None
    df: float = 1e6

    def verdict(self, direction: int = +1) -> str:
        """The verdict of this interval on a claim of `direction` (see `verdict`)."""
        return verdict(self.lo, self.hi, direction)

    def interval(self, digits: int = 3) -> str:
        """"+estimate [+lo, +hi]": the one way reports write an effect."""
        return f"{self.estimate:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Effect:
        d = dict(d)
        if d.get("components") is not None:
            d["components"] = Components(**d["components"])
        return cls(**d)


def verdict(lo: float, hi: float, direction: int = +1) -> str:
    """The one verdict of an interval [lo, hi] on a claim that the effect is > 0 (direction +1) or < 0 (-1):
    'reproduced' iff it excludes 0 in the claimed direction, 'reversed' iff it excludes 0 the other way, else
    'not reproduced (inconclusive)' (VERDICTS, in that order)."""
    direction = _direction(direction)
    if lo > 0:
        return VERDICTS[0] if direction > 0 else VERDICTS[1]
    if hi < 0:
        return VERDICTS[0] if direction < 0 else VERDICTS[1]
    return VERDICTS[2]


def _direction(direction: int) -> int:
    if direction not in (1, -1):
        raise EmbrmError(f"direction must be +1 (claim: a > b) or -1 (claim: a < b); got {direction!r}")
    return int(direction)


def agreement(first: Effect, second: Effect, direction: int = +1) -> str:
    """Replication check of one finding on two disjoint halves of the prompts.

    'agree'                          both halves give the same verdict (both reproduced, both reversed, or both
                                     inconclusive) and their estimates have the same sign;
    'disagree'                       one half reproduces the claim and the other reverses it;
    'inconclusive in first half'     the second half is conclusive (reproduced or reversed), the first is not;
    'inconclusive in second half'    the first half is conclusive, the second is not;
    'inconclusive in both halves'    neither half is conclusive and their estimates differ in sign;
    'estimates differ in sign'       the remaining corner (same conclusive verdict, opposite-signed estimates:
                                     only possible when a percentile interval excludes its own estimate).
    """
    direction = _direction(direction)
    v1, v2 = first.verdict(direction), second.verdict(direction)
    inconclusive = VERDICTS[2]
    if {v1, v2} == {"reproduced", "reversed"}:
        return "disagree"
    if v1 == v2 and np.sign(first.estimate) == np.sign(second.estimate):
        return "agree"
    if v1 == inconclusive and v2 == inconclusive:
        return "inconclusive in both halves"
    if v1 == inconclusive:
        return "inconclusive in first half"
    if v2 == inconclusive:
        return "inconclusive in second half"
    return "estimates differ in sign"


# ----------------------------------------------------------------------------- per-seed matrices

@dataclass(frozen=True)
class _Seed:
    """One seed's units aligned on its prompts: diff = num_a - num_b and den, each (P_s, U_s)."""

    prompts: np.ndarray
    diff: np.ndarray
    den: np.ndarray

    @property
    def unit_effects(self) -> np.ndarray:
        return self.diff.sum(0) / self.den.sum(0)

    @property
    def estimate(self) -> float:
        return float(self.unit_effects.mean())

    def values(self) -> np.ndarray:
        """(P_s,) per-prompt effect values y_ps whose mean is the seed's estimate: the linearisation of the mean
        over units of the ratio sum(diff) / sum(den) (each unit's influence, P_s (diff - effect den) / sum(den)),
        plus the estimate."""
        influence = (self.diff - self.unit_effects * self.den) / self.den.sum(0)
        return len(self.prompts) * influence.mean(axis=1) + self.estimate


def _seed_matrices(units: list[Unit]) -> _Seed:
    """The seed's units' columns aligned on the first unit's prompt order."""
    ref = units[0].prompts
    order_ref = np.argsort(ref)
    diffs, dens = [], []
    names = set()
    for u in units:
        if u.name in names:
            raise EmbrmError(f"seed {u.seed} has two units named {u.name!r}: give each unit of a seed its own name")
        names.add(u.name)
        if len(u.prompts) != len(ref) or not np.array_equal(np.sort(u.prompts), ref[order_ref]):
            raise EmbrmError(f"seed {u.seed}: unit {u.name!r} has a different prompt set than unit "
                             f"{units[0].name!r}; all units of a seed must be evaluated on the same held-out prompts")
        where = np.empty(len(ref), dtype=np.intp)  # position in u of each reference prompt
        where[order_ref] = np.argsort(u.prompts)
        diffs.append(u.num_a[where] - u.num_b[where])
        dens.append(u.den[where])
    return _Seed(ref, np.stack(diffs, axis=1), np.stack(dens, axis=1))


def _check_units(units, level: float) -> dict[int, _Seed]:
    units = list(units)
    if not units:
        raise EmbrmError("paired_effect needs at least one unit; got none")
    if not all(isinstance(u, Unit) for u in units):
        raise EmbrmError("paired_effect takes a list of embrm.evaluation.Unit")
    if not (0 < level < 1):
        raise EmbrmError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    by_seed: dict[int, list[Unit]] = {}
    for u in units:
        by_seed.setdefault(u.seed, []).append(u)
    return {s: _seed_matrices(by_seed[s]) for s in sorted(by_seed)}


# ----------------------------------------------------------------------------- the random-effects estimator

def _prompt_table(seeds: list[_Seed]) -> tuple[np.ndarray, np.ndarray]:
    """(Y, M), each (n distinct prompts, S): the seeds' per-prompt values y_ps (0 where not held out) and the mask
    of which seed held out which prompt."""
    ids = np.concatenate([s.prompts for s in seeds])
    _, index = np.unique(ids, return_inverse=True)
    col = np.repeat(np.arange(len(seeds)), [len(s.prompts) for s in seeds])
    Y = np.zeros((index.max() + 1, len(seeds)))
    M = np.zeros_like(Y)
    Y[index, col] = np.concatenate([s.values() for s in seeds])
    M[index, col] = 1.0
    return Y, M


def _seed_components(Y: np.ndarray, M: np.ndarray, estimates: np.ndarray) -> tuple[float, float, float]:
    """(sigma_b^2, sigma_e^2, degrees of freedom of the sigma_b^2 estimate) by the method of moments.

    sigma_e^2: two seeds s, t sharing k >= 2 prompts have paired differences d_p = y_ps - y_pt = (b_s - b_t) +
    (e_ps - e_pt) (a_p cancels), whose variance estimates 2 sigma_e^2 (pooled over the sharing pairs; matrix products
    over all pairs at once).
    sigma_b^2: the spread of the seed estimates, E[s_f^2] = sigma_b^2 + tau^2, less tau^2 = (sigma_a^2 + sigma_e^2)
    / m - c, its prompt part: the within-seed variance over m less c, the covariance two seeds' estimates get from
    the prompts they share (k sigma_a^2 / (m_s m_t), averaged over pairs). Truncated at 0 (REML does the same).
    Its degrees of freedom, (S - 1) (sigma_b^2 / (sigma_b^2 + tau^2))^2, say how little S seeds pin it down."""
    S = len(estimates)
    m = M.sum(0)
    within = ((Y - estimates) ** 2 * M).sum(0) / np.maximum(m - 1, 1)     # (S,) sigma_a^2 + sigma_e^2
    k = M.T @ M                                                           # (S, S) shared prompts
    pairs = np.triu(k >= 2, k=1)
    interaction = 0.0
    if pairs.any():
        total = Y.T @ M - M.T @ Y                                         # sum of y_s - y_t over shared prompts
        squares = (Y ** 2).T @ M + M.T @ (Y ** 2) - 2 * Y.T @ Y
        n = k[pairs]
        interaction = float(np.mean((squares[pairs] - total[pairs] ** 2 / n) / (n - 1))) / 2
    prompt = max(0.0, float(within.mean()) - interaction)
    upper = np.triu(np.ones((S, S), bool), k=1)
    shared = float(np.mean(k[upper] / np.outer(m, m)[upper])) * prompt
    tau = max(0.0, float(np.mean(within / m)) - shared)
    seed = max(0.0, float(estimates.var(ddof=1)) - tau)
    df = (S - 1) * (seed / (seed + tau)) ** 2 if seed > 0 else float(S - 1)
    return seed, interaction, df


def _random_effects(seeds: list[_Seed], pool: int | None) -> tuple[float, float, Components, str]:
    """(variance of the estimate, its degrees of freedom, the components, how they were found).

    The prompt part: the prompt-clustered sandwich of the estimate's linearisation, sum over distinct prompts of
    L_p^2 n / (n - 1), L_p the prompt's influence summed over the seeds that held it out (n - 1 degrees of
    freedom). The seed part: sigma_b^2 / S. Degrees of freedom of the sum: Welch-Satterthwaite."""
    S = len(seeds)
    estimates = np.array([s.estimate for s in seeds])
    Y, M = _prompt_table(seeds)
    m = M.sum(0)
    influence = ((Y - estimates) * M / m).sum(axis=1) / S         # (n,) L_p, summing to 0
    n = len(influence)
    prompt_part = float((influence ** 2).sum()) * n / max(n - 1, 1)
    if S >= 2:
        seed_var, interaction, seed_df = _seed_components(Y, M, estimates)
        how = "seed part from the seeds' spread less its prompt part"
    else:
        seed_var, interaction, seed_df = 0.0, 0.0, 1.0
        how = "one seed: seed-to-seed variation not captured"
    within = float(np.mean(((Y - estimates) ** 2 * M).sum(0) / np.maximum(m - 1, 1)))
    components = Components(prompt=max(0.0, within - interaction), interaction=interaction, seed=seed_var, seeds=S,
                            held_out=float(m.mean()), pool=int(max(pool or 0, n)))
    seed_part = seed_var / S
    variance = prompt_part + seed_part
    parts = prompt_part ** 2 / max(n - 1, 1) + seed_part ** 2 / seed_df
    return variance, min(variance ** 2 / parts, 1e6) if parts > 0 else 1e6, components, how


# ----------------------------------------------------------------------------- the two-stage bootstrap (previous)

def _prompt_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) float64: how often each prompt is drawn in each replicate (n draws with replacement)."""
    draws = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _two_stage_bootstrap(seeds: list[_Seed], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) replicates of the estimate: the seeds drawn with replacement (when >= 2), then each drawn seed's
    held-out prompts, one draw per seed shared by its units and both arms (Davison & Hinkley 1997, §3.8). NaN where a
    unit's resampled denominator is <= 0."""
    rng = np.random.default_rng(seed)
    stats = []
    for s in seeds:
        counts = _prompt_counts(rng, n_boot, len(s.prompts))
        num, tot = counts @ s.diff, counts @ s.den
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.append(np.where(tot > 0, num / tot, np.nan).mean(axis=1))
    stats = np.stack(stats)                                     # (S, n_boot)
    if len(seeds) < 2:
        return stats[0]
    pick = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    return stats[pick, np.arange(n_boot)[:, None]].mean(axis=1)


# ----------------------------------------------------------------------------- the effect

def _effect_size(seeds: list[_Seed], estimate: float) -> float:
    d = np.concatenate([(s.diff / s.den.mean(0)).mean(axis=1) for s in seeds])
    sd = float(d.std(ddof=1)) if len(d) >= 2 else 0.0
    return estimate / sd if sd > 0 else float("nan")


def _student(estimate: float, se: float, df: float, level: float) -> tuple[float, float, float]:
    """(lo, hi, two-sided p) of a Student-t interval with df degrees of freedom (normal when infinite); se = 0 is a
    point (p 0 unless the estimate is 0)."""
    q = st.t.ppf(0.5 + level / 2, df)
    if se > 0:
        return estimate - q * se, estimate + q * se, float(2 * st.t.sf(abs(estimate) / se, df))
    return estimate, estimate, 0.0 if estimate != 0 else 1.0


def paired_effect(units: list[Unit], *, level: float = 0.95, pool: int | None = None,
                  estimator: str = "random effects", n_boot: int = 2000, seed: int = 0) -> Effect:
    """Estimate, standard error, interval and p-value of a paired effect (arm a minus arm b) over seeds and units.

    estimator "random effects" (default): se^2 = the prompt part + sigma_b^2 / S (see the module docstring): the
        prompt part is the prompt-clustered sandwich variance of the estimate's linearisation (each distinct prompt
        once, with every seed and unit that held it out, so that seeds sharing prompts are not independent draws);
        sigma_b^2 by the method of moments (_seed_components). The interval is estimate -/+ t se, t at the
        Welch-Satterthwaite degrees of freedom of the two parts (the seed part's are few with few seeds).
        Deterministic; no resampling. `pool`: the prompts the seeds' splits draw from (for planning: the 1 / P
        floor of Components.variance); None counts the distinct held-out prompts seen.
    estimator "two-stage bootstrap": the previous interval (seeds resampled, then each seed's prompts; n_boot
        replicates, percentile interval, `seed` for its draws), kept to compare coverage; se is the replicates' sd.
    """
    if estimator not in ESTIMATORS:
        raise EmbrmError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
    by_seed = _check_units(units, level)
    seeds = list(by_seed.values())
    n_units, n_prompts = sum(s.diff.shape[1] for s in seeds), sum(len(s.prompts) for s in seeds)
    estimate = float(np.mean([s.estimate for s in seeds]))
    pct = f"{level * 100:g} %"
    if estimator == "two-stage bootstrap":
        if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
            raise EmbrmError(f"n_boot must be a positive integer; got {n_boot!r}")
        boot = _two_stage_bootstrap(seeds, n_boot, seed)
        if np.isnan(boot).all():
            raise EmbrmError("every bootstrap replicate had a unit whose resampled denominator is <= 0: the "
                             "denominators are too sparse for an interval")
        lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])
        se = float(np.nanstd(boot, ddof=1)) if n_boot >= 2 else float("nan")
        p = float(min(1.0, 2 * min(np.nanmean(boot <= 0), np.nanmean(boot >= 0)) + 1 / n_boot))
        method = (f"{pct} percentile interval of a two-stage bootstrap ({n_boot} replicates): the {len(seeds)} "
                  f"seed(s) resampled, then each seed's held-out prompts")
        return Effect(estimate, float(lo), float(hi), _effect_size(seeds, estimate), len(seeds), n_units,
                      n_prompts, method, float(level), se, p)
    variance, df, components, how = _random_effects(seeds, pool)
    se = float(np.sqrt(variance))
    lo, hi, p = _student(estimate, se, df, level)
    method = (f"{pct} interval, estimate -/+ t se (Welch-Satterthwaite: {_df_text(df)} degrees of freedom); se from "
              f"crossed random effects of prompts and seeds: the prompt part clustered by prompt over the "
              f"{components.pool} prompts' pool ({int(np.ceil(components.held_out))} held out per seed), {how}")
    return Effect(estimate, float(lo), float(hi), _effect_size(seeds, estimate), len(seeds), n_units, n_prompts,
                  method, float(level), se, p, components, float(df))


def _df_text(df: float) -> str:
    return "many" if not np.isfinite(df) or df > 1000 else f"{df:.0f}" if df >= 10 else f"{df:.1f}"
