"""The embed pipeline end to end with the real packaged MiniLM and real texts: cache, dedup, resume, CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR, needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.data._dataset import load_pool
from embrm.embedding._cache import EmbeddingCache, text_keys
from embrm.embedding._embed import cache_spec, embed_dataset, embed_texts, indistinguishable_prompts, render
from embrm.embedding._verify import verify
from embrm.embedding.backends import make_embedder

pytestmark = needs_data


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    """~230 real answers (4 prompts of the 58-model pool) plus one exact duplicate text."""
    df = pl.read_parquet(DATA_DIR / "alpaca_eval_models" / "responses.parquet")
    df = df.filter(pl.col("prompt_id").is_in(df["prompt_id"].unique().sort()[:4].to_list()))
    df = df.with_columns(pl.col("output").str.slice(0, 400))  # keep the test quick
    dup = df.head(1).with_columns(model=pl.lit("copycat"))
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    pl.concat([df, dup]).write_parquet(path)
    return path


def load(path):
    return load_pool(path, prompt_col="instruction", response_col="output", gold_col="gold_winprob_vs_gpt4turbo",
                     response_key="model")


@pytest.fixture(scope="module")
def embedder():
    return make_embedder("st", dtype="bfloat16")


@pytest.fixture(scope="module")
def cold(pool_file, embedder, tmp_path_factory):
    """One cold run shared by the tests below (each later run on this cache is warm)."""
    cache_dir = tmp_path_factory.mktemp("cache")
    return cache_dir, embed_dataset(load(pool_file), embedder, cache_dir=cache_dir, progress=False)


@pytest.mark.slow
def test_embed_dedups_caches_and_aligns(pool_file, embedder, cold):
    ds = load(pool_file)
    tmp_path, cold = cold
    n = len(ds.responses)
    assert cold.X.shape == (n, 384) and cold.X.dtype == np.float32
    assert cold.n_texts == n and cold.n_unique == n - 1 and cold.n_embedded == n - 1  # the duplicate once
    np.testing.assert_array_equal(cold.X[0], cold.X[-1])
    # aligned: row i is the embedding of row i's rendered text
    texts, _ = render(ds.responses)
    direct = embedder.embed([texts[5], texts[40]]).vectors
    cos = (direct * cold.X[[5, 40]]).sum(1) / np.linalg.norm(direct, axis=1) / np.linalg.norm(cold.X[[5, 40]], axis=1)
    assert cos.min() > 0.999
    warm = embed_dataset(ds, embedder, cache_dir=tmp_path, progress=False)
    assert warm.n_embedded == 0 and warm.n_cached == n - 1
    np.testing.assert_array_equal(warm.X, cold.X)


@pytest.mark.slow
def test_warm_run_never_loads_the_model(pool_file, cold):
    ds = load(pool_file)
    tmp_path = cold[0]
    fresh = make_embedder("st", dtype="bfloat16")  # same spec, model not loaded
    fresh.embed = lambda *a, **k: pytest.fail("a warm run must not embed")
    assert embed_dataset(ds, fresh, cache_dir=tmp_path, progress=False).n_embedded == 0


@pytest.mark.slow
def test_template_is_part_of_the_fingerprint(pool_file, embedder, cold):
    responses = load(pool_file).responses.head(20)
    a = embed_dataset(responses, embedder, cache_dir=cold[0], progress=False)
    b = embed_dataset(responses, embedder, cache_dir=cold[0], template="Q: {prompt}\nA: {response}", progress=False)
    assert a.n_embedded == 0 and a.cache_dir != b.cache_dir and b.n_embedded == 20


def _parts(cache_dir):
    return len(list(cache_dir.glob("*/part-*.parquet")))


@pytest.mark.slow
def test_killed_runs_resume_merge_and_match_an_uninterrupted_run(pool_file, tmp_path, cold):
    """SIGKILLs at several points (mid-run, during start-up, mid-run again), then one completed run: at most the
    batch in flight is lost each time, the cache ends as one merged part that verifies, and the vectors match."""
    # Kept cheap: the module pool's first 80 answers (a third of it) in batches of 8, ten batches, so each kill still
    # lands mid-run. They are the module's texts, so its cold run (same embedder, never killed) is the reference.
    pool, batch = tmp_path / "pool.parquet", 8
    pl.read_parquet(pool_file).head(80).write_parquet(pool)
    cache_dir = tmp_path / "killed"
    env = {**os.environ, "EMBRM_DATA_DIR": str(DATA_DIR)}
    cmd = [sys.executable, "-m", "embrm.cli", "embed", str(pool), "--prompt-col", "instruction",
           "--response-col", "output", "--gold-col", "gold_winprob_vs_gpt4turbo", "--response-key", "model",
           "--dtype", "bfloat16", "--batch-size", str(batch), "--cache-dir", str(cache_dir), "--format", "json"]
    for wait_for_parts, delay in ((3, None), (None, 1.0), (2, None)):
        before = _parts(cache_dir)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + (delay or 120)
        while time.time() < deadline and (wait_for_parts is None or _parts(cache_dir) < before + wait_for_parts):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    n_parts = _parts(cache_dir)
    assert n_parts >= 4, "the runs should have been killed part-way"
    resumed = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    assert 0 < resumed["n_embedded"] < resumed["n_unique"]
    assert resumed["n_cached"] >= (n_parts - 2) * batch  # at most the batch in flight was lost per kill
    ds = load(pool)
    embedder = make_embedder("st", dtype="bfloat16")
    X_resumed = embed_dataset(ds, embedder, cache_dir=cache_dir, progress=False).X
    clean = embed_dataset(ds, embedder, cache_dir=cold[0], progress=False)  # the cold run's vectors of these texts
    assert clean.n_embedded == 0
    X_clean = clean.X
    cos = (X_resumed * X_clean).sum(1) / np.linalg.norm(X_resumed, axis=1) / np.linalg.norm(X_clean, axis=1)
    assert cos.min() > 0.999
    cache = EmbeddingCache(cache_dir, cache_spec(embedder, "{prompt}\n\n{response}"))
    assert verify(cache.path) == [] and len(cache.parts()) == 1 and _parts(cache_dir) == 1


class _Refuses:
    """An embedder for runs that must find everything cached."""

    def embed(self, texts, response_starts=None):
        raise AssertionError("nothing should be embedded")


def test_a_resumed_run_with_nothing_missing_still_merges(tmp_path):
    """A run killed after its last batch but before the merge left many parts; the next run embeds nothing and
    must still merge them (a warm read of one part is many times faster than of 150)."""
    cache = EmbeddingCache(tmp_path, {"backend": "test", "model": "m", "template": "{prompt}{response}"})
    texts = [f"text {i}" for i in range(9)]
    keys = text_keys(texts)
    X = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    for lo in range(0, 9, 3):
        cache.write_part(keys[lo:lo + 3], X[lo:lo + 3])
    (cache.path / ".part-killed.parquet.tmp").write_bytes(b"half a part")
    assert embed_texts(texts, _Refuses(), cache) == (keys, 0)
    assert len(cache.parts()) == 1 and verify(cache.path) == []
    np.testing.assert_array_equal(cache.lookup(keys), X)


@pytest.mark.slow
def test_cli_embed_json_summary_and_cache_commands(pool_file, tmp_path, cold):
    runner = CliRunner()
    tmp_path = cold[0]
    args = ["embed", str(pool_file), "--prompt-col", "instruction", "--response-col", "output", "--gold-col",
            "gold_winprob_vs_gpt4turbo", "--response-key", "model", "--dtype", "bfloat16", "--cache-dir", str(tmp_path),
            "--format", "json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {"n_texts", "n_embedded", "n_cached", "dim", "cache_dir", "seconds"} <= set(summary)
    assert summary["dim"] == 384
    info = json.loads(runner.invoke(app, ["cache", "info", str(tmp_path), "--format", "json"]).stdout)
    assert info[0]["n_unique"] == summary["n_unique"]
    assert runner.invoke(app, ["cache", "verify", str(tmp_path)]).exit_code == 0
    assert summary["n_embedded"] == 0  # the module's cold run filled this cache


@pytest.mark.slow
def test_cli_cache_verify_flags_a_truncated_part(pool_file, embedder, tmp_path):
    embed_dataset(load(pool_file).responses.head(8), embedder, cache_dir=tmp_path, progress=False)
    part = next(tmp_path.glob("*/part-*.parquet"))
    part.write_bytes(part.read_bytes()[:200])
    bad = CliRunner().invoke(app, ["cache", "verify", str(tmp_path)])
    assert bad.exit_code == 1 and "--repair" in bad.output


@pytest.mark.parametrize("args,message", [
    (["embed", "missing.jsonl"], "file not found"),
    (["embed", "no-such-dataset"], "unknown dataset"),
    (["embed", "hh-rlhf-harmless-test", "--model", "/no/such/model"], "/no/such/model"),
    (["embed", "hh-rlhf-harmless-test", "--backend", "nope"], "nope"),
])
def test_cli_errors_are_one_line_without_traceback(args, message, tmp_path):
    env = {**os.environ, "EMBRM_DATA_DIR": str(DATA_DIR)}
    res = subprocess.run([sys.executable, "-m", "embrm.cli", *args, "--cache-dir", str(tmp_path)],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_prompts_whose_responses_got_one_vector_are_named():
    responses = pl.DataFrame({"prompt_id": ["a", "a", "b", "b", "c", "d", "d"],
                              "response": ["x", "y", "x", "y", "x", "same", "same"]})
    X = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [5, 5], [2, 2], [2, 2]], np.float32)
    assert indistinguishable_prompts(responses, X) == ["a"]  # d: one text twice is not a loss
    assert indistinguishable_prompts(responses.head(0), X[:0]) == []
