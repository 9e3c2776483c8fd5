"""A study's findings: the anchors' claims and the length-control questions, each measured from the jobs'
per-prompt records with an interval over seeds AND held-out prompts (evaluation.paired_effect), and a verdict.

    found = findings(results, bon)           # results: the jobs' JobResults (embrm.studies._store)
    [f.markdown() for f in found]

A claim is "reproduced" only when its 95 % interval excludes 0 in the claimed direction, "reversed" only when it
excludes 0 the other way, otherwise "not reproduced (inconclusive)". Every comparison is paired: two aggregations of
one reward, two rewards of one seed, or two annotators of one learner, on the same held-out prompts.
`replication` compares the findings of two disjoint halves of the prompts (`embrm run --replicate`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

import numpy as np
import polars as pl

from embrm.evaluation import VERDICTS, Effect, Look, Power, Unit, agreement, family_control, paired_effect, power_of
from embrm.studies._store import JobResult
from embrm.studies._tables import peaks

CONSERVATIVE = ("min", "uwo", "lcb", "conformal")  # Coste et al.'s conservative aggregations (+ a calibrated one)


@dataclass
class Finding:
    """One claim about one dataset: its measured effect (None when no job measured it) and verdict."""

    key: str  # stable across runs and halves: dataset | labels | claim
    dataset: str
    labels: str  # the annotators whose jobs it pools ("bt10", "all", ...)
    source: str  # who claimed it (a paper) or "embrm" for the questions of this study
    claim: str
    measure: str  # what the effect is a difference of
    direction: int  # +1: the claim says the effect is > 0; -1: < 0
    effect: Effect | None
    note: str = ""  # a descriptive finding (no test) says what it counted here
    q_value: float | None = None  # Benjamini-Hochberg over the study's findings (`decide`)
    family_q: float = 0.05  # the false discovery rate the family is controlled at
    power: Power | None = None  # what the design could detect (`decide`)
    sequential: Look | None = None  # the last look of `embrm run --until-decided`

    @property
    def verdict(self) -> str:
        """The verdict of the 95 % interval (or, after --until-decided, of the group-sequential boundary)."""
        if self.sequential is not None:
            return self.sequential.status if self.sequential.status in VERDICTS else VERDICTS[2]
        return self.effect.verdict(self.direction) if self.effect is not None else "not measured"

    @property
    def adjusted_verdict(self) -> str:
        """The verdict once the family is controlled: a conclusive verdict stands only when its q-value <= family_q
        (a sequential verdict is already the boundary's)."""
        v = self.verdict
        if v in VERDICTS[:2] and self.sequential is None and self.q_value is not None and self.q_value > self.family_q:
            return VERDICTS[2]
        return v

    def markdown(self) -> str:
        learners = "" if self.source == "embrm" else ", plain learners"
        head = f"**{self.dataset}, {self.labels} labels{learners}** — {self.source}: {self.claim}"
        if self.effect is None:
            return f"{head}: {self.note}"
        e, look = self.effect, self.sequential
        interval = e.interval() if look is None else (
            f"{e.estimate:+.3f} [{look.lo:+.3f}, {look.hi:+.3f}] (repeated interval at look {look.seeds} seeds, "
            f"|z| {abs(look.z):.2f} vs bound {look.bound:.2f})")
        return (f"{head}: {self.measure} {interval} (p {_p(e.p_value)}, q {_p(self.q_value)}; effect size "
                f"{e.effect_size:+.2f}; {e.n_seeds} seeds, {e.n_units} runs, {e.n_prompts} held-out prompts) "
                f"→ **{self.verdict}**{self._after_family()}.{self._power_text()}")

    def _after_family(self) -> str:
        if self.adjusted_verdict == self.verdict:
            return "" if self.verdict == VERDICTS[2] or self.sequential else ", survives the family"
        return f", **{self.adjusted_verdict}** after the family (q > {self.family_q:g})"

    def _power_text(self) -> str:
        if self.power is None or self.verdict != VERDICTS[2]:
            return ""
        p = self.power
        seeds = (f"{p.seeds_needed} seeds on the same prompts" if p.seeds_needed else
                 "more seeds than any number (the pool's prompts set a floor)")
        prompts = (f"a pool of {_count(p.prompts_needed)} prompts with the same seeds" if p.prompts_needed else
                   "more prompts than any pool (the seeds' own spread sets a floor)")
        return (f" Detectable at {p.power:.0%} power: |effect| ≥ {p.mde:.3f}; detecting the observed estimate needs "
                f"{seeds}, or {prompts}.")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("key", "dataset", "labels", "source", "claim", "measure", "direction",
                                              "note", "verdict", "adjusted_verdict", "q_value", "family_q")} | {
            "effect": self.effect and self.effect.to_dict(), "power": self.power and self.power.to_dict(),
            "sequential": self.sequential and self.sequential.to_dict()}


def _count(n: int) -> str:
    return f"{n:,}" if n < 1_000_000 else "over a million"


def _p(p: float | None) -> str:
    return "–" if p is None or not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def decide(found: list[Finding], results: list[JobResult], q: float = 0.05) -> list[Finding]:
    """The family: every tested finding of one study (its halves are families of their own). Sets each finding's
    Benjamini-Hochberg q-value and its Power (embrm.evaluation.power_of), in place; returns the list. The pool a
    finding's seeds split (for the power's 1 / P floor) is its held-out prompts per seed over the test share."""
    test_size = {r.dataset: r.protocol.test_size for r in results}
    tested = [f for f in found if f.effect is not None]
    for f, qv in zip(tested, family_control([f.effect.p_value for f in tested])):
        f.q_value, f.family_q = (None if np.isnan(qv) else float(qv)), q
        c = f.effect.components
        if c is not None and f.dataset in test_size:
            pool = max(c.pool, int(round(c.held_out / test_size[f.dataset])))
            f.effect = replace(f.effect, components=replace(c, pool=pool))
        f.power = power_of(f.effect)
    return found


# ----------------------------------------------------------------------------- per-prompt records -> units

def _records(results: list[JobResult], dataset: str, variant: str) -> list[JobResult]:
    return [r for r in results if r.dataset == dataset and variant in r.bon]


def _bon_units(runs: list[tuple[JobResult, JobResult]], variant: str, a: str, b: str, measure: str) -> list[Unit]:
    """One unit per (result_a, result_b) run pair: proxy a of result_a against proxy b of result_b, per prompt.
    measure "gain": num = pick - random, den = oracle - random; "excluded": num = share of excluded picks."""
    units = []
    for ra, rb in runs:
        pa, pb = ra.bon[variant].per_prompt, rb.bon[variant].per_prompt
        if a not in pa.pick or b not in pb.pick or pa.prompt_id != pb.prompt_id:
            continue
        if measure == "excluded":
            if pa.excluded is None or pb.excluded is None:
                continue
            num_a, num_b = np.asarray(pa.excluded[a]), np.asarray(pb.excluded[b])
            den = np.ones(len(num_a))
        else:
            random, oracle = np.asarray(pa.random), np.asarray(pa.oracle)
            num_a, num_b = np.asarray(pa.pick[a]) - random, np.asarray(pb.pick[b]) - random
            den = oracle - random
        name = ra.learner if ra is rb else f"{ra.learner}/{rb.learner}"
        units.append(Unit(ra.seed, f"{ra.noise}/{name}", np.asarray(pa.prompt_id), num_a, num_b, den))
    return units


def _effect(units: list[Unit]) -> Effect | None:
    units = [u for u in units if u.den.sum() > 0]
    return paired_effect(units) if units else None


def _same_job(results: list[JobResult], noise: str | None, learners=None) -> list[tuple[JobResult, JobResult]]:
    return [(r, r) for r in results if (noise is None or r.noise == noise)
            and (learners is None or r.learner in learners)]


def _paired_runs(results: list[JobResult], learner: str, base: str) -> list[tuple[JobResult, JobResult]]:
    """(run of `learner`, run of `base`) of the same noise and seed."""
    other = {(r.noise, r.seed): r for r in results if r.learner == base}
    return [(r, other[(r.noise, r.seed)]) for r in results if r.learner == learner and (r.noise, r.seed) in other]


# ----------------------------------------------------------------------------- the claims

def _aggregation_findings(results: list[JobResult], dataset: str, noises: list[str]) -> list[Finding]:
    out = []
    pool = _records(results, dataset, "pool")
    for a, b, claim in (("min", "mean", "worst-case (WCO, min) beats the ensemble mean"),
                        ("uwo", "mean", "uncertainty-weighted (UWO) beats the ensemble mean"),
                        ("conformal", "mean", "a conformal lower bound (conservative, calibrated) beats the mean"),
                        ("mean", "single", "the ensemble mean beats a single member")):
        for noise in noises:
            effect = _effect(_bon_units(_same_job(pool, noise), "pool", a, b, "gain"))
            if effect is not None:
                out.append(Finding(f"{dataset}|{noise}|{a}-vs-{b}", dataset, noise, "Coste et al.", claim,
                                   f"gain difference ({a} − {b})", +1, effect))
    for variant, gold in (("pool", "gold"), ("pool-lc", "length-controlled gold")):
        effect = _effect(_bon_units(_same_job(_records(results, dataset, variant), None), variant, "mean", "length",
                                    "gain"))
        if effect is not None:
            out.append(Finding(f"{dataset}|all|mean-vs-length|{variant}", dataset, "all", "Sun et al.",
                               f"an embedding-based ensemble (mean) beats the length-only reward on {gold}",
                               "gain difference (mean − length)", +1, effect))
    probes = [v for v in {v for r in results if r.dataset == dataset for v in r.bon} if v.startswith("pool+")]
    for variant in sorted(probes):
        what = variant.removeprefix("pool+")
        for agg in CONSERVATIVE:
            effect = _effect(_bon_units(_same_job(_records(results, dataset, variant), None), variant, agg, "mean",
                                        "excluded"))
            if effect is not None:
                out.append(Finding(f"{dataset}|all|{agg}-vs-mean|{what}", dataset, "all", "Coste et al.",
                                   f"the conservative aggregation {agg} picks fewer {what} than the mean",
                                   f"{what} pick-rate difference ({agg} − mean)", -1, effect))
    return out


def _length_control_findings(results: list[JobResult], dataset: str) -> list[Finding]:
    """Per length-controlled learner: does it beat length-only on length-controlled gold, beat its plain learner
    there, and pick fewer probes than its plain learner?"""
    out = []
    controlled = {r.learner: r.plain_learner for r in results if r.dataset == dataset and not r.plain}
    for learner, base in sorted(controlled.items()):
        lc = _records(results, dataset, "pool-lc")
        effect = _effect(_bon_units(_same_job(lc, None, {learner}), "pool-lc", "mean", "length", "gain"))
        if effect is not None:
            out.append(Finding(f"{dataset}|all|{learner}-vs-length|pool-lc", dataset, "all", "embrm",
                               f"the length-controlled reward {learner} (mean) beats length-only on "
                               f"length-controlled gold", "gain difference (mean − length)", +1, effect))
        effect = _effect(_bon_units(_paired_runs(lc, learner, base), "pool-lc", "mean", "mean", "gain"))
        if effect is not None:
            out.append(Finding(f"{dataset}|all|{learner}-vs-{base}|pool-lc", dataset, "all", "embrm",
                               f"length control ({learner}) beats the plain {base} on length-controlled gold",
                               f"gain difference ({learner} − {base}, mean)", +1, effect))
        for variant in sorted({v for r in results for v in r.bon if v.startswith("pool+")}):
            what = variant.removeprefix("pool+")
            runs = _paired_runs(_records(results, dataset, variant), learner, base)
            effect = _effect(_bon_units(runs, variant, "mean", "mean", "excluded"))
            if effect is not None:
                out.append(Finding(f"{dataset}|all|{learner}-vs-{base}|{what}", dataset, "all", "embrm",
                                   f"length control ({learner}) picks fewer {what} than the plain {base}",
                                   f"{what} pick-rate difference ({learner} − {base}, mean)", -1, effect))
    return out


def _ensemble_size_findings(results: list[JobResult], dataset: str, noises: list[str]) -> list[Finding]:
    """A learner with its own ensemble size (`<learner>.k<K>`) against the same learner at the study's K, per noise:
    the gain of their means at n = N (Coste et al. report 4-5 members enough)."""
    out = []
    pool = _records(results, dataset, "pool")
    sized = {r.learner: (r.unsized_learner, r.k) for r in pool if r.sized}
    for learner, (base, k) in sorted(sized.items()):
        base_k = next((r.k for r in pool if r.learner == base), None)
        if base_k is None or base_k == k:
            continue
        bigger, smaller = (learner, base) if k > base_k else (base, learner)
        for noise in noises:
            runs = [p for p in _paired_runs(pool, learner, base) if p[0].noise == noise]
            effect = _effect(_bon_units(runs, "pool", "mean", "mean", "gain"))
            if effect is not None:
                out.append(Finding(f"{dataset}|{noise}|{learner}-vs-{base}", dataset, noise, "Coste et al.",
                                   f"the larger ensemble ({bigger}, K = {max(k, base_k)}) beats the smaller "
                                   f"({smaller}, K = {min(k, base_k)}) at n = N", f"gain difference ({learner} − "
                                   f"{base}, mean)", +1 if k > base_k else -1, effect))
    return out


def diverse_pairs(results: list[JobResult]) -> dict[str, str]:
    """{diverse learner: its independent twin} for the learners whose twin also ran."""
    names = {r.learner for r in results}
    return {r.learner: r.independent_learner for r in results if r.independent_learner in names}


def differences(mine: list[Unit], theirs: list[Unit]) -> list[Unit]:
    """Difference in differences: each unit of `mine` (a − b) against the unit of `theirs` at the same position
    (a − b of another learner, same seed), where both hold the same prompts."""
    return [Unit(m.seed, m.name, m.prompts, m.num_a - m.num_b, t.num_a - t.num_b, m.den)
            for m, t in zip(mine, theirs) if np.array_equal(m.prompts, t.prompts)]


def diversity_claim(learner: str, twin: str, agg: str) -> tuple[str, str]:
    """(claim, measure) of "members that differ make a conservative aggregation resist", shared with the RL one."""
    return (f"members that differ ({learner}) make {agg} resist: {agg} gains more over the mean than with "
            f"independent members ({twin})", f"difference in differences (({agg} − mean) of {learner} − "
                                             f"({agg} − mean) of {twin})")


def _diversity_findings(results: list[JobResult], dataset: str, noises: list[str]) -> list[Finding]:
    """Per diverse learner and conservative aggregation, per noise: (agg − mean) of the diverse ensemble against
    (agg − mean) of its independent twin at n = N, paired by seed and held-out prompt."""
    out = []
    pool = _records(results, dataset, "pool")
    for learner, twin in sorted(diverse_pairs(pool).items()):
        for agg, noise in ((a, n) for a in CONSERVATIVE for n in noises):
            units = [u for ra, rb in _paired_runs(pool, learner, twin) if ra.noise == noise
                     for u in differences(_bon_units([(ra, ra)], "pool", agg, "mean", "gain"),
                                          _bon_units([(rb, rb)], "pool", agg, "mean", "gain"))]
            effect = _effect(units)
            if effect is not None:
                claim, measure = diversity_claim(learner, twin, agg)
                out.append(Finding(f"{dataset}|{noise}|{agg}-vs-mean|{learner}-vs-{twin}", dataset, noise,
                                   "Coste et al.", claim, measure, +1, effect))
    return out


def _peak_units(runs: list[JobResult]) -> list[Unit]:
    """Per run: the mean's expected gold at the n where the OTHER seeds' mean curves peak (cross-fitted, so that the
    peak is not chosen on the prompts it is measured on) against its gold at n = N (the whole pool), per prompt."""
    units = []
    for r in runs:
        pp = r.bon["pool"].per_prompt
        others = [o.bon["pool"].per_prompt for o in runs if o.seed != r.seed
                  and o.learner == r.learner and o.noise == r.noise]
        others = [o for o in others if o.mean_curve is not None]
        if pp.mean_curve is None or not others:
            continue
        common = np.asarray(sorted(set(pp.n).intersection(*(o.n for o in others))))  # grids may differ
        curve = np.mean([np.nanmean(_array(o.mean_curve), axis=0)[np.searchsorted(o.n, common)] for o in others],
                        axis=0)
        peak = int(np.searchsorted(pp.n, common[np.nanargmax(curve)]))
        random, oracle = _array(pp.random), _array(pp.oracle)
        top = _array(pp.pick["mean"])
        at_peak = _array(pp.mean_curve)[:, peak]
        at_peak = np.where(np.isfinite(at_peak), at_peak, top)  # a pool smaller than the peak n: its whole pool
        units.append(Unit(r.seed, f"{r.noise}/{r.learner}", np.asarray(pp.prompt_id), at_peak - random,
                          top - random, oracle - random))
    return units


def _array(values) -> np.ndarray:
    """float64, None (NaN in JSON read back as null) as NaN."""
    return np.asarray(values, np.float64)


def _overoptimisation_findings(results: list[JobResult], dataset: str, noises: list[str]) -> list[Finding]:
    """Gao et al.: the ensemble mean's gold at its peak n exceeds its gold at n = N (it falls past the peak)."""
    out = []
    pool = _records(results, dataset, "pool")
    for noise in noises:
        effect = _effect(_peak_units([r for r in pool if r.noise == noise]))
        if effect is not None:
            out.append(Finding(f"{dataset}|{noise}|overoptimisation-drop", dataset, noise, "Gao et al.",
                               "over-optimisation: the ensemble mean's gold falls from its peak n to n = N "
                               "(peak n chosen on the other seeds' prompts)",
                               "gain difference (mean at the peak n − mean at n = N)", +1, effect))
    return out


def _accuracy_units(runs: list[tuple[JobResult, JobResult]], chance: bool) -> list[Unit]:
    units = []
    for ra, rb in runs:
        pa, pb = ra.metrics.per_prompt, rb.metrics.per_prompt
        if pa is None or pb is None or pa.prompt_id != pb.prompt_id:
            continue
        pairs = np.asarray(pa.pairs, np.float64)
        num_b = 0.5 * pairs if chance else np.asarray(pb.correct)
        units.append(Unit(ra.seed, f"{ra.noise}/{ra.learner}", np.asarray(pa.prompt_id), np.asarray(pa.correct),
                          num_b, pairs))
    return units


def _labels_of(runs: list[JobResult], noise: str) -> tuple:
    """(beta, flip) and the label budget of an annotator, from its jobs' protocols (None without jobs)."""
    labels = next((r.labels for r in runs if r.noise == noise), None)
    return (None, None) if labels is None else ((labels.beta, labels.flip), labels.n_pairs)


def _cleaner_first(pair: list[str], labels: dict) -> tuple[str | None, str | None]:
    """The two annotators ordered cleaner first: the larger beta, the smaller flip rate, a flip rate of 0 (perfect)
    before any BT annotator; (None, None) when their noise cannot be ordered (a BT annotator vs a flip rate > 0, or
    equal noise)."""
    (a, b), (ka, kb) = pair, (labels[pair[0]][0], labels[pair[1]][0])
    if ka is None or kb is None:
        return None, None
    (beta_a, flip_a), (beta_b, flip_b) = ka, kb
    if flip_a is None and flip_b is None and beta_a != beta_b:
        return (a, b) if beta_a > beta_b else (b, a)
    if flip_a is not None and flip_b is not None and flip_a != flip_b:
        return (a, b) if flip_a < flip_b else (b, a)
    if flip_a == 0 and flip_b is None:
        return a, b
    if flip_b == 0 and flip_a is None:
        return b, a
    return None, None


def _accuracy_pairs(runs: list[JobResult], a: str, b: str) -> list[tuple[JobResult, JobResult]]:
    first = {(r.learner, r.seed): r for r in runs if r.noise == a}
    return [(first[(r.learner, r.seed)], r) for r in runs if r.noise == b and (r.learner, r.seed) in first]


def _accuracy_findings(results: list[JobResult], dataset: str, noises: list[str]) -> list[Finding]:
    out = []
    runs = [r for r in results if r.dataset == dataset]
    labels = {n: _labels_of(runs, n) for n in noises}
    clean, noisy = _cleaner_first(noises[:2], labels) if len(noises) >= 2 else (None, None)
    if clean is not None and labels[clean][1] == labels[noisy][1]:  # two annotators, one label budget
        effect = _effect(_accuracy_units(_accuracy_pairs(runs, clean, noisy), chance=False))
        if effect is not None:
            out.append(Finding(f"{dataset}|{clean}-vs-{noisy}|noise-costs-accuracy", dataset,
                               f"{clean} vs {noisy}", "Sun et al.", "label noise costs accuracy",
                               f"held-out accuracy difference ({clean} − {noisy})", +1, effect))
    for kind in dict.fromkeys(k for k, _ in labels.values() if k is not None):  # one annotator, several budgets
        budgets = sorted((n_pairs, n) for n, (k, n_pairs) in labels.items() if k == kind)
        if len(budgets) >= 2 and budgets[0][0] < budgets[-1][0]:
            (few, a), (many, b) = budgets[0], budgets[-1]
            effect = _effect(_accuracy_units(_accuracy_pairs(runs, b, a), chance=False))
            if effect is not None:
                out.append(Finding(f"{dataset}|{b}-vs-{a}|labels-raise-accuracy", dataset, f"{a} vs {b}", "embrm",
                                   f"more labels ({many:,} rather than {few:,}) raise held-out accuracy",
                                   f"held-out accuracy difference ({b} − {a})", +1, effect))
    effect = _effect(_accuracy_units([(r, r) for r in runs], chance=True))
    if effect is not None:
        out.append(Finding(f"{dataset}|all|above-chance", dataset, "all", "Sun et al.",
                           "the embeddings carry preference signal (held-out pairwise accuracy above chance)",
                           "accuracy − 0.5", +1, effect))
    return out


def _overoptimisation(bon: pl.DataFrame, dataset: str) -> Finding | None:
    """Descriptive (no test; the cross-fitted finding tests it): in how many runs the ensemble mean's gold falls from
    a peak before n = N to n = N, and by how much there (peak − n = N in gain, > 0; `peaks`, as the report's table)."""
    mean = bon.filter((pl.col("dataset") == dataset) & (pl.col("variant") == "pool") & (pl.col("proxy") == "mean"))
    if not mean.height:
        return None
    falls = peaks(mean).filter(pl.col("drop_gold") > 0)
    how = (f", by {falls['drop'].mean():+.3f} gain on average over those runs (largest {falls['drop'].max():+.3f}; "
           f"drop = gain at the peak − gain at n = N)" if falls.height else ": it never falls past a peak")
    return Finding(f"{dataset}|all|overoptimisation", dataset, "all", "Gao et al.",
                   "over-optimisation: the ensemble mean's gold falls from a peak before n = N to n = N", "", +1,
                   None, f"in {falls.height} of {mean.height} runs{how} (descriptive; the peak chosen on the same "
                         f"prompts)")


def findings(results: list[JobResult], bon: pl.DataFrame) -> list[Finding]:
    """Every claim the study's jobs can measure, dataset by dataset. The papers' claims are measured on the plain
    learners (no length control); the length-control questions compare each controlled learner with its plain one."""
    out = []
    datasets = list(dict.fromkeys(r.dataset for r in results))
    for dataset in datasets:
        runs = [r for r in results if r.dataset == dataset]
        plain = [r for r in runs if r.plain]
        noises = list(dict.fromkeys(r.noise for r in runs if r.noise != "human"))
        if runs and runs[0].bon:
            out += _aggregation_findings(plain, dataset, noises)
            out += _overoptimisation_findings(plain, dataset, noises)
            out += _ensemble_size_findings(plain, dataset, noises)
            out += _diversity_findings(plain, dataset, noises)
            out += _length_control_findings(runs, dataset)
            plain_names = sorted({r.learner for r in plain})
            if bon.height and (gao := _overoptimisation(bon.filter(pl.col("learner").is_in(plain_names)), dataset)):
                out.append(gao)
        out += _accuracy_findings(plain, dataset, noises)
    return out


@dataclass
class Replication:
    """One finding measured on both halves of the prompts: each half's verdict and estimate, and their agreement."""

    key: str
    finding: str
    first: str
    second: str
    first_estimate: float
    second_estimate: float
    agreement: str  # embrm.evaluation.agreement

    def to_dict(self) -> dict:
        return asdict(self)


def replication(first: list[Finding], second: list[Finding]) -> list[Replication]:
    """Per finding measured in both halves: the two verdicts and whether they agree (embrm.evaluation.agreement).
    Findings are matched by key with the halves' dataset names (`<name>.half1`, `.half2`, and
    `<name>.half1@<embedder>` in a study comparing embedders) read as one."""
    def key(f: Finding) -> str:
        return re.sub(r"\.half[12](?=[@|])", "", f.key, count=1)

    other = {key(f): f for f in second}
    rows = []
    for f in first:
        g = other.get(key(f))
        if f.effect is None or g is None or g.effect is None:
            continue
        rows.append(Replication(key(f), f"{re.sub(r'[.]half[12](?=@|$)', '', f.dataset)}, {f.labels}: {f.claim}",
                                f.verdict, g.verdict, f.effect.estimate, g.effect.estimate,
                                agreement(f.effect, g.effect, f.direction)))
    return rows
