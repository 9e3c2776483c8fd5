"""`embrm serve`'s own errors (one line, exit 2, before any port opens) and the live embedder rebuilt from a
model's cache spec for each backend."""

import pytest
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core import EmbrmError
from embrm.embedding import EmbedderConfig, live_embedder
from embrm.embedding.backends import make_embedder

runner = CliRunner()


@pytest.mark.parametrize("args, says", [
    (["serve", "no/such/model"], "does not exist"),
    (["serve", "MODEL", "--port", "0"], "--port 0"),
    (["serve", "MODEL", "--port", "70000"], "--port 70000"),
    (["serve", "MODEL", "--workers", "0"], "--workers 0"),
    (["serve", "MODEL", "--agg", "max"], "--agg: aggregation"),
    (["serve", "MODEL", "--lambda", "-1"], "lam"),
    (["serve", "MODEL", "--temperature", "0"], "temperature"),
    (["serve", "MODEL", "--backend", "st"], "--backend and --embed-model go together"),
    (["serve", "MODEL", "--api-key-env", "EMBRM_TEST_UNSET_KEY"], "EMBRM_TEST_UNSET_KEY"),
    (["serve", "MODEL", "--max-batch", "0"], "--max-batch: max_batch = 0"),
    (["serve", "MODEL", "--max-wait-ms", "-1"], "--max-wait-ms"),
    (["serve", "MODEL", "--member", "7"], "--member"),
])
@needs_data
@pytest.mark.slow
def test_serve_refuses_in_one_line(fitted, args, says, monkeypatch):
    monkeypatch.delenv("EMBRM_TEST_UNSET_KEY", raising=False)
    args = [str(fitted / "model") if a == "MODEL" else a for a in args]
    done = runner.invoke(app, [*args, "--cache-dir", str(fitted / "cache")])
    assert done.exit_code == 2, done.output
    last = done.output.strip().splitlines()[-1]  # (a model loaded first may print its library's loading bar)
    assert last.startswith("error: ") and says in last and "Traceback" not in done.output


def test_live_embedders_rebuild_the_spec_they_came_from(tmp_path):
    st = make_embedder("st", dtype="float32")
    assert live_embedder({**st.spec(), "template": "{prompt}\n\n{response}"}).spec() == st.spec()
    api = make_embedder("openai", "text-embedding-3-small", base_url="http://127.0.0.1:9/v1", dimensions=256)
    assert live_embedder({**api.spec(), "template": "plain"}).spec() == api.spec()  # built, not connected
    with pytest.raises(EmbrmError, match="differs from it \\(pooling 'cls' here 'model'\\)"):
        live_embedder({**st.spec(), "pooling": "cls", "template": "plain"})  # made by another version, say
    imported = {"backend": "imported", "model": "google/gemma-2-2b", "dim": 384, "template": "plain"}
    with pytest.raises(EmbrmError, match="imported vectors .* give the live embedder"):
        live_embedder(imported)
    assert live_embedder(imported, EmbedderConfig("st", dtype="float32")).spec() == st.spec()
    with pytest.raises(EmbrmError, match="is not the one the model's vectors came from"):
        live_embedder({**st.spec(), "template": "plain"}, EmbedderConfig("openai", "m", base_url="http://h/v1"))
    with pytest.raises(EmbrmError, match="backend 'carried'"):
        live_embedder({"backend": "carried", "model": "overopt", "template": "plain"})


@pytest.mark.slow
def test_online_vectors_of_a_causal_lm_match_embrm_embed(tmp_path):
    """A causal-LM (hf backend, a tiny Llama built from a config) rebuilt from its cache spec: texts in the cache
    are read from it, others embedded live, both equal to what `embrm embed` caches."""
    import numpy as np
    import polars as pl
    from synthdata import tiny_llama

    from embrm.embedding import OnlineVectors

    lm = tiny_llama(tmp_path / "lm", ["the quick brown fox jumps over the lazy dog"] * 10, vocab_size=120,
                    max_positions=128)
    frame = pl.DataFrame({"prompt_id": ["a", "a", "b"], "prompt": ["Say hi.", "Say hi.", "Count."],
                          "response": ["hi", "hello there", "one two three"]})
    made = EmbedderConfig("hf", str(lm), dtype="float32").embed(frame, tmp_path / "cache", progress=False)
    online = OnlineVectors(made.spec, tmp_path / "cache")
    X, n_new = online.vectors(frame["prompt"].to_list(), frame["response"].to_list())
    assert n_new == 0 and online.counts["disk"] == 3
    np.testing.assert_array_equal(X, made.X)
    live = OnlineVectors(made.spec, tmp_path / "empty")
    X, n_new = live.vectors(frame["prompt"].to_list(), frame["response"].to_list())
    assert n_new == 3
    np.testing.assert_allclose(X, made.X, atol=1e-5)
