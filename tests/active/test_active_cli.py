"""`embrm active` and a study's [active] section: the CLI is the Python API's campaign, and a study runs one per pool
and reports it."""

import json

import polars as pl
import pytest
from synthdata import pool_file_with_cache
from typer.testing import CliRunner

from embrm.active import ActiveConfig, run_active
from embrm.cli import app
from embrm.data._registry import load_dataset
from embrm.embedding._embed import EmbedderConfig
from embrm.studies._config import study_from_dict
from embrm.studies._run import run_study

SMALL = ["--seed-pairs", "10", "--batch", "5", "--rounds", "2", "--seeds", "0,1", "--samples", "4"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return pool_file_with_cache(tmp_path_factory.mktemp("active"))


def test_the_cli_runs_the_python_api_campaign(pool, tmp_path):
    path, cache = pool
    res = CliRunner().invoke(app, ["active", str(path), "--cache-dir", str(cache), "--strategies", "random,dopt",
                                   *SMALL, "--out", str(tmp_path / "out"), "--format", "json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    ds = load_dataset(path)
    X = EmbedderConfig().embed(ds, cache, progress=False).X  # cached: no model load
    direct = run_active(ds, X, ActiveConfig(("random", "dopt"), 10, 5, 2, (0, 1), 4))
    assert shown["summary"] == json.loads(json.dumps(direct.summary.to_dict()))
    curves = pl.read_parquet(tmp_path / "out" / "curves.parquet")
    assert curves.drop("select_seconds", "fit_seconds").equals(direct.frame.drop("select_seconds", "fit_seconds"))
    assert (tmp_path / "out" / "active.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, match", [
    (["--strategies", "random,psychic"], "unknown strategy 'psychic'"),
    (["--rounds", "0"], r"rounds must be an integer in \[1, "),
    (["--seeds", "a,b"], "--seeds: expected comma-separated ints"),
    (["--batch", "500"], "budget"),
])
def test_bad_campaigns_are_one_line(pool, args, match):
    path, cache = pool
    res = CliRunner().invoke(app, ["active", str(path), "--cache-dir", str(cache), *SMALL, *args])
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and __import__("re").search(match, lines[0]), lines


def test_a_study_runs_a_campaign_per_pool_and_reports_it(tmp_path):
    doc = {"name": "act", "seeds": [0, 1], "human_pairs": [], "methods": [], "replicate": False, "k": 2,
           "datasets": [{"generate": "overopt", "name": "tiny",
                         "params": {"n_prompts": 30, "n_candidates": 12, "dim": 8}}],
           "learners": [{"head": "laplace"}], "noise": [{"name": "bt10", "beta": 10.0}], "labels": {"n_pairs": 200},
           "active": {"strategies": ["random", "dopt_past", "bald"], "seed_pairs": 20, "batch": 20, "rounds": 2}}
    study = study_from_dict(doc)
    result = run_study(study, tmp_path / "out", cache_dir=tmp_path / "cache", workers=1, progress=False)
    [campaign] = result.active
    assert campaign.config.seeds == (0, 1) and set(campaign.summary) == {"random", "dopt_past", "bald"}
    report = result.report_path.read_text()
    assert "## Active labelling" in report and "### Active labelling on tiny" in report
    assert "active/tiny/active.png" in report and (tmp_path / "out" / "active" / "tiny" / "active.png").exists()
    assert "Conformal lower bound" in report and "Calibration of the ensemble mean" in report
    assert any(p.name.startswith("reliability_tiny") for p in (tmp_path / "out").iterdir())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
