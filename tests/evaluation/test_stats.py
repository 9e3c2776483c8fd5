"""embrm.evaluation._stats: the random-effects (prompts x seeds) interval for paired findings, on synthetic studies
whose truth is known (coverage at the studies' designs: test_intervals_coverage.py)."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as st

from embrm.core._errors import EmbrmError
from embrm.evaluation._stats import Effect, Unit, agreement, paired_effect

INCONCLUSIVE = "not reproduced (inconclusive)"


def study(rng, *, n_seeds=5, n_units=3, n_pool=2000, n_held=60, shift=0.0, learner_noise=0.1) -> list[Unit]:
    """A synthetic study: a pool of prompts with heavy-tailed per-prompt effects of mean 0 (plus `shift`, the true
    effect), per-prompt denominators, per seed a random held-out subset shared by the seed's learners, which see the
    prompt effect plus a little learner noise. True effect = shift (the numerator difference is den * effect)."""
    delta = rng.standard_t(3, n_pool) * 0.5
    dens = rng.uniform(0.2, 1.8, n_pool)
    units = []
    for s in range(n_seeds):
        held = rng.choice(n_pool, n_held, replace=False)
        den = dens[held]
        for u in range(n_units):
            diff = den * (delta[held] + shift + rng.normal(0, learner_noise, n_held))
            base = rng.uniform(0, 1, n_held)  # shared by both arms: cancels in the paired difference
            units.append(Unit(s, f"learner{u}", np.array([f"p{i}" for i in held]), base + diff, base, den))
    return units


def naive_t(units: list[Unit], level: float = 0.95) -> tuple[float, float]:
    """The old approach: a Student-t interval over (learner, seed) unit effects as if they were independent."""
    v = np.array([(u.num_a - u.num_b).sum() / u.den.sum() for u in units])
    half = st.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return v.mean() - half, v.mean() + half


def swapped(units: list[Unit]) -> list[Unit]:
    return [replace(u, num_a=u.num_b, num_b=u.num_a) for u in units]


def plain_estimate(units: list[Unit]) -> float:
    seeds = sorted({u.seed for u in units})
    return float(np.mean([np.mean([(u.num_a.sum() - u.num_b.sum()) / u.den.sum() for u in units if u.seed == s])
                          for s in seeds]))


# ----------------------------------------------------------------------------- coverage under a null effect

def test_covers_a_null_effect_where_the_naive_t_interval_does_not():
    rng = np.random.default_rng(1)
    n_studies, covered, naive_covered = 200, 0, 0
    for i in range(n_studies):
        units = study(rng)
        e = paired_effect(units, pool=2000)
        lo, hi = naive_t(units)
        covered += e.lo <= 0 <= e.hi
        naive_covered += lo <= 0 <= hi
    coverage, naive = covered / n_studies, naive_covered / n_studies
    # measured: 0.945 (random effects) vs 0.63 (naive t over 15 (learner, seed) pairs)
    assert 0.90 <= coverage <= 0.99, (coverage, naive)
    assert naive <= 0.80 and coverage - naive >= 0.2, (coverage, naive)


# ----------------------------------------------------------------------------- verdicts

def test_a_large_effect_is_reproduced_its_negation_reversed_and_direction_swaps_them():
    units = study(np.random.default_rng(3), shift=0.8)
    e = paired_effect(units)
    assert e.lo > 0 and e.verdict() == "reproduced" and e.verdict(+1) == "reproduced" and e.p_value < 0.001
    assert e.verdict(-1) == "reversed"
    neg = paired_effect(swapped(units))
    assert neg.hi < 0 and neg.verdict() == "reversed" and neg.verdict(-1) == "reproduced"
    assert neg.estimate == pytest.approx(-e.estimate) and neg.se == pytest.approx(e.se)
    assert e.effect_size > 0 > neg.effect_size


def test_a_null_effect_is_inconclusive_in_both_directions():
    e = paired_effect(study(np.random.default_rng(4)))
    assert e.lo <= 0 <= e.hi and e.p_value > 0.05
    assert e.verdict(+1) == e.verdict(-1) == INCONCLUSIVE


def test_the_interval_excludes_0_exactly_when_p_is_below_its_level():
    for i in range(30):
        e = paired_effect(study(np.random.default_rng(100 + i), shift=0.08 * (i % 4)))
        assert (e.lo > 0 or e.hi < 0) == (e.p_value < 0.05), e
        assert e.hi - e.lo == pytest.approx(2 * st.t.ppf(0.975, e.df) * e.se)


def test_verdict_rejects_a_bad_direction():
    e = paired_effect(study(np.random.default_rng(4), n_seeds=2))
    with pytest.raises(EmbrmError, match="direction"):
        e.verdict(0)


# ----------------------------------------------------------------------------- the estimate and the interval

def test_estimate_is_the_plain_formula_and_effect_size_has_its_sign():
    units = study(np.random.default_rng(5), n_seeds=4, shift=0.1)
    e = paired_effect(units)
    assert e.estimate == pytest.approx(plain_estimate(units), rel=1e-12)
    assert e.lo <= e.estimate <= e.hi
    assert np.sign(e.effect_size) == np.sign(e.estimate) != 0
    assert (e.n_seeds, e.n_units, e.n_prompts) == (4, 12, 4 * 60)
    assert "random effects" in e.method and "Welch-Satterthwaite" in e.method


def test_effect_size_is_the_estimate_over_the_sd_of_pooled_per_prompt_differences():
    rng = np.random.default_rng(6)
    units = study(rng, n_seeds=2, n_units=2, n_held=30, shift=0.3)
    per_seed = []
    for s in (0, 1):
        mine = [u for u in units if u.seed == s]
        per_seed.append(np.mean([(u.num_a - u.num_b) / u.den.mean() for u in mine], axis=0))
    sd = np.concatenate(per_seed).std(ddof=1)
    e = paired_effect(units)
    assert e.effect_size == pytest.approx(plain_estimate(units) / sd)


def test_effect_size_is_nan_when_every_prompt_difference_is_zero():
    p = np.array(["a", "b", "c"])
    e = paired_effect([Unit(0, "x", p, np.ones(3), np.ones(3), np.ones(3))])
    assert e.estimate == 0 and e.lo == e.hi == 0 and np.isnan(e.effect_size) and e.p_value == 1
    assert e.verdict() == INCONCLUSIVE


def test_pairing_removes_prompt_variation_shared_by_the_arms():
    # Arms differ by exactly 0.01 * den on every prompt on top of a huge shared per-prompt level: the paired
    # per-prompt effect is 0.01 everywhere, so the interval is a point; unpaired it would be dominated by the level.
    rng = np.random.default_rng(7)
    units = []
    for s in range(3):
        p = np.array([f"s{s}p{i}" for i in range(50)])
        den = rng.uniform(0.5, 2, 50)
        for name in ("linear", "mlp"):
            level = rng.normal(0, 100, 50)
            units.append(Unit(s, name, p, level + 0.01 * den, level, den))
    e = paired_effect(units)
    assert e.lo == pytest.approx(0.01) and e.hi == pytest.approx(0.01) and e.verdict() == "reproduced"


def test_a_duplicated_unit_changes_nothing():
    units = study(np.random.default_rng(8), n_seeds=3, n_units=1)
    doubled = units + [replace(u, name="copy") for u in units]
    a, b = paired_effect(units), paired_effect(doubled)
    assert (a.estimate, a.lo, a.hi) == pytest.approx((b.estimate, b.lo, b.hi), rel=1e-9)
    assert b.n_units == 2 * a.n_units


def test_units_are_aligned_by_prompt_id():
    units = study(np.random.default_rng(9), n_seeds=2, n_units=2)
    perm = np.random.default_rng(0).permutation(60)
    u = units[1]
    shuffled = list(units)
    shuffled[1] = Unit(u.seed, u.name, u.prompts[perm], u.num_a[perm], u.num_b[perm], u.den[perm])
    a, b = paired_effect(units), paired_effect(shuffled)
    assert (a.estimate, a.lo, a.hi) == pytest.approx((b.estimate, b.lo, b.hi), rel=1e-12)


def test_a_prompt_shared_by_seeds_counts_once_not_as_independent_draws():
    # Every seed holds out the SAME prompts and the seeds agree exactly: the study is one draw of those prompts,
    # so its se is one seed's; counting the seeds as independent prompt draws would shrink it by sqrt(3).
    rng = np.random.default_rng(16)
    p = np.array([f"p{i}" for i in range(80)])
    diff, den = rng.standard_t(3, 80), rng.uniform(0.5, 1.5, 80)
    one = paired_effect([Unit(0, "x", p, diff * den, np.zeros(80), den)])
    three = paired_effect([Unit(s, "x", p, diff * den, np.zeros(80), den) for s in range(3)])
    assert three.se == pytest.approx(one.se, rel=1e-9)
    assert three.components.seed == pytest.approx(0, abs=1e-12) and three.components.interaction == 0


def test_a_seed_effect_is_found_and_widens_the_interval():
    rng = np.random.default_rng(17)
    base = study(rng, n_seeds=6, n_pool=400, n_held=80)
    shift = {s: rng.normal(0, 0.3) for s in range(6)}
    shifted = [replace(u, num_a=u.num_a + shift[u.seed] * u.den) for u in base]
    a, b = paired_effect(base, pool=400), paired_effect(shifted, pool=400)
    assert b.components.seed > 10 * max(a.components.seed, 1e-4) and b.se > 1.5 * a.se and b.df < a.df


def test_deterministic():
    units = study(np.random.default_rng(10), n_seeds=3)
    assert paired_effect(units) == paired_effect(units)


def test_a_wider_level_gives_a_wider_interval():
    units = study(np.random.default_rng(12), n_seeds=3)
    narrow, wide = paired_effect(units, level=0.8), paired_effect(units, level=0.99)
    assert wide.lo < narrow.lo < narrow.hi < wide.hi
    assert "80 %" in narrow.method and "99 %" in wide.method


def test_one_seed_clusters_prompts_only_and_says_so():
    units = study(np.random.default_rng(13), n_seeds=1, shift=0.8)
    e = paired_effect(units)
    assert e.n_seeds == 1 and e.n_units == 3 and e.n_prompts == 60
    assert "one seed" in e.method and "not captured" in e.method
    assert e.verdict() == "reproduced"


def test_the_previous_two_stage_bootstrap_stays_available_for_comparison():
    units = study(np.random.default_rng(18), n_seeds=3)
    old = paired_effect(units, estimator="two-stage bootstrap", n_boot=300, seed=1)
    assert "two-stage bootstrap" in old.method and old.components is None and old.lo < old.estimate < old.hi
    assert old == paired_effect(units, estimator="two-stage bootstrap", n_boot=300, seed=1)
    with pytest.raises(EmbrmError, match="estimator must be one of"):
        paired_effect(units, estimator="jackknife")


def test_to_dict_round_trips():
    e = paired_effect(study(np.random.default_rng(14), n_seeds=2))
    d = e.to_dict()
    assert Effect.from_dict(d) == e
    assert {"estimate", "lo", "hi", "se", "p_value", "df", "components", "method"} <= set(d)



# ----------------------------------------------------------------------------- bad input

P3 = np.array(["a", "b", "c"])
ONES = np.ones(3)


@pytest.mark.parametrize("make, match", [
    (lambda: paired_effect([]), "at least one unit"),
    (lambda: Unit(0, "x", P3, np.ones(2), ONES, ONES), "shape"),
    (lambda: Unit(0, "x", P3, np.array([1.0, np.nan, 1]), ONES, ONES), "non-finite"),
    (lambda: Unit(0, "x", P3, ONES, np.array([1.0, np.inf, 1]), ONES), "non-finite"),
    (lambda: Unit(0, "x", P3, ONES, ONES, np.array([1.0, -1.0, 0.0])), "denominator"),
    (lambda: Unit(0, "x", P3, ONES, ONES, np.zeros(3)), "denominator"),
    (lambda: Unit(0, "x", np.array(["a", "a", "b"]), ONES, ONES, ONES), "unique"),
    (lambda: Unit(0, "x", np.array([], dtype=str), [], [], []), "non-empty"),
    (lambda: Unit(0, "x", P3, ["a", "b", "c"], ONES, ONES), "numeric"),
    (lambda: paired_effect([Unit(0, "x", P3, ONES, ONES, ONES), Unit(0, "y", np.array(["a", "b", "d"]), ONES, ONES,
                                                                      ONES)]), "different prompt set"),
    (lambda: paired_effect([Unit(0, "x", P3, ONES, ONES, ONES), Unit(0, "y", P3[:2], ONES[:2], ONES[:2],
                                                                      ONES[:2])]), "different prompt set"),
    (lambda: paired_effect([Unit(0, "x", P3, ONES, ONES, ONES), Unit(0, "x", P3, ONES, ONES, ONES)]), "two units"),
    (lambda: paired_effect([Unit(0, "x", P3, ONES, ONES, ONES)], level=1.5), "level"),
    (lambda: paired_effect([Unit(0, "x", P3, ONES, ONES, ONES)], estimator="two-stage bootstrap", n_boot=0), "n_boot"),
    (lambda: paired_effect([Unit(0, "x", P3, ONES, ONES, ONES)], estimator="bayes"), "estimator"),
    (lambda: paired_effect(["not a unit"]), "Unit"),
])
def test_bad_input_raises_a_one_line_error(make, match):
    with pytest.raises(EmbrmError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_different_seed_may_have_different_prompts():
    a = Unit(0, "x", P3, ONES * 2, ONES, ONES)
    b = Unit(1, "x", np.array(["d", "e"]), np.ones(2), np.ones(2), np.ones(2))
    e = paired_effect([a, b])
    assert e.n_prompts == 5 and e.estimate == pytest.approx(0.5)


# ----------------------------------------------------------------------------- agreement of two halves

def eff(estimate, lo, hi):
    return Effect(estimate, lo, hi, float("nan"), 2, 4, 100, "test")


@pytest.mark.parametrize("first, second, direction, expected", [
    (eff(0.3, 0.1, 0.5), eff(0.2, 0.05, 0.4), +1, "agree"),                      # both reproduced
    (eff(-0.3, -0.5, -0.1), eff(-0.2, -0.4, -0.05), +1, "agree"),                # both reversed
    (eff(-0.3, -0.5, -0.1), eff(-0.2, -0.4, -0.05), -1, "agree"),                # both reproduced (claim a < b)
    (eff(0.1, -0.1, 0.3), eff(0.05, -0.2, 0.3), +1, "agree"),                    # both inconclusive, same sign
    (eff(0.3, 0.1, 0.5), eff(-0.3, -0.5, -0.1), +1, "disagree"),
    (eff(0.3, 0.1, 0.5), eff(-0.3, -0.5, -0.1), -1, "disagree"),
    (eff(0.1, -0.1, 0.3), eff(0.3, 0.1, 0.5), +1, "inconclusive in first half"),
    (eff(0.3, 0.1, 0.5), eff(0.1, -0.1, 0.3), +1, "inconclusive in second half"),
    (eff(-0.3, -0.5, -0.1), eff(0.1, -0.1, 0.3), +1, "inconclusive in second half"),
    (eff(0.1, -0.1, 0.3), eff(-0.05, -0.2, 0.1), +1, "inconclusive in both halves"),  # opposite-signed estimates
])
def test_agreement(first, second, direction, expected):
    assert agreement(first, second, direction) == expected


def test_agreement_of_real_halves():
    rng = np.random.default_rng(16)
    units = study(rng, n_seeds=3, n_held=120, shift=0.8)

    def half(k):
        out = []
        for u in units:
            keep = np.arange(len(u.prompts)) % 2 == k
            out.append(Unit(u.seed, u.name, u.prompts[keep], u.num_a[keep], u.num_b[keep], u.den[keep]))
        return out

    first, second = paired_effect(half(0)), paired_effect(half(1))
    assert agreement(first, second) == "agree"
    assert agreement(first, paired_effect(swapped(half(1)))) == "disagree"
    with pytest.raises(EmbrmError, match="direction"):
        agreement(first, second, direction=2)
