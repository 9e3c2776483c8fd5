import numpy as np
import polars as pl
import pytest

from embrm.core._errors import EmbrmError
from embrm.data._overopt import ideal_proxy_curve, overopt_dataset, overopt_truth

SMALL = {"n_prompts": 12, "n_candidates": 50, "dim": 16, "seed": 3}


@pytest.fixture(scope="module")
def small():
    return overopt_dataset(**SMALL)


def test_same_seed_same_data_other_seed_differs(small):
    ds, X = small
    ds2, X2 = overopt_dataset(n_prompts=12, n_candidates=50, dim=16, seed=3)
    np.testing.assert_array_equal(X, X2)
    assert ds.responses.equals(ds2.responses) and ds.name == ds2.name
    ds3, X3 = overopt_dataset(n_prompts=12, n_candidates=50, dim=16, seed=4)
    assert not np.allclose(X, X3)
    assert not np.allclose(ds.responses["gold"].to_numpy(), ds3.responses["gold"].to_numpy())
    assert not np.allclose(overopt_truth(**SMALL).v, overopt_truth(**{**SMALL, "seed": 4}).v)
    # chunking does not change the numbers (one noise stream)
    _, X4 = overopt_dataset(n_prompts=12, n_candidates=50, dim=16, seed=3, chunk_rows=37)
    np.testing.assert_array_equal(X, X4)


def test_columns_shapes_and_alignment(small):
    ds, X = small
    r = ds.responses
    assert X.shape == (600, 16) and X.dtype == np.float32
    assert r.schema == pl.Schema({"prompt_id": pl.Utf8, "response_id": pl.Utf8, "prompt": pl.Utf8,
                                  "response": pl.Utf8, "gold": pl.Float64, "scored": pl.Boolean,
                                  "excluded": pl.Boolean, "candidate": pl.Int32})
    assert r["response_id"].is_unique().all() and r["scored"].all() and not r["excluded"].any()
    assert r["prompt_id"].n_unique() == 12 and (r["prompt_id"].to_numpy() == np.sort(r["prompt_id"].to_numpy())).all()
    assert r["candidate"].to_list() == list(range(50)) * 12
    assert r["response"].str.len_chars().n_unique() == 1 and r["prompt"].str.len_chars().n_unique() == 1
    assert r["response_id"][51] == "p01:c01"
    truth = overopt_truth(**SMALL)
    # gold is the stated function of each row's OWN embedding (alignment row for row)
    np.testing.assert_allclose(truth.gold(X), r["gold"].to_numpy(), rtol=1e-6, atol=1e-6)
    assert abs(truth.u @ truth.v) < 1e-12 and np.isclose(np.linalg.norm(truth.u), 1)
    # prompts differ: their mean embeddings are far apart compared with the within-prompt noise (sd 1 / sqrt(50))
    means = X.reshape(12, 50, 16).mean(1)
    assert np.linalg.norm(means - means.mean(0), axis=1).mean() > 2.0
    assert "seed 3" in ds.source and "relu" in ds.source


def test_gold_peaks_along_v_at_the_stated_point():
    truth = overopt_truth(n_prompts=2, n_candidates=2, dim=8, seed=1, nonlinear=0.0, hack=2.0, hack_penalty=4.0,
                          threshold=2.0)
    assert truth.peak_h == pytest.approx(2.25)
    h = np.linspace(-3, 6, 90_001)
    g = truth.gold(h[:, None] * truth.v[None, :])  # points on the v axis: s = 0
    assert h[np.argmax(g)] == pytest.approx(2.25, abs=1e-3)
    np.testing.assert_allclose(g, 2.0 * h - 4.0 * np.maximum(h - 2.0, 0) ** 2, atol=1e-5)
    assert np.all(np.diff(g[h < 2.25]) > 0) and np.all(np.diff(g[h > 2.25]) < 0)
    # and quality keeps paying: along u the gold is linear with slope 1
    assert np.allclose(np.diff(truth.gold(np.outer([0.0, 1.0, 2.0], truth.u))), 1.0, atol=1e-6)


def test_training_candidates_rarely_pass_the_threshold():
    ds, X = overopt_dataset(n_prompts=200, n_candidates=200, dim=16, seed=0)
    truth = overopt_truth(n_prompts=200, n_candidates=200, dim=16, seed=0)
    h = truth.parts(X)["h"]
    assert truth.base_fraction_past_threshold == pytest.approx(0.0262, abs=5e-4)  # as the docstring states
    assert np.mean(h > truth.threshold) == pytest.approx(truth.base_fraction_past_threshold, abs=0.006)
    assert np.mean(h > truth.peak_h) < 0.02


def test_ideal_proxy_curve_peaks_then_falls_and_matches_monte_carlo():
    truth = overopt_truth(n_prompts=2, n_candidates=2, dim=8, seed=0)
    n = np.array([1, 10, 100, 2000, 10_000])
    c = ideal_proxy_curve(truth, n)
    assert c[0] == 0 and c[2] > c[1] and c[2] > c[3] > c[4] and c[4] < 0
    # Monte-Carlo: best of 30 along the proxy direction, with the orthogonal part of h
    rng = np.random.default_rng(0)
    a = truth.hack
    cz = 1 / np.sqrt(1 + a * a)
    z = rng.standard_normal((40_000, 30))
    e = rng.standard_normal((40_000, 30))
    s, h = cz * z - a * cz * e, a * cz * z + cz * e  # (s, h) = rotation of (z, e): the proxy is z
    g = truth.gold_of(s, h)
    pick = g[np.arange(len(z)), np.argmax(z, axis=1)].mean() - g.mean()
    assert ideal_proxy_curve(truth, [1, 30])[1] == pytest.approx(pick, abs=0.05)


def test_end_to_end_through_run_experiment():
    from embrm.pipeline._protocol import LabelConfig, Learner, Protocol
    from embrm.pipeline._steps import run_experiment

    ds, X = overopt_dataset(n_prompts=20, n_candidates=200, dim=16, seed=0)
    result = run_experiment(ds, X, Protocol(Learner("linear"), LabelConfig(n_pairs=300), k=2, seed=0),
                            progress=False)
    ev = result.evaluation
    assert "pool" in ev.bon and "pool-lc" not in ev.bon
    assert ev.length_effect is None and "length does not vary" in ev.length_error  # skipped with its reason
    c = ev.bon["pool"].curves
    assert c.n[-1] == 200 and np.isfinite(c.gold).all()
    assert {"mean", "min", "uwo", "lcb", "single", "length"} <= set(c.aggregations)
    mean = c.gold[c.aggregations.index("mean")]
    assert mean[-1] > mean[0] + 1.0  # the fitted proxy learned something (n = 200 is short of the fall)
    assert ev.metrics.accuracy > 0.8
    assert result.fit.n_train_pairs == 300


def test_bad_arguments():
    with pytest.raises(EmbrmError, match=r"n_prompts must be an integer in \[2, "):
        overopt_dataset(n_prompts=1)
    with pytest.raises(EmbrmError, match="hack_penalty"):
        overopt_dataset(n_prompts=2, n_candidates=2, hack_penalty=-1)
    with pytest.raises(EmbrmError, match=r"dim must be an integer in \[2, "):
        overopt_truth(dim=1)


def test_a_filtered_generated_dataset_keeps_its_vectors_aligned_and_embedding_reads_them(small, tmp_path):
    from embrm.data._registry import half_of
    from embrm.embedding._embed import EmbedderConfig, cached_embeddings

    ds, X = small
    half = half_of(ds, 2)
    rows = ds.responses["prompt_id"].is_in(half.responses["prompt_id"].unique().implode()).to_numpy()
    np.testing.assert_array_equal(half.vectors, X[rows])
    res = EmbedderConfig().embed(half, tmp_path / "cache")  # no model, no cache: the vectors that came with it
    np.testing.assert_array_equal(res.X, X[rows])
    assert res.n_embedded == 0 and not (tmp_path / "cache").exists()
    np.testing.assert_array_equal(cached_embeddings(half, None, tmp_path / "cache"), X[rows])


def test_a_generated_study_runs_on_a_log_grid_with_label_budgets_ensemble_sizes_and_findings(tmp_path):
    from embrm.studies._config import load_study
    from embrm.studies._run import run_study

    (tmp_path / "s.toml").write_text(
        'name = "gen"\nseeds = [0, 1]\nhuman_pairs = []\nmethods = []\nreplicate = false\nk = 2\n'
        '[[datasets]]\ngenerate = "overopt"\nname = "gen"\n'
        'params = { n_prompts = 10, n_candidates = 1100, dim = 8, seed = 1 }\n'
        '[[noise]]\nbeta = 10.0\nn_pairs = 100\n[[noise]]\nbeta = 10.0\nn_pairs = 400\n'
        '[[learners]]\nhead = "linear"\n[[learners]]\nhead = "linear"\nk = 3\n')
    study = load_study(tmp_path / "s.toml")
    result = run_study(study, tmp_path / "out", cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert not (tmp_path / "cache").exists()  # nothing embedded, nothing cached
    assert set(result.bon["n_max"]) == {1100} and result.curves["n"].n_unique() < 120  # the log grid, not all n
    assert set(result.fits["learner"]) == {"linear", "linear.k3"} and set(result.fits["noise"]) == {"bt10-100",
                                                                                                       "bt10-400"}
    keys = {f.key for f in result.findings}
    assert {"gen|bt10-100|overoptimisation-drop", "gen|bt10-400|linear.k3-vs-linear",
            "gen|bt10-400-vs-bt10-100|labels-raise-accuracy"} <= keys
    assert not any(k.endswith("noise-costs-accuracy") for k in keys)  # one annotator: only the budget differs
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Generated data `gen`: embrm.overopt_dataset (seed 1): gold = u.x" in report and "peak n (median)" in report
    assert (tmp_path / "out" / "overoptimisation_gen_bt10-100.png").stat().st_size > 1000
