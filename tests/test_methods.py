"""The methods' one protocol: each registered method runs through run_method on a real pool, drops the dataset's
excluded responses unless asked, reports how often it picks one when asked, and renders, plots and writes."""

import json

import pytest
from realdata import needs_data

from embrm.data._registry import load_dataset
from embrm.embedding._embed import EmbedderConfig
from embrm.methods import REGISTRY, run_method

pytestmark = needs_data
FAST = {"laser": dict(n_pairs=800, dim=4, arms=["bt", "length"]), "moe": dict(n_pairs=600, categories="subset"),
        "composite": dict(n_pairs=300, k=2, steps=50), "policy": dict(n_pairs=300, epochs=3, betas=[0.01, 1, 100])}
RATED = {"laser": {"laser", "arm:bt", "arm:length"}, "moe": {"moe", "single", "length"},
         "composite": {"fixed", "clipped", "lagrangian"}, "policy": {"kl_optimum (largest KL)", "bon (n = N)"}}


@pytest.fixture(scope="module")
def pool(renamed_pool):
    ds = load_dataset(renamed_pool / "pool.toml")
    return ds, EmbedderConfig(dtype="float32").embed(ds, renamed_pool / "cache", progress=False).X


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_method_reports_excluded_picks_only_when_they_are_in_its_pools(pool, name, tmp_path):
    ds, X = pool
    clean = run_method(name, ds, X, seed=0, progress=False, **FAST[name])
    assert "excluded_pick_rate" not in clean.summary and not clean.summary["with_excluded"]
    kept = run_method(name, ds, X, seed=0, progress=False, with_excluded=True, **FAST[name])
    rates = kept.summary["excluded_pick_rate"]
    assert set(rates) == RATED[name] and all(0 <= r <= 1 for r in rates.values())
    assert kept.markdown().startswith(f"### {name}") and "excluded_pick_rate" in kept.markdown()
    paths = kept.write(tmp_path)
    assert json.loads(paths["summary"].read_text())["method"] == name and paths["frame"].exists()
    if REGISTRY[name].plot is not None:
        assert paths["plot"].stat().st_size > 1000


def test_the_method_commands_print_the_excluded_pick_rate_only_when_asked(renamed_pool):
    from typer.testing import CliRunner

    from embrm.cli import app

    base = ["composite", str(renamed_pool / "pool.toml"), "--cache-dir", str(renamed_pool / "cache"),
            "--n-pairs", "300", "-k", "2"]
    line = "whose pick is an excluded response"
    clean = CliRunner().invoke(app, base)
    kept = CliRunner().invoke(app, base + ["--with-excluded"])
    assert clean.exit_code == 0 and kept.exit_code == 0, clean.output + kept.output
    assert line not in " ".join(clean.output.split()) and line in " ".join(kept.output.split())
