"""The methods' one protocol: each registered method runs through run_method on a real pool, drops the dataset's
excluded responses unless asked, reports how often it picks one when asked, and renders, plots and writes."""

import json

import numpy as np
import pytest
from realdata import needs_data

from embrm.data._registry import load_dataset
from embrm.embedding._embed import EmbedderConfig
from embrm.evaluation import length_reward, rows_of, top_picks
from embrm.methods import REGISTRY, run_method
from embrm.pipeline import LabelConfig, split

pytestmark = [needs_data, pytest.mark.slow]  # renamed_pool: embedded with the real MiniLM
FAST = {"laser": dict(n_pairs=800, dim=4, arms=["bt", "length"]), "moe": dict(n_pairs=600, categories="subset"),
        "composite": dict(n_pairs=300, k=2, steps=50), "policy": dict(n_pairs=300, epochs=3, betas=[0.01, 1, 100])}
RATED = {"laser": {"laser", "arm:bt", "arm:length"}, "moe": {"moe", "single", "length"},
         "composite": {"fixed", "clipped", "lagrangian"}, "policy": {"kl_optimum (largest KL)", "bon (n = N)"}}
LONGEST = {"laser": ("arm:length", 0.5), "moe": ("length", 0.2)}  # the selection that picks the longest answer, test_size


def longest_pick_rate(ds, test_size: float) -> float:
    """Share of the held-out prompts whose longest answer (ties shared) is an excluded response, from the pools."""
    test = split(ds, LabelConfig("simulated"), test_size, 0).test
    rows = rows_of(ds.responses, test) & ds.responses["scored"].to_numpy()
    gold = ds.responses["gold"].to_numpy().astype(np.float64)
    picks = top_picks(ds.responses["prompt_id"].to_numpy(), {"length": length_reward(ds.responses)}, gold,
                      rows, ds.excluded)
    return float(np.mean(picks["excluded"]["length"]))


@pytest.fixture(scope="module")
def pool(renamed_pool):
    ds = load_dataset(renamed_pool / "pool.toml")
    return ds, EmbedderConfig(dtype="float32").embed(ds, renamed_pool / "cache", progress=False).X


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_method_reports_excluded_picks_only_when_they_are_in_its_pools(pool, name, tmp_path):
    ds, X = pool
    clean = run_method(name, ds, X, seed=0, progress=False, **FAST[name])
    assert clean.summary.excluded_picks() == [] and not clean.summary.with_excluded
    assert "excluded_pick_rate" not in clean.to_dict() and "excluded_pick_rate" not in clean.markdown()
    kept = run_method(name, ds, X, seed=0, progress=False, with_excluded=True, **FAST[name])
    rates = dict(kept.summary.excluded_picks())
    assert set(rates) == RATED[name] and kept.to_dict()["excluded_pick_rate"] == rates
    assert all(0 <= r <= 1 for r in rates.values())
    if name in LONGEST:  # the longest-answer selection's rate, recomputed from the pools themselves
        selection, test_size = LONGEST[name]
        assert rates[selection] == pytest.approx(longest_pick_rate(ds, test_size), rel=1e-6)
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
