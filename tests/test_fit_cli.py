"""`embrm fit`, `embrm score` and `embrm bon-sim` end to end on a small real subset with the real MiniLM."""

import gzip
import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from embrm.cli import app
from embrm.persist import load_ensemble
from realdata import DATA_DIR, needs_data

pytestmark = needs_data
runner = CliRunner()
POOL_COLS = ["--prompt-col", "instruction", "--response-col", "output", "--gold-col", "gold_winprob_vs_gpt4turbo",
             "--response-key", "model"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 16-prompt x 15-model slice of the real 58-model pool, embedded once into a module cache."""
    root = tmp_path_factory.mktemp("fitcli")
    df = pl.read_parquet(DATA_DIR / "alpaca_eval_models" / "responses.parquet")
    prompts = df["prompt_id"].unique().sort()[:16].to_list()
    models = df["model"].unique().sort()[:15].to_list()
    df = df.filter(pl.col("prompt_id").is_in(prompts) & pl.col("model").is_in(models))
    df.with_columns(pl.col("output").str.slice(0, 300)).write_parquet(root / "pool.parquet")
    result = invoke("embed", root / "pool.parquet", *POOL_COLS, "--dtype", "float32", "--cache-dir", root / "cache",
                    "--format", "json")
    assert json.loads(result.stdout)["n_embedded"] == 240
    return root


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def fit(work, name, *extra, code=0):
    return invoke("fit", work / "pool.parquet", *POOL_COLS, "--cache-dir", work / "cache", "--out", work / name,
                  "--format", "json", *extra, code=code)


def test_fit_saves_a_pickle_free_model_with_its_prompt_split(work):
    metrics = json.loads(fit(work, "linear", "--head", "linear", "-k", "3", "--seed", "1").stdout)
    assert metrics["against"] == "gold order" and metrics["n_test_prompts"] == 3
    assert len(metrics["member_accuracy"]) == 3
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["baseline_length_accuracy"] <= 1
    manifest = json.loads((work / "linear" / "manifest.json").read_text())
    train, test = set(manifest["split"]["train_prompts"]), set(manifest["split"]["test_prompts"])
    assert not train & test and len(train | test) == 16
    assert manifest["seed"] == 1 and manifest["labels"]["beta"] == 10 and manifest["dim"] == 384
    assert manifest["embedder"]["spec"]["backend"] == "st"
    with np.load(work / "linear" / "weights.npz", allow_pickle=False) as w:
        assert w["coef"].shape == (3, 384)


def test_score_writes_every_members_score(work):
    fit(work, "mlp", "--head", "mlp", "--hidden", "32,16", "-k", "3", "--flip", "0.25", "--n-pairs", "1500")
    invoke("score", work / "mlp", work / "pool.parquet", *POOL_COLS, "--cache-dir", work / "cache",
           "--out", work / "scores.parquet")
    scores = pl.read_parquet(work / "scores.parquet")
    assert scores.columns == ["response_id", "prompt_id", "member_0", "member_1", "member_2"]
    members = scores.select("member_0", "member_1", "member_2").to_numpy()
    assert len(scores) == 240 and np.isfinite(members).all()
    assert not np.allclose(members[:, 0], members[:, 1])  # three distinct members, not one copied
    ensemble, manifest = load_ensemble(work / "mlp")
    assert manifest["labels"]["flip"] == 0.25 and ensemble.warm_ is not None


def test_bon_sim_writes_curves_summary_and_plots(work):
    if not (work / "mlp").exists():
        fit(work, "mlp", "--head", "mlp", "--hidden", "32,16", "-k", "3")
    out = work / "bon"
    invoke("bon-sim", work / "pool.parquet", *POOL_COLS, "--model", work / "mlp", "--cache-dir", work / "cache",
           "--agg", "mean,min,single", "--out", out)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["aggregations"]) == {"mean", "min", "single", "warm", "length", "random"}
    assert summary["n_prompts"] == 3 and summary["n_max"] == 15 and summary["command"].startswith("embrm bon-sim")
    curves = pl.read_parquet(out / "curves.parquet")
    assert curves.height == 6 * 15 and (out / "curves.csv").exists()
    assert (out / "gold_vs_kl.png").stat().st_size > 10_000 and (out / "gao_fit.png").exists()
    # every member reaches the aggregate: mean, min and a single member give different proxy curves
    proxy = {a: curves.filter(pl.col("agg") == a)["proxy"].to_numpy() for a in ("mean", "min", "single")}
    assert not np.allclose(proxy["mean"], proxy["min"]) and not np.allclose(proxy["mean"], proxy["single"])
    # n = 1 is a random pick for every proxy: its expected gold is the pool mean
    first = curves.filter(pl.col("n") == 1)
    np.testing.assert_allclose(first["gold"].to_numpy(), first["random"].to_numpy(), rtol=1e-5)


def test_fit_on_human_pairs_measures_against_the_human_labels(tmp_path):
    lines = gzip.open(DATA_DIR / "hh_rlhf_harmless_base_test.jsonl.gz", "rt").read().splitlines()[:80]
    (tmp_path / "hh.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke("fit", tmp_path / "hh.jsonl", "--head", "linear", "-k", "2", "--cache-dir", tmp_path / "cache",
                    "--dtype", "float32", "--out", tmp_path / "m", "--format", "json")
    metrics = json.loads(result.stdout)
    assert metrics["against"] == "human labels" and metrics["n_test_pairs"] == 16


@pytest.mark.parametrize("extra, message", [
    (["-k", "0"], "K must be >= 1"),
    (["--head", "forest"], "unknown head"),
    (["--flip", "1.5"], "flip"),
])
def test_bad_fit_options_fail_in_one_line_and_leave_no_model(work, extra, message):
    result = fit(work, "bad", *extra, code=2)
    assert message in result.output and "Traceback" not in result.output
    assert not (work / "bad").exists()


def test_model_and_cache_from_different_embedders_is_a_clear_error(work, tmp_path):
    if not (work / "linear").exists():
        fit(work, "linear", "--head", "linear", "-k", "3")
    result = invoke("bon-sim", work / "pool.parquet", *POOL_COLS, "--model", work / "linear",
                    "--cache-dir", tmp_path / "empty", code=2)
    assert "embrm embed" in result.output and "Traceback" not in result.output
    result = invoke("fit", work / "pool.parquet", *POOL_COLS, "--cache-dir", work / "cache", "--out", work / "linear",
                    code=2)
    assert "already exists" in result.output
