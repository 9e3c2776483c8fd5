"""Intervals for a study's findings that account for prompt sampling, seeds and learners.

A study runs, per seed s, a split of the prompts (held-out prompts P_s, different per seed) and several *units*
(learners) that are all evaluated on the SAME held-out prompts of that seed. A finding compares two arms a and b
paired within each unit and prompt. A unit carries per-prompt arrays num_a, num_b and a common denominator den over
its seed's held-out prompts, and its effect over a set S of prompts (with multiplicity) is

    effect(S) = (sum_S num_a - sum_S num_b) / sum_S den

(a Best-of-N gain difference: num = gold of the arm's pick - random, den = oracle - random; an accuracy above
chance: num_a = correct pairs, num_b = 0.5 * pairs, den = pairs). The study's estimate is the mean over seeds of the
mean over that seed's units of the unit effect on all its prompts.

    Unit(seed, name, prompts, num_a, num_b, den)     one learner's per-prompt arrays on one seed's held-out prompts
    paired_effect(units, n_boot, level, seed)        -> Effect: estimate, two-stage bootstrap interval, effect size
    verdict(lo, hi, direction)                       "reproduced" / "reversed" / "not reproduced (inconclusive)"
    Effect.verdict(direction), Effect.interval()     the same for an Effect; "+estimate [+lo, +hi]"
    agreement(first, second, direction)              replication check over two disjoint halves of the prompts

Why not a Student-t interval over (learner, seed) pairs: the learners of one seed share their held-out prompts, so
their effects are strongly correlated (the t interval counts them as independent and is too narrow), and the
interval never sees which prompts happened to be held out. The two-stage bootstrap resamples both sources of
variation: seeds (split + training randomness) and, within a seed, its prompts, with one prompt draw shared by all
units and both arms of the seed so that every comparison stays paired.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from embrm.core import EmbrmError

VERDICTS = ("reproduced", "reversed", "not reproduced (inconclusive)")


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
class Effect:
    """A finding's estimate with its interval.

    estimate: mean over seeds of the mean over the seed's units of effect(all held-out prompts).
    lo, hi: the `level` (default 95 %) percentile interval of the two-stage bootstrap (see paired_effect).
    effect_size: estimate / sd of the per-prompt differences (num_a - num_b) / mean(den), averaged over a seed's
        units and pooled over seeds (ddof=1); NaN when that sd is 0 or there is a single prompt.
    n_seeds, n_units, n_prompts: seeds, units over all seeds, held-out prompts counted once per seed.
    method: a short human sentence saying how the interval was computed (used verbatim in reports).
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

    def verdict(self, direction: int = +1) -> str:
        """The verdict of this interval on a claim of `direction` (see `verdict`)."""
        return verdict(self.lo, self.hi, direction)

    def interval(self, digits: int = 3) -> str:
        """"+estimate [+lo, +hi]": the one way reports write an effect."""
        return f"{self.estimate:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"

    def to_dict(self) -> dict:
        return asdict(self)


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


def _seed_matrices(units: list[Unit]) -> tuple[np.ndarray, np.ndarray]:
    """(diff, den), each (P, U): the seed's units' columns aligned on the first unit's prompt order."""
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
        # position in u of each reference prompt
        where = np.empty(len(ref), dtype=np.intp)
        where[order_ref] = np.argsort(u.prompts)
        diffs.append(u.num_a[where] - u.num_b[where])
        dens.append(u.den[where])
    return np.stack(diffs, axis=1), np.stack(dens, axis=1)


def _prompt_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) float64: how often each prompt is drawn in each replicate (n draws with replacement)."""
    draws = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def paired_effect(units: list[Unit], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Effect:
    """Estimate and two-stage bootstrap interval of a paired effect (arm a minus arm b) over seeds and units.

    Interval: a two-stage (multistage) bootstrap, Davison & Hinkley (1997), Bootstrap Methods and their
    Application, §3.8. Each of the n_boot replicates (1) draws the seeds with replacement (when there are >= 2
    seeds), then (2) for each drawn seed draws its held-out prompts with replacement: ONE prompt draw per seed per
    replicate, shared by all units and both arms of that seed (paired), and recomputes the estimate (mean over the
    drawn seeds of the mean over the seed's units of effect(S)). The interval is the percentile interval at `level`.
    Resampling at both stages is mildly conservative (D&H §3.8: the seed-level spread already contains prompt
    noise), which is the safe side for a verdict. With one seed only the prompts are resampled and the interval
    says nothing about seed-to-seed variation; `method` says so.

    Vectorised: per seed a (n_boot, P_s) count matrix C of prompt draws, sums are C @ (P_s, U_s) matrices, and the
    seed stage gathers from the (S, n_boot) matrix of per-seed replicate statistics. Deterministic given `seed`.
    Replicates in which a unit's resampled denominator is <= 0 are dropped (`method` says how many).
    """
    units = list(units)
    if not units:
        raise EmbrmError("paired_effect needs at least one unit; got none")
    if not all(isinstance(u, Unit) for u in units):
        raise EmbrmError("paired_effect takes a list of embrm.evaluation.Unit")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise EmbrmError(f"n_boot must be a positive integer; got {n_boot!r}")
    if not (0 < level < 1):
        raise EmbrmError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")

    by_seed: dict[int, list[Unit]] = {}
    for u in units:
        by_seed.setdefault(u.seed, []).append(u)
    seeds = sorted(by_seed)
    rng = np.random.default_rng(seed)

    seed_estimates, seed_boot, pooled = [], [], []
    for s in seeds:
        diff, den = _seed_matrices(by_seed[s])                      # (P, U)
        seed_estimates.append(float(np.mean(diff.sum(0) / den.sum(0))))
        pooled.append((diff / den.mean(0)).mean(axis=1))            # per-prompt standardised differences
        counts = _prompt_counts(rng, n_boot, diff.shape[0])         # (n_boot, P)
        num, tot = counts @ diff, counts @ den                      # (n_boot, U)
        with np.errstate(divide="ignore", invalid="ignore"):
            seed_boot.append(np.where(tot > 0, num / tot, np.nan).mean(axis=1))
    stats = np.stack(seed_boot)                                     # (S, n_boot)
    n_seeds = len(seeds)
    if n_seeds >= 2:
        pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
        boot = stats[pick, np.arange(n_boot)[:, None]].mean(axis=1)  # (n_boot,)
    else:
        boot = stats[0]

    dropped = int(np.isnan(boot).sum())
    if dropped == n_boot:
        raise EmbrmError("every bootstrap replicate had a unit whose resampled denominator is <= 0: the "
                         "denominators are too sparse for an interval")
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(boot, [alpha, 1 - alpha])

    d = np.concatenate(pooled)
    sd = float(d.std(ddof=1)) if len(d) >= 2 else 0.0
    estimate = float(np.mean(seed_estimates))
    effect_size = estimate / sd if sd > 0 else float("nan")

    n_prompts = sum(len(by_seed[s][0].prompts) for s in seeds)
    pct = f"{level * 100:g} %"
    if n_seeds >= 2:
        method = (f"{pct} percentile interval of a two-stage bootstrap (Davison & Hinkley 1997, §3.8; "
                  f"{n_boot} replicates): the {n_seeds} seeds resampled, then each seed's held-out prompts, one "
                  f"draw per seed shared by its units ({len(units)} in all) and both arms")
    else:
        method = (f"{pct} percentile bootstrap over the {n_prompts} held-out prompts of the single seed "
                  f"({n_boot} replicates, one draw shared by its {len(units)} unit(s) and both arms); "
                  f"seed-to-seed variation is not captured")
    if dropped:
        method += f"; {dropped} replicate(s) with a resampled denominator <= 0 dropped"
    return Effect(estimate=estimate, lo=float(lo), hi=float(hi), effect_size=float(effect_size), n_seeds=n_seeds,
                  n_units=len(units), n_prompts=n_prompts, method=method, level=float(level))
