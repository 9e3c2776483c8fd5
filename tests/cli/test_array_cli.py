"""`embrm fit` and `embrm bon-sim` on an array dataset (a declaration of Sun-layout files, no texts), in-process:
no embedding and no cache, Sun et al.'s numbers on request, no length rows, and length control refused."""

import json

import pytest
from typer.testing import CliRunner

from embrm.cli import app
from embrm.data._sun_layout import write_sun_layout

runner = CliRunner()


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(declaration, fitted model dir, cache dir): a tiny Sun layout and a linear x2 model fitted by `embrm fit`."""
    root = tmp_path_factory.mktemp("array-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBRM_STATE_DIR", str(root / "state"))
        layout = write_sun_layout(root / "sun", train_prompts=40, train_responses=6, test_prompts=8,
                                  test_responses=20, dim=16, seed=2, progress=False)
        cache = root / "cache"
        result = invoke("fit", layout.declaration, "--head", "linear", "--ensemble", 2, "--n-pairs", 100, "--out",
                        root / "m", "--cache-dir", cache)
        yield layout.declaration, root / "m", cache, result


def test_fit_writes_a_model_of_the_arrays_without_a_cache(setup):
    decl, model, cache, result = setup
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["dim"] == 16 and manifest["embedder"]["spec"]["backend"] == "carried"
    assert manifest["embedder"]["fingerprint"].startswith("carried-")
    assert len(manifest["split"]["train_prompts"]) == 40 and len(manifest["split"]["test_prompts"]) == 8
    assert manifest["n_train_pairs"] == 100 and manifest["protocol"]["k"] == 2
    assert "length (longer is better)" not in result.output and "saved ->" in result.output
    assert not cache.exists()  # the vectors are the files: nothing embedded or cached


def test_bon_sim_prints_suns_numbers_and_no_length_rows(setup, tmp_path):
    decl, model, cache, _ = setup
    out = invoke("bon-sim", decl, "--model", model, "--sun-metrics", "--cache-dir", cache).output
    assert "Sun et al.'s evaluation" in out and "| reward | accuracy | spearman |" in out
    assert "| mean |" in out and "| min |" in out and "| first |" in out
    assert "length (longer is better)" not in out and "Spearman with length" not in out
    assert "no length-controlled gold" in out and "without texts" in out
    plain = invoke("bon-sim", decl, "--model", model, "--cache-dir", cache).output
    assert "Sun et al.'s evaluation" not in plain and "Best-of-n" in plain


def test_bon_sim_json_carries_suns_numbers(setup):
    decl, model, cache, _ = setup
    doc = json.loads(invoke("bon-sim", decl, "--model", model, "--sun-metrics", "--cache-dir", cache, "--format",
                            "json").stdout)
    assert doc["protocol"]["sun_metrics"] is True
    sun = doc["sun"]
    assert sun["n_prompts"] == 8 and {r["reward"] for r in sun["rows"]} == {"mean", "min", "first"}
    assert set(doc["bon"]) == {"pool"} and "length" not in doc["bon"]["pool"]["aggregations"]
    plain = json.loads(invoke("bon-sim", decl, "--model", model, "--cache-dir", cache, "--format", "json").stdout)
    assert "sun" not in plain and "sun_metrics" not in plain["protocol"]


def test_fit_refuses_length_control_in_one_line(setup, tmp_path):
    decl, _, cache, _ = setup
    result = invoke("fit", decl, "--length-control", "posthoc", "--ensemble", 2, "--n-pairs", 100, "--out",
                    tmp_path / "m", "--cache-dir", cache, code=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "texts" in lines[0] and "posthoc" in lines[0], result.output
    assert not (tmp_path / "m").exists()


def test_embed_says_there_is_nothing_to_embed(setup):
    declaration, _, cache, _ = setup
    result = invoke("embed", declaration, "--cache-dir", cache)
    assert "nothing to embed" in result.output and "read from its array files" in result.output
