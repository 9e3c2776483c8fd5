"""embrm.evaluation._decide: family control, power and the group-sequential boundary, against known answers."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as st

from embrm.core import EmbrmError
from embrm.evaluation import (
    Design,
    SequentialTest,
    family_control,
    paired_effect,
    power_of,
    se_at,
    simulate_units,
    spending_bounds,
)

# ----------------------------------------------------------------------------- Benjamini-Hochberg

def test_family_control_is_benjamini_hochberg():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    q = family_control(p)
    # by hand: q_(i) = min_{j >= i} p_(j) m / j
    m = len(p)
    expected = np.minimum.accumulate((p * m / np.arange(1, m + 1))[::-1])[::-1]
    assert q == pytest.approx(np.minimum(expected, 1))
    assert (q <= 0.05).sum() == 2  # only 0.001 and 0.008 survive at 5 %, though five p-values are below 0.05


def test_family_control_leaves_missing_p_values_out_of_the_family():
    q = family_control([0.01, np.nan, 0.02])
    assert np.isnan(q[1]) and q[[0, 2]] == pytest.approx([0.02, 0.02])


def test_under_the_null_bh_keeps_false_discoveries_near_its_rate():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(2000, 47))
    # per family of 47 null findings: uncorrected, most families hold a false "reproduced"; BH about 5 %
    families = np.array([(family_control(row) <= 0.05).any() for row in p[:400]])
    assert (p[:400] < 0.05).any(axis=1).mean() > 0.85 and families.mean() < 0.09


# ----------------------------------------------------------------------------- power

@pytest.fixture(scope="module")
def effect():
    design = Design(pool=400, seeds=3, prompt_sd=0.3, interaction_sd=0.3, seed_sd=0.01, effect=0.08)
    return paired_effect(simulate_units(design, np.random.default_rng(0)), pool=400)


def test_se_at_the_current_design_is_the_se_and_falls_with_seeds_to_a_floor(effect):
    assert se_at(effect) == pytest.approx(effect.se)
    ses = [se_at(effect, seeds=s) for s in (3, 6, 12, 1000)]
    assert ses == sorted(ses, reverse=True)
    c = effect.components
    floor = effect.se * np.sqrt(c.prompt / c.pool / c.variance())
    assert ses[-1] == pytest.approx(floor, rel=0.05)  # every seed draws from the same 400 prompts
    assert se_at(effect, pool=4000) < effect.se


def test_power_mde_is_the_z_sum_times_se_and_the_needs_detect_the_estimate(effect):
    p = power_of(effect)
    z = st.t.ppf(0.975, effect.df) + st.t.ppf(0.8, effect.df)  # at the finding's own degrees of freedom
    assert p.mde == pytest.approx(z * effect.se) and p.mde > (st.norm.ppf(0.975) + st.norm.ppf(0.8)) * effect.se
    if p.seeds_needed is not None:
        assert z * se_at(effect, seeds=p.seeds_needed) <= abs(effect.estimate) + 1e-12
        assert p.seeds_needed == 1 or z * se_at(effect, seeds=p.seeds_needed - 1) > abs(effect.estimate)
    assert p.prompts_needed is not None
    assert z * se_at(effect, pool=p.prompts_needed) == pytest.approx(abs(effect.estimate), rel=0.02)


def test_power_says_when_seeds_cannot_reach_an_effect_below_the_prompts_floor(effect):
    tiny = replace(effect, estimate=1e-5)
    p = power_of(tiny)
    assert p.seeds_needed is None and p.prompts_needed > 100 * effect.components.pool
    assert "no number of seeds" in p.describe()


def test_a_bootstrap_effect_has_no_power_statement(effect):
    units = simulate_units(Design(pool=100, seeds=2), np.random.default_rng(1))
    old = paired_effect(units, estimator="two-stage bootstrap", n_boot=50)
    assert power_of(old) is None
    with pytest.raises(EmbrmError, match="variance components"):
        se_at(old, seeds=5)


# ----------------------------------------------------------------------------- the group-sequential boundary

def test_one_look_is_the_fixed_sample_bound_and_more_looks_spend_alpha_obrien_fleming_style():
    assert spending_bounds([1.0])[0] == pytest.approx(st.norm.ppf(0.975), abs=0.01)
    b = spending_bounds([0.25, 0.5, 0.75, 1.0])
    assert b[0] == pytest.approx(st.norm.ppf(0.975) / 0.5, abs=1e-6)  # exact first look
    assert np.all(np.diff(b) < 0) and 1.96 < b[-1] < 2.1  # Lan-DeMets O'Brien-Fleming: ~2.02-2.04 at the end
    assert spending_bounds([0.25, 0.5, 0.75, 1.0]) == pytest.approx(b)  # seeded: the same fractions, same bounds


def test_the_bounds_keep_the_overall_error_at_alpha():
    t = np.array([0.3, 0.55, 0.8, 1.0])
    b = spending_bounds(t)
    rng = np.random.default_rng(99)  # fresh paths, not the ones the bounds were found on
    z = np.cumsum(rng.standard_normal((200_000, 4)) * np.sqrt(np.diff(np.r_[0, t])), axis=1) / np.sqrt(t)
    assert (np.abs(z) >= b).any(axis=1).mean() == pytest.approx(0.05, abs=0.003)
    assert (np.abs(z) >= 1.96).any(axis=1).mean() > 0.1  # looking without the boundary


@pytest.mark.parametrize("fractions", [[], [0.5, 0.4], [0, 1], [0.5, 1.2]])
def test_bad_fractions_are_one_line_errors(fractions):
    with pytest.raises(EmbrmError, match="fractions"):
        spending_bounds(fractions)


def test_a_large_effect_crosses_early_and_a_null_one_is_futile_or_continues(effect):
    test = SequentialTest(max_seeds=12)
    big = replace(effect, estimate=10 * effect.se)
    look = test.look("big", big, +1)
    assert look.status == "reproduced" and look.fraction < 1 and look.lo > 0
    assert test.look("neg", big, -1).status == "reversed"
    null = test.look("null", replace(effect, estimate=0.0), +1)
    assert null.status in ("futile", "continue") and null.conditional_power < 0.5


def test_the_last_look_is_final():
    effect = paired_effect(simulate_units(Design(pool=400, seeds=12), np.random.default_rng(5)), pool=400)
    look = SequentialTest(max_seeds=12).look("k", replace(effect, estimate=0.0), +1)
    assert look.fraction == 1.0 and look.status == "not reproduced (inconclusive)"


def test_a_point_estimate_is_final_at_its_first_look(effect):
    point = replace(effect, estimate=0.0, se=0.0, lo=0.0, hi=0.0)
    look = SequentialTest(max_seeds=12).look("point", point, +1)
    assert look.fraction == 1.0 and look.status == "not reproduced (inconclusive)"
