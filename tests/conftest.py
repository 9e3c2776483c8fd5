"""Shared fixtures over the real data (read from ../shared/data, never copied into the project). Each fixture
builds what it needs itself (session scope), so no test depends on another test having run."""

import gzip
from dataclasses import replace

import polars as pl
import pytest
from realdata import DATA_DIR

PROBES = ["NullModel", "gpt4_gamed", "alpaca-7b_verbose"]
DECLARATION = """[dataset]
path = "pool.parquet"
name = "renamed-pool"
answer_source = "system"
[dataset.columns]
prompt_id = "qid"
prompt = "question"
response = "answer"
gold = "score"
response_key = "system"
[dataset.exclude]
column = "system"
pattern = "^(NullModel|gpt4_gamed)$|_verbose$"
name = "probes"
"""


@pytest.fixture(scope="session")
def models_subset(tmp_path_factory):
    """(Dataset, X): 30 prompts x 15 models of the real 58-model pool (answers cut to 300 characters), embedded
    once per session with the real packaged MiniLM into a temporary cache."""
    from embrm.data._registry import load_dataset
    from embrm.embedding._embed import embed_dataset
    from embrm.embedding.backends import make_embedder

    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    r = ds.responses
    models = [m for m in r["model"].unique().sort().to_list() if m not in PROBES][:15]
    prompts = r["prompt_id"].unique().sort().to_list()[:30]
    r = r.filter(pl.col("prompt_id").is_in(prompts) & pl.col("model").is_in(models))
    ds = replace(ds, responses=r.with_columns(pl.col("response").str.slice(0, 300)))
    X = embed_dataset(ds, make_embedder("st", dtype="float32"), cache_dir=tmp_path_factory.mktemp("subset-cache"), progress=False).X
    return ds, X


@pytest.fixture(scope="session")
def renamed_pool(tmp_path_factory):
    """A directory holding a real pool file whose columns all have other names (12 prompts x 15 answers of the
    58-model pool, three of them reward-hacking probes), its dataset declaration `pool.toml` (columns and an
    exclusion rule, given once; `subset` is AlpacaEval's source subset), 60 real HH-RLHF pairs (`hh.jsonl`) and a
    cache where both are embedded."""
    from embrm.data._registry import load_dataset
    from embrm.embedding._embed import EmbedderConfig

    root = tmp_path_factory.mktemp("renamed")
    df = pl.read_parquet(DATA_DIR / "alpaca_eval_models" / "responses.parquet")
    models = [m for m in df["model"].unique().sort().to_list() if m not in PROBES][:12] + PROBES
    df = df.filter(pl.col("prompt_id").is_in(df["prompt_id"].unique().sort()[:12].to_list())
                   & pl.col("model").is_in(models))
    df.select(qid="prompt_id", system="model", question="instruction", answer=pl.col("output").str.slice(0, 200),
              score="gold_winprob_vs_gpt4turbo", subset="dataset").write_parquet(root / "pool.parquet")
    (root / "pool.toml").write_text(DECLARATION)
    lines = gzip.open(DATA_DIR / "hh_rlhf_harmless_base_test.jsonl.gz", "rt").read().splitlines()[:60]
    (root / "hh.jsonl").write_text("\n".join(lines) + "\n")
    config = EmbedderConfig(dtype="float32")
    for source in ("pool.toml", "hh.jsonl"):
        config.embed(load_dataset(root / source), root / "cache", progress=False)
    return root


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory):
    """One real local Ray (2 CPUs) for the whole session, shut down at its end. embrm's Ray code (embed_on_ray via
    ray_session, and a study's runner "ray") uses the Ray already open in this process and leaves it running, so every
    test on Ray connects to this one: Ray starts once (seconds each time), not once per test. A sandbox may forbid
    what Ray's raylet needs; that is the only reason to skip."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        # Ray's workers keep the environment Ray started with, not a test's later monkeypatch: give them a state
        # directory of their own, so no test's Ray job writes embrm's file facts under ~/.cache/embrm.
        mp.setenv("EMBRM_STATE_DIR", str(tmp_path_factory.mktemp("ray-state")))
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"a local Ray cannot start on this machine: {e}")
    yield ray
    ray.shutdown()
