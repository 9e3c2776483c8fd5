"""`embrm fit`, `embrm score` and `embrm bon-sim` end to end on a real pool file whose columns all have other names,
declared once in a dataset file (with an exclusion rule for the hacking probes), and the real MiniLM."""

import json

import numpy as np
import polars as pl
import pytest
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.data._registry import load_dataset
from embrm.evaluation._calibration import cross_fitted_temperature, reliability
from embrm.evaluation._heldout import held_out_pairs
from embrm.pipeline._protocol import LabelConfig, Protocol
from embrm.pipeline._steps import split, training_pairs
from embrm.rewards._persist import load_ensemble

pytestmark = [needs_data, pytest.mark.slow]  # renamed_pool: embedded with the real MiniLM
runner = CliRunner()
EMBED = ["--dtype", "float32"]


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def fit(root, out, *extra, code=0):
    return invoke("fit", root / "pool.toml", *EMBED, "--cache-dir", root / "cache", "--out", out, "--format", "json",
                  *extra, code=code)


def test_embed_takes_the_declaration_and_finds_everything_cached(renamed_pool):
    result = json.loads(invoke("embed", renamed_pool / "pool.toml", *EMBED, "--cache-dir", renamed_pool / "cache",
                               "--format", "json").stdout)
    assert result["dataset"] == "renamed-pool" and result["n_texts"] == 12 * 15 and result["n_embedded"] == 0


def test_fit_saves_a_pickle_free_model_with_its_split_and_protocol(renamed_pool, tmp_path):
    metrics = json.loads(fit(renamed_pool, tmp_path / "m", "-k", "3", "--seed", "1").stdout)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    train, test = set(manifest["split"]["train_prompts"]), set(manifest["split"]["test_prompts"])
    assert not train & test and len(train | test) == 12 and len(test) >= 2
    assert metrics["against"] == "gold order" and metrics["n_test_prompts"] == len(test)
    assert len(metrics["member_accuracy"]) == 3 and metrics["accuracy"] > metrics["n_test_pairs"] ** -1
    protocol = manifest["protocol"]
    assert protocol["seed"] == 1 and protocol["labels"] == {"source": "simulated", "beta": 10.0, "flip": None,
                                                             "n_pairs": 1000, "within_prompt": True}
    assert manifest["dataset_spec"]["exclude"]["name"] == "probes" and manifest["dim"] == 384
    assert manifest["embedder"]["spec"]["backend"] == "st"
    with np.load(tmp_path / "m" / "weights.npz", allow_pickle=False) as w:
        assert w["coef"].shape == (3, 384)


def test_excluded_responses_never_label_and_their_pick_rate_is_reported(renamed_pool, tmp_path):
    fit(renamed_pool, tmp_path / "m", "-k", "3", "--test-size", "0.5")
    out = tmp_path / "bon"
    invoke("bon-sim", renamed_pool / "pool.toml", "--model", tmp_path / "m", "--cache-dir", renamed_pool / "cache",
           "--without-excluded", "--out", out)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["bon"]) == ["pool", "pool-lc"] and summary["bon"]["pool"]["n_responses"] == 6 * 12
    result = invoke("bon-sim", renamed_pool / "pool.toml", "--model", tmp_path / "m", "--cache-dir",
                    renamed_pool / "cache", "--out", tmp_path / "with")  # the default: probes reported too
    assert "probes" in result.output and "picked" in result.output and "fitted with prompt and system" in \
        " ".join(result.output.split())
    both = json.loads((tmp_path / "with" / "summary.json").read_text())["bon"]
    assert both["pool"] == summary["bon"]["pool"] and both["pool+probes"]["n_responses"] == 6 * 15
    rates = {k: v["excluded_pick_rate"] for k, v in both["pool+probes"]["aggregations"].items()}
    assert set(rates) == {"mean", "min", "median", "uwo", "lcb", "conformal", "single", "length", "shortest"}
    assert all(0 <= r <= 1 for r in rates.values()) and max(rates.values()) > 0  # the probes do win somewhere


def test_the_training_labels_never_hold_an_excluded_response(renamed_pool):
    ds = load_dataset(renamed_pool / "pool.toml")
    assert ds.exclusion == "probes" and int(ds.excluded.sum()) == 3 * 12
    protocol = Protocol(labels=LabelConfig(n_pairs=5000))
    parts = split(ds, protocol.labels.resolved(ds), protocol.test_size, protocol.seed)
    pairs = training_pairs(ds, protocol.labels.resolved(ds), parts.train, 0)
    probes = set(ds.responses.filter("excluded")["response_id"])
    assert pairs.height == 5000 and not probes & (set(pairs["chosen_id"]) | set(pairs["rejected_id"]))


def test_score_writes_every_members_score(renamed_pool, tmp_path):
    fit(renamed_pool, tmp_path / "mlp", "--head", "mlp", "--hidden", "32,16", "-k", "3", "--flip", "0.25")
    invoke("score", tmp_path / "mlp", renamed_pool / "pool.toml", "--cache-dir", renamed_pool / "cache",
           "--out", tmp_path / "scores.parquet")
    scores = pl.read_parquet(tmp_path / "scores.parquet")
    assert scores.columns == ["response_id", "prompt_id", "member_0", "member_1", "member_2"]
    members = scores.select("member_0", "member_1", "member_2").to_numpy()
    assert len(scores) == 12 * 15 and np.isfinite(members).all()
    assert not np.allclose(members[:, 0], members[:, 1])  # three distinct members, not one copied
    ensemble, manifest = load_ensemble(tmp_path / "mlp")
    assert manifest["protocol"]["labels"]["flip"] == 0.25 and ensemble.warm_ is not None


def test_bon_sim_writes_curves_summary_and_plots(renamed_pool, tmp_path):
    fit(renamed_pool, tmp_path / "mlp", "--head", "mlp", "--hidden", "32,16", "-k", "3")
    out = tmp_path / "bon"
    result = invoke("bon-sim", renamed_pool / "pool.toml", "--model", tmp_path / "mlp", "--cache-dir",
                    renamed_pool / "cache", "--agg", "mean,min,single", "--out", out)
    assert "random pick (expected)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    pool = summary["bon"]["pool"]
    assert set(pool["aggregations"]) == {"mean", "min", "single", "warm", "length", "shortest"}
    test = json.loads((tmp_path / "mlp" / "manifest.json").read_text())["split"]["test_prompts"]
    assert pool["n_prompts"] == len(test) and pool["n_max"] == 12 and summary["command"].startswith("embrm bon-sim")
    curves = pl.read_parquet(out / "curves.parquet")
    assert set(curves["variant"]) == {"pool", "pool-lc", "pool+probes"} and (out / "curves.csv").exists()
    curves = curves.filter(pl.col("variant") == "pool")
    assert curves.height == 6 * 12
    assert (out / "gold_vs_kl.png").stat().st_size > 10_000 and (out / "gao_fit.png").exists()
    proxy = {a: curves.filter(pl.col("agg") == a)["proxy"].to_numpy() for a in ("mean", "min", "single")}
    assert not np.allclose(proxy["mean"], proxy["min"]) and not np.allclose(proxy["mean"], proxy["single"])
    # n = 1 is a random pick for every proxy: its expected gold is the pool mean, the one random figure
    first = curves.filter(pl.col("n") == 1)
    np.testing.assert_allclose(first["gold"].to_numpy(), first["random"].to_numpy(), rtol=1e-5)
    last = curves.filter(pl.col("n") == 12)
    np.testing.assert_allclose(last["random"].to_numpy(), pool["random_at_n_max"], rtol=1e-6)


def test_a_laplace_model_scores_its_posterior_and_bounds_best_of_n_conformally(renamed_pool, tmp_path):
    m = json.loads(fit(renamed_pool, tmp_path / "bayes", "--head", "laplace", "-k", "4").stdout)
    manifest = json.loads((tmp_path / "bayes" / "manifest.json").read_text())
    assert manifest["protocol"]["learner"]["mode"] == "posterior"
    invoke("score", tmp_path / "bayes", renamed_pool / "pool.toml", "--cache-dir", renamed_pool / "cache",
           "--out", tmp_path / "scores.parquet")
    scores = pl.read_parquet(tmp_path / "scores.parquet")
    assert scores.columns[-2:] == ["posterior_mean", "posterior_std"] and (scores["posterior_std"] > 0).all()
    members = scores.select(f"member_{j}" for j in range(4)).to_numpy()
    assert not np.allclose(members[:, 0], members[:, 1])  # posterior draws, not one weight vector
    # the fit's calibration figures are those of the saved model's mean score on its held-out gold-order pairs
    ds = load_dataset(renamed_pool / "pool.toml")
    pairs, _ = held_out_pairs(ds, np.asarray(manifest["split"]["test_prompts"]), manifest["protocol"]["seed"])
    mean = members.mean(axis=1)
    margins = mean[pairs[:, 0]].astype(np.float64) - mean[pairs[:, 1]]
    plain = reliability(margins)
    calibrated, temperatures = cross_fitted_temperature(margins, ds.responses["prompt_id"].to_numpy()[pairs[:, 0]],
                                                        seed=manifest["protocol"]["seed"])
    assert m["n_test_pairs"] == len(pairs)
    assert (m["mce"], m["brier"], m["ece"]) == pytest.approx((plain.mce, plain.brier, plain.ece), rel=1e-5)
    assert (m["calibrated_ece"], m["temperature"]) == pytest.approx((reliability(calibrated).ece,
                                                                      np.mean(temperatures)), rel=1e-5)
    result = invoke("bon-sim", renamed_pool / "pool.toml", "--model", tmp_path / "bayes", "--cache-dir",
                    renamed_pool / "cache", "--agg", "mean,conformal", "--coverage", "0.8", "--out", tmp_path / "bon")
    assert "conformal lower bound: target coverage 0.80" in result.output
    summary = json.loads((tmp_path / "bon" / "summary.json").read_text())
    assert summary["conformal"]["coverage"] == 0.8 and 0 < summary["conformal"]["empirical_coverage"] <= 1
    for pool in ("pool", "pool+probes"):  # the probes put back get their prompt's bound
        assert set(summary["bon"][pool]["aggregations"]) >= {"mean", "conformal"}


def test_fit_on_human_pairs_measures_against_the_human_labels(renamed_pool, tmp_path):
    result = invoke("fit", renamed_pool / "hh.jsonl", "--head", "linear", "-k", "2", *EMBED, "--cache-dir",
                    renamed_pool / "cache", "--out", tmp_path / "m", "--format", "json")
    metrics = json.loads(result.stdout)
    assert metrics["against"] == "human labels" and metrics["n_test_pairs"] == 12 and metrics["spearman"] is None


@pytest.mark.parametrize("extra, message", [
    (["-k", "0"], "k (ensemble size) must be"),
    (["--head", "forest"], "--head 'forest'"),
    (["--flip", "1.5"], "flip"),
    (["--hidden", "a,b"], "--hidden"),
])
def test_bad_fit_options_fail_in_one_line_and_leave_no_model(renamed_pool, tmp_path, extra, message):
    result = fit(renamed_pool, tmp_path / "bad", *extra, code=2)
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bad").exists()


def test_a_misnamed_column_is_named_in_the_error(renamed_pool, tmp_path):
    result = invoke("embed", renamed_pool / "pool.parquet", "--prompt-col", "questoin", "--response-col", "answer",
                    "--cache-dir", tmp_path / "c", code=2)
    assert "no column 'questoin'" in result.output and "--prompt-col" in result.output
    result = invoke("embed", renamed_pool / "hh.jsonl", "--prompt-col", "prompt_text", "--cache-dir", tmp_path / "c",
                    code=2)
    assert "no column 'prompt_text'" in result.output
    result = invoke("embed", renamed_pool / "pool.toml", "--exclude", "nosuch=x", "--cache-dir", tmp_path / "c",
                    code=2)
    assert "exclusion column 'nosuch'" in result.output


def test_model_and_cache_from_different_embedders_is_a_clear_error(renamed_pool, tmp_path):
    fit(renamed_pool, tmp_path / "m", "-k", "2")
    result = invoke("bon-sim", renamed_pool / "pool.toml", "--model", tmp_path / "m", "--cache-dir",
                    tmp_path / "empty", code=2)
    assert "embrm embed" in result.output and "Traceback" not in result.output
    result = fit(renamed_pool, tmp_path / "m", code=2)
    assert "already exists" in result.output
