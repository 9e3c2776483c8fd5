"""Length-controlled learners through the one pipeline, on a real pool (30 AlpacaEval prompts x 15 models, real
MiniLM vectors): each method's defining behaviour, its evaluation on length-controlled gold, saving and loading,
and `embrm fit --length-control` on the command line. The methods' own synthetic checks (a planted length bias)
are in test_length.py, test_odin.py and test_augment.py."""

import json

import numpy as np
import pytest
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core._errors import EmbrmError
from embrm.data._augment import rrm_dataset
from embrm.embedding._embed import embed_dataset
from embrm.embedding.backends import make_embedder
from embrm.evaluation._heldout import rows_of
from embrm.pipeline import _steps as steps
from embrm.pipeline._protocol import LabelConfig, Learner, Protocol
from embrm.pipeline._steps import fit, load_model, run_experiment, run_experiments
from embrm.rewards._ensemble import fit_ensemble
from embrm.rewards._length import length_feature
from embrm.rewards._persist import manifest_digest

pytestmark = needs_data
LABELS = LabelConfig("simulated", beta=10.0, n_pairs=1500)


def protocol(head: str, control: str, **params) -> Protocol:
    return Protocol(Learner(head, params=params, length_control=control), LABELS, k=3, test_size=0.3,
                    aggregations=("mean", "min"))


def within_prompt_pearson(scores: np.ndarray, length: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """Pearson correlation of each score column with length after removing every prompt's mean (pooled)."""
    _, g = np.unique(prompts, return_inverse=True)
    count = np.bincount(g)

    def demean(v):
        return v - (np.bincount(g, v) / count)[g]

    lc = demean(length)
    sc = np.column_stack([demean(c) for c in scores.T.astype(np.float64)])
    return (lc @ sc) / np.sqrt((lc @ lc) * (sc * sc).sum(0))


@pytest.fixture(scope="module")
def plain(models_subset):
    ds, X = models_subset
    return run_experiment(ds, X, protocol("linear", "none"), progress=False)


@pytest.mark.slow
def test_posthoc_removes_each_members_length_slope_fitted_on_training_answers_only(models_subset, plain):
    ds, X = models_subset
    result = run_experiment(ds, X, protocol("linear", "posthoc"), progress=False)
    length, prompts = length_feature(ds.responses), ds.responses["prompt_id"].to_numpy()
    train = rows_of(ds.responses, result.fit.split.train) & ~ds.excluded
    corrected = result.fit.ensemble.predict(X, length)
    np.testing.assert_allclose(within_prompt_pearson(corrected[train], length[train], prompts[train]), 0, atol=1e-4)
    raw = plain.fit.ensemble.predict(X)  # the same members (same split, labels, seeds) before the correction
    slopes = np.asarray(result.fit.ensemble.length_correction.slopes)
    np.testing.assert_allclose(corrected, raw - length[:, None] * slopes, rtol=1e-4, atol=1e-4)
    # answers cut to 300 chars
    assert (np.abs(within_prompt_pearson(raw[train], length[train], prompts[train])) > 0.05).all()
    # held out, the corrected reward follows length far less than the plain one
    assert abs(result.fit.metrics.length_correlation) < 0.5 * abs(plain.fit.metrics.length_correlation)
    with pytest.raises(EmbrmError, match="pass length="):
        result.fit.ensemble.predict(X)


@pytest.mark.slow
def test_protocols_differing_only_in_posthoc_control_share_one_member_fit(models_subset, plain, monkeypatch):
    ds, X = models_subset
    posthoc = protocol("linear", "posthoc")
    alone = run_experiment(ds, X, posthoc, progress=False)
    fits = []
    monkeypatch.setattr(steps, "fit_ensemble", lambda *a, **kw: fits.append(1) or fit_ensemble(*a, **kw))
    both = run_experiments(ds, X, [protocol("linear", "none"), posthoc], progress=False)
    assert len(fits) == 1 and posthoc.member_fit == protocol("linear", "none")
    for shared, own in zip(both, (plain, alone)):  # each protocol's numbers, as if run alone
        assert json.dumps(shared.to_dict(), default=str) == json.dumps(own.to_dict(), default=str)
        np.testing.assert_array_equal(shared.fit.scores, own.fit.scores)
    assert both[0].fit.ensemble.length_correction is None  # the posthoc correction went on a copy


@pytest.mark.slow
def test_odin_scores_with_a_quality_head_decorrelated_from_length(models_subset):
    ds, X = models_subset
    result = run_experiment(ds, X, protocol("mlp", "odin", hidden=(32,)), progress=False)
    odin = result.fit.ensemble.info["odin"]
    assert np.abs(odin["length_corr_quality"]).max() < 0.2 < np.min(odin["length_corr_length"])
    assert {"lam_length", "lam_quality", "lam_orth"}.isdisjoint(result.fit.ensemble.head_params)
    assert set(result.evaluation.bon) == {"pool", "pool-lc"}


@pytest.mark.slow
def test_rrm_trains_on_other_prompts_answers_which_must_be_embedded(models_subset, tmp_path_factory):
    ds, X = models_subset
    with pytest.raises(EmbrmError, match=r"augment=embed_dataset\(rrm_dataset\(ds\)\)\.X \(60 texts\)"):
        fit(ds, X, protocol("linear", "rrm"), progress=False)
    aug = rrm_dataset(ds)
    assert set(aug.responses["prompt_id"]) == set(ds.responses["prompt_id"])
    assert (aug.responses["source_prompt_id"] != aug.responses["prompt_id"]).all()
    X_aug = embed_dataset(aug, make_embedder("st", dtype="float32"), cache_dir=tmp_path_factory.mktemp("rrm-cache"), progress=False).X
    with pytest.raises(EmbrmError, match=r"augment has shape \(3, 384\)"):
        fit(ds, X, protocol("linear", "rrm"), augment=X_aug[:3], progress=False)
    fitted = fit(ds, X, protocol("linear", "rrm"), augment=X_aug, progress=False)
    plain = fit(ds, X, protocol("linear", "none"), progress=False)
    assert fitted.ensemble.info["rrm_pairs"] > fitted.n_train_pairs  # 2 to 4 augmented pairs per labelled pair
    assert not np.allclose(fitted.ensemble.members[0].coef_, plain.ensemble.members[0].coef_)


@pytest.mark.slow
def test_a_saved_posthoc_model_scores_as_it_was_fitted(models_subset, tmp_path):
    ds, X = models_subset
    fitted = fit(ds, X, protocol("mlp", "posthoc", hidden=(16,)), progress=False)
    fitted.save(tmp_path / "m", ds)
    model = load_model(tmp_path / "m")
    assert model.protocol == fitted.protocol and model.protocol.learner.name == "mlp.posthoc"
    length = length_feature(ds.responses)
    np.testing.assert_allclose(model.ensemble.predict(X, length), fitted.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.ensemble.predict_warm(X, length), fitted.ensemble.predict_warm(X, length),
                               rtol=1e-5, atol=1e-6)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["ensemble"]["length_correction"]["scope"] == "prompt"
    manifest["ensemble"]["length_correction"]["slopes"] = manifest["ensemble"]["length_correction"]["slopes"][:1]
    manifest["digest"] = manifest_digest(manifest)  # a consistent edit: the checks behind the digest refuse it
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbrmError, match="length_correction has 1 slopes for 4 scored models"):
        load_model(tmp_path / "m")


@pytest.mark.slow
def test_fit_and_bon_sim_with_length_control_on_the_command_line(renamed_pool, tmp_path):
    runner = CliRunner()
    common = ["--cache-dir", str(renamed_pool / "cache"), "--dtype", "float32"]
    res = runner.invoke(app, ["fit", str(renamed_pool / "pool.toml"), *common, "-k", "2", "--n-pairs", "300",
                              "--length-control", "rrm", "--out", str(tmp_path / "rrm"), "--format", "json"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "rrm" / "manifest.json").read_text())
    assert manifest["protocol"]["learner"]["length_control"] == "rrm"
    res = runner.invoke(app, ["bon-sim", str(renamed_pool / "pool.toml"), "--model", str(tmp_path / "rrm"),
                              "--cache-dir", str(renamed_pool / "cache"), "--format", "json"])
    assert res.exit_code == 0, res.output
    bon = json.loads(res.stdout)["bon"]
    assert set(bon) == {"pool", "pool-lc", "pool+probes"}
    # the probes are put back in pool+probes only: a pick rate there (the mean of its per-prompt shares), none in
    # the plain pool
    probes = bon["pool+probes"]
    assert all(a["excluded_pick_rate"] is None for a in bon["pool"]["aggregations"].values())
    assert {p: a["excluded_pick_rate"] for p, a in probes["aggregations"].items()} == pytest.approx(
        {p: np.mean(shares) for p, shares in probes["per_prompt"]["excluded"].items()})
    assert probes["n_responses"] > bon["pool"]["n_responses"]
    assert json.loads(res.stdout)["length_effect"]["source"] == "system"


def test_a_pool_without_length_variation_is_evaluated_without_a_length_controlled_gold(tmp_path):
    import polars as pl

    from embrm.data._dataset import pool_from_frame

    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"prompt_id": [f"p{i // 6}" for i in range(60)], "prompt": ["q"] * 60,
                          "response": [f"answer {i % 6:02d}" for i in range(60)], "gold": rng.normal(size=60)})
    ds = pool_from_frame(frame, tmp_path / "pool.csv")  # every answer has 9 characters
    X = rng.standard_normal((60, 8)).astype(np.float32)
    result = run_experiment(ds, X, Protocol(labels=LabelConfig(n_pairs=200), k=2, test_size=0.3), progress=False)
    assert "length does not vary within any prompt" in result.evaluation.length_error
    assert result.evaluation.length_effect is None
    assert set(result.evaluation.bon) == {"pool"}
