"""`embrm rl` end to end on a generated pool (overopt: its gold known for any embedding, so every policy runs) and a
small text pool with a warm cache: the files it writes, JSON that is the Python API's result, the Gaussian policy,
and one-line refusals (exit 2) that name the option."""

import json
from dataclasses import replace

import polars as pl
import pytest
from badinput import Bad, assert_clean_failure
from synthdata import pool_file_with_cache
from typer.testing import CliRunner

from embrm.cli import app
from embrm.data import load_dataset
from embrm.pipeline import load_model, model_embeddings
from embrm.rl import RLConfig, run_rl

runner = CliRunner()
RUNS = ["mean/none", "mean/cdf", "min/none", "min/cdf"]


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model fitted on the generated overopt pool (3 linear members, 300 labels) and a text pool's model."""
    root = tmp_path_factory.mktemp("rl-cli")
    invoke("fit", "overopt", "--out", root / "m", "-k", "3", "--n-pairs", "300", "--cache-dir", root / "cache",
           "--format", "json")
    text = root / "text"
    text.mkdir()
    pool, cache = pool_file_with_cache(text)
    invoke("fit", pool, "--cache-dir", cache, "--out", text / "m", "-k", "2", "--n-pairs", "200", "--format", "json")
    return root


def rl(root, *extra, code=0):
    return invoke("rl", "overopt", "--model", root / "m", "--cache-dir", root / "cache", "--steps", "20", *extra,
                  code=code)


@pytest.fixture(scope="module")
def written(root):
    """One text-mode run with every output file."""
    out = root / "out"
    result = rl(root, "--algo", "grpo", "--agg", "mean,min", "--transform", "none,cdf", "--out", out)
    return out, result.output


def test_rl_writes_curves_summary_report_and_plot(written):
    out, shown = written
    assert {p.name for p in out.iterdir()} >= {"curves.parquet", "summary.json", "report.md", "gold_vs_kl.png"}
    summary = json.loads((out / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == RUNS and summary["config"]["steps"] == 20
    assert summary["config"]["algo"] == "grpo" and summary["model_dir"].endswith("m")
    curves = pl.read_parquet(out / "curves.parquet")
    assert set(curves["curve"]) == {"rl", "bon"} and set(curves.filter(curve="rl")["run"]) == set(RUNS)
    assert curves.filter(curve="rl", step=0)["kl"].abs().max() < 1e-6 and curves.filter(curve="rl")["step"].max() == 20
    assert set(curves.filter(curve="bon")["aggregation"]) == {"mean", "min"}
    report = (out / "report.md").read_text()
    assert all(f"| {run} |" in report for run in RUNS) and "gold_vs_kl.png" in report
    assert (out / "gold_vs_kl.png").read_bytes()[:4] == b"\x89PNG" and (out / "gold_vs_kl.png").stat().st_size > 10_000
    assert "| mean/none |" in shown and str(out) in " ".join(shown.split())


def test_json_is_the_python_api_result(root):
    shown = json.loads(rl(root, "--agg", "mean,min", "--transform", "none,cdf", "--format", "json").stdout)
    model = load_model(root / "m")
    ds = load_dataset("overopt")
    X = model_embeddings(model, ds, root / "cache")
    direct = run_rl(ds, X, model.ensemble, model.split, replace(model.protocol, aggregations=("mean", "min")),
                    RLConfig(steps=20), aggregations=["mean", "min"], transforms=["none", "cdf"], progress=False)
    want = json.loads(json.dumps(direct.to_dict(), default=str))
    for got, run in zip(shown["runs"], want["runs"], strict=True):
        assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in run.items() if k != "seconds"}
    assert shown["bon"] == want["bon"] and shown["n_prompts"] == direct.n_prompts == 20
    assert shown["model_dir"] == str(root / "m") and shown["command"].startswith("embrm rl overopt")


def test_the_gaussian_policy_runs_on_a_generated_pool(root):
    shown = json.loads(rl(root, "--policy", "gaussian", "--agg", "mean", "--kl", "0,0.1", "--format", "json").stdout)
    assert shown["config"]["policy"] == "gaussian" and "new candidates" in shown["measured_on"]
    assert [r["run"] for r in shown["runs"]] == ["mean/kl0", "mean/kl0.1"]
    start = [r["start_gold"] for r in shown["runs"]]
    assert start[0] == start[1] and abs(start[0] - shown["random"]) < 0.3  # step 0 is pi_ref (Monte-Carlo)


def test_an_earlier_out_is_kept_unless_overwrite(root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_clean_failure(Bad("rl/out-not-empty", ("rl", "overopt", "--model", "{root}/m", "--steps", "2", "--out",
                                                  str(out)), r"--out.*--overwrite", ("m",)), root)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "summary.json").exists()
    rl(root, "--steps", "2", "--agg", "mean", "--points", "2", "--out", out, "--overwrite")
    assert json.loads((out / "summary.json").read_text())["config"]["steps"] == 2


BAD = [
    (("--algo", "dpo"), r"--algo: .*dpo.* use one of grpo, rloo, ppo, reinforce"),
    (("--group", "1"), r"--group: group must be an integer in \[2, "),
    (("--steps", "0"), r"--steps: steps must be an integer in \[1, "),
    (("--kl", "-1"), r"--kl: kl must be a number in \[0, "),
    (("--kl", "0.1,-2"), r"--kl: kl must be a number in \[0, .*got -2"),
    (("--lr", "0"), r"--lr: lr must be a number in \(0, "),
    (("--transform", "log"), r"--transform: transform 'log' is not allowed: use one of none, sigmoid, cdf"),
    (("--transform", "none,log"), r"--transform: transform 'log'"),
    (("--agg", "mean,bogus"), r"--agg: .*bogus.* use one of mean, min"),
    (("--policy", "tree"), r"--policy: .*tree.* use one of pool, linear, gaussian"),
    (("--kl-mode", "both"), r"--kl-mode: .*both.* use one of reward, loss"),
    (("--policy", "gaussian", "--agg", "conformal"), r"conformal is calibrated on the pools' gold.*pool or linear"),
    (("--policy", "gaussian", "--agg", "mean", "--length-penalty", "1"), r"--length-penalty: .*policy pool or linear"),
]


@pytest.mark.parametrize("extra, match", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_options_are_one_line_naming_the_option(root, extra, match):
    assert_clean_failure(Bad("rl/" + "-".join(extra), ("rl", "overopt", "--model", "{root}/m", "--cache-dir",
                                                       "{root}/cache", "--steps", "2", *extra), match, ("m",)), root)


def test_the_gaussian_policy_is_refused_on_a_text_pool(root):
    text = root / "text"
    assert_clean_failure(Bad("rl/gaussian-text", ("rl", "{root}/pool.parquet", "--model", "{root}/m", "--cache-dir",
                                                  "{root}/cache", "--policy", "gaussian", "--steps", "2"),
                             r"gaussian policy samples NEW embeddings.*generated dataset", ("m", "cache")), text)
    shown = json.loads(invoke("rl", text / "pool.parquet", "--model", text / "m", "--cache-dir", text / "cache",
                              "--steps", "5", "--agg", "mean", "--length-penalty", "0.5", "--format", "json").stdout)
    assert shown["config"]["length_penalty"] == 0.5 and [r["run"] for r in shown["runs"]] == ["mean"]
