"""Fixtures of the serving tests (session scope): a real pool file cut from the 58-model AlpacaEval data, embedded
with the packaged MiniLM and fitted with `embrm fit` (in-process), and a real `embrm serve` process on it."""

import polars as pl
import pytest
from realdata import DATA_DIR
from servers import KEY, KEY_ENV, start_server, stop_server


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
    """root with pool.parquet (24 prompts x 12 models, answers cut to 300 characters), cache/ and model/ (linear,
    K = 4, simulated BT labels), fitted by the CLI so the manifest names the file as `embrm fit` does."""
    from typer.testing import CliRunner

    from embrm.cli import app

    root = tmp_path_factory.mktemp("serve")
    df = pl.read_parquet(DATA_DIR / "alpaca_eval_models" / "responses.parquet")
    models = [m for m in df["model"].unique().sort().to_list() if "gamed" not in m and m != "NullModel"][:12]
    df = df.filter(pl.col("prompt_id").is_in(df["prompt_id"].unique().sort()[:24].to_list())
                   & pl.col("model").is_in(models))
    df.select("prompt_id", "model", prompt="instruction", response=pl.col("output").str.slice(0, 300),
              gold="gold_winprob_vs_gpt4turbo").write_parquet(root / "pool.parquet")
    args = ["fit", str(root / "pool.parquet"), "--response-key", "model", "--head", "linear", "-k", "4",
            "--n-pairs", "300", "--dtype", "float32", "--cache-dir", str(root / "cache"), "--out", str(root / "model")]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    return root


@pytest.fixture(scope="session")
def reward_model(fitted):
    from embrm.serve import RewardModel

    return RewardModel.load(fitted / "model", cache_dir=fitted / "cache")


@pytest.fixture(scope="session")
def server(fitted):
    """A real `embrm serve` process (uvicorn), open (OpenRLHF's client sends no key)."""
    s = start_server(fitted, "--max-wait-ms", "20")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def guarded(fitted):
    """A second server with an API key, a small queue (4 pairs) and a long wait for a batch to fill (1.5 s: a
    request stays in flight long enough to be caught there): every request but /health needs the key."""
    s = start_server(fitted, "--api-key-env", KEY_ENV, "--max-queue", "4", "--max-batch", "4", "--max-wait-ms", "1500")
    s.headers = {"Authorization": f"Bearer {KEY}"}
    yield s
    stop_server(s)
