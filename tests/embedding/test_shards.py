"""Sharded embedding: a deterministic plan, real shard processes on one cache, a resumed shard, a real local Ray;
each must give the vectors of a single-process run bit for bit."""

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR, needs_data
from synthdata import tiny_llama
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core._errors import EmbrmError
from embrm.core._hardware import torch_threads
from embrm.data._dataset import load_pool
from embrm.embedding._cache import EmbeddingCache, text_keys
from embrm.embedding._embed import EmbedderConfig, cache_spec, embed_dataset, embed_shard
from embrm.embedding._shards import WHOLE, Shard, shard_batches
from embrm.embedding._verify import verify

COLUMNS = ["--prompt-col", "instruction", "--response-col", "output", "--gold-col", "gold_winprob_vs_gpt4turbo",
           "--response-key", "model"]
MINILM = EmbedderConfig(dtype="float32", batch_size=16)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "", "1/0"])
def test_bad_shard_is_one_line(text):
    with pytest.raises(EmbrmError, match="--shard"):
        Shard.parse(text)


def test_shards_partition_the_single_plan_and_skip_cached_texts():
    rng = np.random.default_rng(0)
    keys = text_keys([f"t{i}" for i in range(50)] * 2)  # every text twice: one row per key in the plan
    lengths = np.tile(rng.integers(1, 30, 50), 2)
    empty = pl.DataFrame(schema={"key": pl.Utf8})
    whole = shard_batches(keys, lengths, 7, WHOLE, empty)
    assert sorted(len(b) for b in whole) == [1] + [7] * 7 and len({keys[r] for b in whole for r in b}) == 50
    parts = [shard_batches(keys, lengths, 7, Shard(i, 3), empty) for i in (1, 2, 3)]
    shard_of = {tuple(b): i for i, batches in enumerate(parts) for b in batches}
    assert sorted(shard_of) == sorted(map(tuple, whole))  # the same batches, split between the shards
    assert [shard_of[tuple(b)] for b in whole] == [i % 3 for i in range(len(whole))]
    cached = pl.DataFrame({"key": [keys[r] for r in whole[0][:3]]})
    assert shard_batches(keys, lengths, 7, WHOLE, cached)[0].tolist() == whole[0][3:].tolist()


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    """~115 real answers: 2 prompts of the 58-model pool, answers cut to 300 characters to keep it quick."""
    df = pl.read_parquet(DATA_DIR / "alpaca_eval_models" / "responses.parquet")
    df = df.filter(pl.col("prompt_id").is_in(df["prompt_id"].unique().sort()[:2].to_list()))
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    df.with_columns(pl.col("output").str.slice(0, 300)).write_parquet(path)
    return path


def load(path):
    return load_pool(path, prompt_col="instruction", response_col="output", gold_col="gold_winprob_vs_gpt4turbo",
                     response_key="model")


@pytest.fixture(scope="module")
def single(pool_file, tmp_path_factory):
    """The reference: one process, MiniLM in float32, on one thread as each shard process (OMP_NUM_THREADS=1) and
    Ray task (num_cpus=1) runs here: bit-for-bit equality holds at equal thread counts (more threads sum in
    another order, ~1e-7)."""
    with torch_threads(1):
        return embed_dataset(load(pool_file), MINILM.build(), cache_dir=tmp_path_factory.mktemp("single"),
                             batch_size=MINILM.batch_size, progress=False)


@pytest.mark.slow
@needs_data
def test_two_shard_processes_on_one_cache_equal_a_single_run(pool_file, single, tmp_path):
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "embrm", "embed", str(pool_file), *COLUMNS, "--dtype", "float32",
           "--batch-size", "16", "--cache-dir", str(cache), "--format", "json"]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for i in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    summaries = [json.loads(o[0]) for o in outs]
    complete = [s for s in summaries if "n_texts" in s]  # the last shard to finish reports the whole dataset
    assert len(complete) >= 1 and complete[0]["n_texts"] == single.n_texts
    warm = embed_dataset(load(pool_file), MINILM.build(), cache_dir=cache, batch_size=16, progress=False)
    assert warm.n_embedded == 0 and warm.fingerprint == single.fingerprint
    np.testing.assert_array_equal(warm.X, single.X)
    assert len(list(EmbeddingCache.open(warm.cache_dir).parts())) == 1 and verify(warm.cache_dir) == []


class _DiesAfter:
    """The real embedder, killed (an exception) after `n` batches: what a shard killed mid-run leaves."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def spec(self):
        return self.inner.spec()

    def embed(self, texts, response_starts=None):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.inner.embed(texts, response_starts)


@pytest.mark.slow
@needs_data
def test_a_killed_shard_resumes_and_the_last_shard_merges(pool_file, single, tmp_path):
    ds, embedder = load(pool_file), MINILM.build()
    with torch_threads(1), pytest.raises(KeyboardInterrupt):
        embed_shard(ds, _DiesAfter(embedder, 1), Shard(1, 2), cache_dir=tmp_path, batch_size=16, progress=False)
    with torch_threads(1):
        resumed = embed_shard(ds, embedder, Shard(1, 2), cache_dir=tmp_path, batch_size=16, progress=False)
    assert resumed.result is None and resumed.n_missing > 0
    assert resumed.n_embedded == single.n_unique - resumed.n_missing - 16  # one batch was already cached
    with torch_threads(1):
        res = CliRunner().invoke(app, ["embed", str(pool_file), *COLUMNS, "--dtype", "float32", "--batch-size", "16",
                                       "--cache-dir", str(tmp_path), "--shard", "2/2"])
    assert res.exit_code == 0, res.output
    assert "embedded" in res.output
    warm = embed_dataset(ds, embedder, cache_dir=tmp_path, batch_size=16, progress=False)
    np.testing.assert_array_equal(warm.X, single.X)
    assert len(list(EmbeddingCache.open(warm.cache_dir).parts())) == 1


@pytest.mark.slow
@needs_data
def test_a_pending_shard_says_what_is_left(pool_file, tmp_path):
    res = CliRunner().invoke(app, ["embed", str(pool_file), *COLUMNS, "--dtype", "float32", "--batch-size", "16",
                                   "--cache-dir", str(tmp_path), "--shard", "1/3"])
    assert res.exit_code == 0 and "not cached yet" in res.output, res.output
    res = CliRunner().invoke(app, ["embed", str(pool_file), *COLUMNS, "--shard", "4/3"])
    assert res.exit_code == 2 and "numbered 1..N" in res.output
    for args, message in [(["-j", "2"], "--workers: workers is for runner ray"),
                          (["--runner", "ray", "--shard", "1/2"], "--shard: shard is for separate processes"),
                          (["--runner", "dask"], '--runner: runner must be one of "local", "ray"')]:
        res = CliRunner().invoke(app, ["embed", str(pool_file), *COLUMNS, *args])
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output


# ---------------------------------------------------------------------------------------------------- Ray
# local_ray (tests/conftest.py): the session's one local Ray, which the studies' tests on Ray share.


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, pool_file):
    texts = load(pool_file).responses["response"].to_list()
    return tiny_llama(tmp_path_factory.mktemp("tiny_lm"), texts, vocab_size=400, max_positions=512)


@pytest.mark.slow
@needs_data
def test_ray_equals_a_single_run_for_minilm_and_a_causal_lm(local_ray, pool_file, single, tiny_lm, tmp_path,
                                                             capfd, monkeypatch):
    from embrm.embedding._ray import embed_on_ray

    ds = load(pool_file)
    monkeypatch.setenv("EMBRM_PROGRESS_EVERY", "0")  # a progress line at every poll (stderr is not a terminal)
    on_ray = embed_on_ray(ds, MINILM, cache_dir=tmp_path / "ray", workers=2)
    assert on_ray.n_embedded == single.n_unique and on_ray.fingerprint == single.fingerprint
    lines = [l for l in capfd.readouterr().err.splitlines() if "on Ray (2 shards)" in l]
    assert lines and lines[-1].split(": ")[1].startswith(f"{single.n_unique}/{single.n_unique} texts (100%)")
    np.testing.assert_array_equal(on_ray.X, single.X)
    lm = EmbedderConfig(backend="hf", model=str(tiny_lm), dtype="float32", batch_size=8, pooling="mean_response")
    with torch_threads(1):
        alone = lm.embed(ds, tmp_path / "alone", progress=False)
    res = CliRunner().invoke(app, ["embed", str(pool_file), *COLUMNS, "--backend", "hf", "--model", str(tiny_lm),
                                   "--dtype", "float32", "--batch-size", "8", "--pooling", "mean_response",
                                   "--runner", "ray", "--workers", "2", "--cache-dir", str(tmp_path / "ray"),
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_embedded"] == alone.n_unique
    np.testing.assert_array_equal(lm.embed(ds, tmp_path / "ray", progress=False).X, alone.X)
    assert cache_spec(lm.build(), lm.template)["pooling"] == "mean_response"
