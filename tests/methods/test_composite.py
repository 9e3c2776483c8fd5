"""Constrained composite rewards (embrm.methods._composite): exact BoN expectations, proxy points, dual ascent."""

import json

import numpy as np
import polars as pl
import pytest
from realdata import needs_data
from synthdata import pool_file_with_cache

from embrm.core._errors import EmbrmError
from embrm.evaluation import pick_means
from embrm.evaluation._bon import bon_curves
from embrm.evaluation._pools import group_pools
from embrm.methods._composite import composite_curves, fit_multipliers, proxy_points, selection_scores

KNEE, PEN = 0.5, 2.0  # gold = q + h - PEN * relu(h - KNEE)^2 peaks in h at KNEE + 1 / (2 PEN) = 0.75


def hackable_pool(P=400, N=48, seed=0, pen=PEN):
    """Components: z_q = q + noise/2 (honest, noisy), z_h = h (hackable: gold falls past h = 0.75)."""
    rng = np.random.default_rng(seed)
    q, h = rng.standard_normal((2, P * N))
    Z = np.stack([q + 0.5 * rng.standard_normal(P * N), h], axis=1)
    gold = q + h - pen * np.maximum(h - KNEE, 0) ** 2
    return np.repeat(np.arange(P), N), Z, gold


def test_pick_means_is_the_exact_bon_estimator_with_ties_and_unequal_pools():
    rng = np.random.default_rng(1)
    sizes = rng.integers(3, 12, 40)
    pi = np.repeat(np.arange(40), sizes)
    proxy = rng.integers(0, 4, pi.size).astype(float)  # many ties
    gold = rng.standard_normal(pi.size)
    pools = group_pools(pi)
    ns = np.arange(1, 12)
    got = pick_means(pools.gather(proxy)[None], pools.gather(gold)[..., None], pools, ns)[0, :, 0]
    want = bon_curves(pi, proxy, gold, dtype=np.float64).gold[0]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # the same score per n, computed on the diagonal only, gives the same numbers
    diag = pick_means(np.repeat(pools.gather(proxy)[None], len(ns), 0), pools.gather(gold)[..., None], pools, ns,
                      diagonal=True)[:, 0]
    np.testing.assert_allclose(diag, want, atol=1e-12)


def test_proxy_point_of_the_hackable_component_is_near_the_known_peak():
    pi, Z, gold = hackable_pool()
    pp = proxy_points(Z, gold, pi)
    # own-BoN gold of h peaks at an intermediate n, at an expected h below the pointwise peak 0.75
    assert 1 < pp.n_peak[1] < 48 and 0.3 < pp.thresholds[1] < 0.9
    assert pp.n_peak[0] == 48  # the honest component never over-optimises: threshold = its value at n_max
    assert pp.gold[1, -1] < pp.gold[1].max() - 0.3


def test_fixed_sum_overoptimises_while_the_lagrangian_holds_the_threshold():
    pi, Z, gold = hackable_pool()
    train = pi < 300
    pp = proxy_points(Z, gold, pi, mask=train)
    mult = fit_multipliers(Z, pi, pp.thresholds, mask=train, ns=[1, 2, 4, 8, 16, 32, 48], steps=150)
    f = composite_curves(Z, gold, pi, thresholds=pp.thresholds, multipliers=mult, mask=~train, names=["q", "h"])
    fixed = f.filter(pl.col("method") == "fixed")["gold"].to_numpy()
    lagr = f.filter(pl.col("method") == "lagrangian")
    assert fixed[-1] < fixed.max() - 0.2                                   # fixed sum: gold falls past its peak
    assert lagr["gold"][-1] > fixed.max() - 0.05                           # constrained: stays at/above that peak
    assert (mult.violation[:, 1] <= 0.02).all()                            # training: E[h at pick] <= t_h
    assert (lagr["z_h"].to_numpy() <= pp.thresholds[1] + 0.1).all()        # held-out: within tolerance
    assert (mult.lam[:, 0] == 0).all() and mult.lam[0, 1] == 0 and mult.lam[-1, 1] > 0
    # n = 1 is a random pick for every selection rule
    assert np.ptp(f.filter(pl.col("n") == 1)["gold"].to_numpy()) < 1e-12


def test_multipliers_are_exactly_zero_when_no_constraint_binds():
    pi, Z, gold = hackable_pool(pen=0.0)  # no hacking: gold = q + h
    pp = proxy_points(Z, gold, pi)
    assert (pp.n_peak == 48).all()
    mult = fit_multipliers(Z, pi, pp.thresholds, ns=[1, 4, 16, 48], steps=50)
    assert (mult.lam == 0).all() and (mult.violation < 0).all()
    f = composite_curves(Z, gold, pi, thresholds=pp.thresholds, multipliers=mult)
    np.testing.assert_allclose(f.filter(pl.col("method") == "lagrangian")["gold"],
                               f.filter(pl.col("method") == "fixed")["gold"])


def test_clipped_selection_caps_each_component():
    zp = np.array([[[0.0, 3.0], [1.0, 0.5]]])
    s = selection_scores(zp, [1.0, 1.0], thresholds=[2.0, 1.0])
    np.testing.assert_allclose(s, [[[1.0, 1.5]]])


def test_bad_input_is_a_one_line_error():
    pi, Z, gold = hackable_pool(P=4, N=5)
    with pytest.raises(EmbrmError, match="thresholds"):
        fit_multipliers(Z, pi, [0.0])
    with pytest.raises(EmbrmError, match="NaN"):
        proxy_points(np.where(np.arange(20)[:, None] == 3, np.nan, Z), gold, pi)
    with pytest.raises(EmbrmError, match="weights"):
        fit_multipliers(Z, pi, [0.0, 0.0], weights=[1.0])


def test_composite_cli_writes_outputs(tmp_path):
    from typer.testing import CliRunner

    from embrm.cli import app

    out = tmp_path / "out"
    path, cache = pool_file_with_cache(tmp_path)
    res = CliRunner().invoke(app, ["composite", str(path), "--components", "bt,length",
                                   "--n-pairs", "300", "-k", "2", "--cache-dir", str(cache),
                                   "--out", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["components"] == ["bt", "length"] and set(summary["methods"]) == {"fixed", "clipped",
                                                                                     "lagrangian"}
    curves = pl.read_parquet(out / "curves.parquet")
    assert {"z_bt", "z_length", "lam_length", "kl"} <= set(curves.columns)
    assert (out / "composite.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["composite", str(path), "--components", "nope", "--cache-dir", str(cache)])
    assert bad.exit_code == 2 and "unknown component" in bad.output


@pytest.mark.slow
@needs_data
def test_real_pool_composite_study(models_subset):
    from embrm.methods._composite import composite_study

    ds, X = models_subset
    summary, frame = composite_study(ds, X, seed=0, n_pairs=2000, k=2, steps=150)
    assert summary.n_test_prompts == 6 and 10 <= summary.n[-1] <= 15
    first = frame.filter(pl.col("n") == 1)
    assert np.allclose(first["gold"], first["random"], atol=1e-12)
    # the dual ascent meets every training constraint (the held-out numbers are reported, not asserted)
    assert max(c.train_violation_at_n_max for c in summary.components) <= 0.01
    assert all(np.isfinite(m.gold_at_n_max) for m in summary.selections)
