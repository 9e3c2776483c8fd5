"""The command line as a thin layer: errors that carry their field (and the option that sets it), the embedding
route chosen by the API, `embrm datasets` showing each declaration, plain output to files and pipes, and the
deprecated `embrm run --backend`."""

import json
import os
import pickle
import subprocess
import sys

import pytest
from synthdata import pool_file_with_cache
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core import EmbrmError, Integer, check_value
from embrm.data import REGISTRY
from embrm.embedding import WHOLE, EmbedRoute, Shard
from embrm.pipeline import LabelConfig, Learner, Protocol

runner = CliRunner()


@pytest.mark.parametrize("make, field", [
    (lambda: Protocol(seed=-1), "seed"),
    (lambda: Protocol(k=0), "k"),
    (lambda: Protocol(coverage=1.0), "coverage"),
    (lambda: Protocol(n_grid=(1, 0)), "n_grid"),
    (lambda: LabelConfig(flip=0.7), "flip"),
    (lambda: Learner("linear", mode="shared_trunk"), "mode"),
    (lambda: Learner("lgbm", length_control="odin"), "length_control"),
    (lambda: Learner("mlp", params={"hidden": [0]}), "hidden"),
    (lambda: Learner("mlp", params={"depth": 3}), "depth"),
    (lambda: EmbedRoute(runner="dask"), "runner"),
    (lambda: EmbedRoute(runner="ray", shard="1/2"), "shard"),
    (lambda: EmbedRoute(workers=2), "workers"),
    (lambda: EmbedRoute(address="auto"), "address"),
    (lambda: EmbedRoute(runner="ray", workers=0), "workers"),
    (lambda: EmbedRoute(runner="ray", views="-1:last"), "views"),
    (lambda: EmbedRoute(views="last"), "views"),
])
def test_an_api_error_carries_its_field(make, field):
    with pytest.raises(EmbrmError) as caught:
        make()
    assert caught.value.field == field, str(caught.value)


def test_the_field_names_the_parameter_not_its_description_and_survives_pickling():
    with pytest.raises(EmbrmError) as caught:
        check_value("k (ensemble size)", 0, Integer(1, 256), field="k")
    assert str(caught.value).startswith("k (ensemble size) must be") and caught.value.field == "k"
    again = pickle.loads(pickle.dumps(caught.value))  # worker processes and Ray send errors back pickled
    assert (str(again), again.field) == (str(caught.value), "k")
    assert EmbrmError("no field").field is None


def test_the_route_parses_its_options_before_any_data_is_read():
    route = EmbedRoute(shard="2/3", views="-1:last, 10:max")
    assert route.shard == Shard(2, 3) and route.views == ((-1, "last"), (10, "max"))
    assert EmbedRoute().shard is None and EmbedRoute(shard=WHOLE).shard == WHOLE
    assert EmbedRoute(runner="ray", workers=3, address="auto").workers == 3


def test_the_cli_names_the_option_of_a_field(tmp_path):
    pool, cache = pool_file_with_cache(tmp_path)
    for args, line in [(["fit", str(pool), "--seed", "-1"], "error: --seed: seed must be an integer"),
                       (["fit", str(pool), "--mode", "linear_heads", "--head", "mlp"], "error: --mode: mode linear_heads"),
                       (["embed", str(pool), "-j", "2"], "error: --workers: workers is for runner ray"),
                       (["embed", str(pool), "--runner", "dask"], 'error: --runner: runner must be one of "local", "ray"')]:
        out = ["--out", str(tmp_path / "m")] if args[0] == "fit" else []
        res = runner.invoke(app, [*args, *out, "--cache-dir", str(cache)])
        assert res.exit_code == 2 and res.stderr.strip().startswith(line), res.stderr


def test_datasets_shows_each_declaration(tmp_path):
    res = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    models = next(line for line in lines if "alpaca-eval-models" in line)  # one row, one line: nothing wrapped
    probes = REGISTRY["alpaca-eval-models"].exclude
    assert f"probes: model ~ {probes.pattern}" in models and "response_key=model" in models
    assert "gold=gold_winprob_vs_gpt4turbo" in models and REGISTRY["alpaca-eval-models"].description in models
    bon16 = next(line for line in lines if "alpaca-eval-bon16" in line)
    assert "published_picks (missing)" in bon16 and "response_key=sample_idx" in bon16
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["datasets", "--data-dir", str(tmp_path),
                                                                 "--format", "json"]).stdout)}
    assert rows["alpaca-eval-models"]["exclude"] == {"name": "probes", "column": "model", "pattern": probes.pattern}
    assert rows["alpaca-eval-models"]["columns"]["prompt"] == "instruction"
    assert [a["name"] for a in rows["alpaca-eval-bon16"]["attachments"]] == ["published_picks"]
    assert rows["overopt"]["kind"] == "generated" and rows["overopt"]["columns"] is None


def test_fit_output_to_a_file_is_not_wrapped(tmp_path):
    pool, cache = pool_file_with_cache(tmp_path)
    res = runner.invoke(app, ["fit", str(pool), "--cache-dir", str(cache), "--out", str(tmp_path / "m"), "-k", "2",
                              "--n-pairs", "100"])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines() if "pairwise acc" in line)
    assert all(name in header for name in ("reward", "log-loss", "Spearman with gold", "Spearman with length"))


def test_run_backend_is_a_deprecated_alias_of_runner(tmp_path):
    pool_file_with_cache(tmp_path)
    (tmp_path / "study.toml").write_text('datasets = ["pool.parquet"]\nhuman_pairs = []\nmethods = []\n')
    res = runner.invoke(app, ["run", str(tmp_path / "study.toml"), "--out", str(tmp_path / "r"), "--backend",
                              "spark"])
    warning, error = res.stderr.strip().splitlines()
    assert warning == "warning: `embrm run --backend spark` is deprecated: use --runner spark"
    assert res.exit_code == 2 and 'runner (--runner) must be one of "local", "ray", got "spark"' in error
    res = runner.invoke(app, ["run", str(tmp_path / "study.toml"), "--backend", "local", "--runner", "ray"])
    assert res.exit_code == 2 and "--backend is the old name of --runner" in res.stderr
    assert "--backend" not in runner.invoke(app, ["run", "--help"]).stdout  # hidden: --runner is the option


@pytest.mark.slow  # loads the packaged MiniLM
def test_a_pipe_gets_whole_lines_and_no_library_progress_bars(tmp_path):
    pool, _ = pool_file_with_cache(tmp_path)
    cache = tmp_path / "fresh"  # nothing cached: the model loads
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-m", "embrm", "embed", str(pool), "--dtype", "float32", "--cache-dir",
                           str(cache)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "it/s]" not in done.stderr, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("embedded "))
    assert str(cache) in line and len(line) > 80  # one line, as long as it is
