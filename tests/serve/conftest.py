"""Fixtures of the serving tests (session scope): a real pool file cut from the 58-model AlpacaEval data, embedded
with the packaged MiniLM and fitted with `embrm fit` (in-process), and a real `embrm serve` process on it."""

import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import polars as pl
import pytest
from realdata import DATA_DIR

KEY_ENV, KEY = "EMBRM_TEST_SERVE_KEY", "sk-test-4f9c2e"  # a made-up key: the server must never print it


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(fitted, *options, env_extra=None):
    port = free_port()
    env = {**os.environ, KEY_ENV: KEY, **(env_extra or {})}
    log = open(fitted / f"server-{port}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "embrm", "serve", str(fitted / "model"), "--port", str(port),
                             "--cache-dir", str(fitted / "cache"), *options], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"embrm serve exited {proc.returncode}: {log.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return SimpleNamespace(url=url, proc=proc, log=log, port=port)
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("embrm serve did not answer /health within 180 s")


def stop_server(server) -> int:
    if server.log.closed:
        return server.proc.returncode
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    server.log.seek(0)
    server.output = server.log.read()
    server.log.close()
    return server.proc.returncode


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
