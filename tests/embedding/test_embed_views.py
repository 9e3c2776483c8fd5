"""The embed pipeline's views (several layers x poolings of one causal LM from one forward pass) and chat
templates, on a tiny saved Llama and real texts."""

import json
import shutil

import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR, needs_data
from synthdata import tiny_llama
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core._errors import EmbrmError
from embrm.data._dataset import load_pool
from embrm.embedding._embed import CHAT, EmbedderConfig, cached_embeddings, embed_views, view_groups

pytestmark = [needs_data, pytest.mark.slow]  # a tiny causal LM built with transformers
COLUMNS = ["--prompt-col", "instruction", "--response-col", "output", "--gold-col", "gold_winprob_vs_gpt4turbo",
           "--response-key", "model"]
CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    """~40 real answers (1 prompt of the 58-model pool), cut to 200 characters."""
    df = pl.read_parquet(DATA_DIR / "alpaca_eval_models" / "responses.parquet")
    df = df.filter(pl.col("prompt_id") == df["prompt_id"].unique().sort()[0]).head(40)
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    df.with_columns(pl.col("output").str.slice(0, 200)).write_parquet(path)
    return path


def load(path):
    return load_pool(path, prompt_col="instruction", response_col="output", gold_col="gold_winprob_vs_gpt4turbo",
                     response_key="model")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, pool_file):
    texts = [*load(pool_file).responses["response"].to_list(), CHATML]
    return tiny_llama(tmp_path_factory.mktemp("tiny_lm"), texts, vocab_size=400, max_positions=512)


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory, tiny_lm):
    """The tiny LM with a chat template in its tokenizer config."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("chat_lm")
    shutil.copytree(tiny_lm, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return out


def configs(model, views):
    return [EmbedderConfig(backend="hf", model=str(model), dtype="float32", batch_size=8, layer=layer,
                           pooling=pooling) for layer, pooling in views]


VIEWS = [(-1, "last"), (1, "mean"), (0, "max"), (-1, "mean_response")]


def test_one_pass_fills_one_cache_per_view_equal_to_separate_runs(pool_file, tiny_lm, tmp_path):
    ds = load(pool_file)
    cfgs = configs(tiny_lm, VIEWS)
    outcomes = embed_views(ds, cfgs, cache_dir=tmp_path / "views", progress=False)
    assert len({o.fingerprint for o in outcomes}) == len(VIEWS)
    for cfg, outcome in zip(cfgs, outcomes):
        alone = cfg.embed(ds, tmp_path / "alone", progress=False)
        assert outcome.result.fingerprint == alone.fingerprint and outcome.result.spec["pooling"] == cfg.pooling
        np.testing.assert_array_equal(outcome.result.X, alone.X)
    again = embed_views(ds, cfgs, cache_dir=tmp_path / "views", progress=False)
    assert [o.n_embedded for o in again] == [0] * len(VIEWS)


def test_a_new_view_embeds_only_what_it_lacks(pool_file, tiny_lm, tmp_path):
    ds = load(pool_file)
    first, second = configs(tiny_lm, [(-1, "last"), (1, "max")])
    first.embed(ds, tmp_path, progress=False)
    outcomes = embed_views(ds, [first, second], cache_dir=tmp_path, progress=False)
    assert outcomes[0].result.n_texts == len(ds.responses) and outcomes[1].result is not None
    np.testing.assert_array_equal(outcomes[1].result.X, second.embed(ds, tmp_path / "b", progress=False).X)


def test_view_groups_and_bad_groups(tiny_lm):
    a, b = configs(tiny_lm, [(-1, "last"), (1, "max")])
    st = EmbedderConfig()
    assert view_groups([a, st, b]) == [[a, b]] and view_groups([a, st]) == []
    with pytest.raises(EmbrmError, match="differ only in layer and pooling"):
        embed_views(pl.DataFrame(), [a, EmbedderConfig(backend="hf", model=str(tiny_lm), dtype="bfloat16")])
    with pytest.raises(EmbrmError, match="once"):
        embed_views(load_pool_frame(), [a, a])


def load_pool_frame():
    return pl.DataFrame({"prompt": ["p"], "response": ["r"], "prompt_id": ["0"]})


def test_cli_views(pool_file, tiny_lm, tmp_path):
    args = ["embed", str(pool_file), *COLUMNS, "--backend", "hf", "--model", str(tiny_lm), "--dtype", "float32",
            "--cache-dir", str(tmp_path)]
    res = CliRunner().invoke(app, [*args, "--views", "-1:last,1:max", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["layer"], r["pooling"], r["complete"]) for r in rows] == [(-1, "last", True), (1, "max", True)]
    res = CliRunner().invoke(app, [*args, "--views", "last"])
    assert res.exit_code == 2 and "LAYER:POOLING" in res.output
    res = CliRunner().invoke(app, [*args, "--views", "9:last"])
    assert res.exit_code == 2 and "out of range" in res.output


def test_chat_template_texts_are_the_models_own_and_recorded(pool_file, chat_lm, tmp_path):
    ds = load(pool_file)
    cfg = EmbedderConfig(backend="hf", model=str(chat_lm), dtype="float32", template=CHAT, pooling="mean_response")
    res = cfg.embed(ds, tmp_path, progress=False)
    assert res.spec["template"] == "chat" and res.spec["chat_template"] == CHATML
    plain = EmbedderConfig(backend="hf", model=str(chat_lm), dtype="float32", template="plain",
                           pooling="mean_response").embed(ds, tmp_path, progress=False)
    assert plain.fingerprint != res.fingerprint and plain.spec["template"] == "{prompt}\n\n{response}"
    assert not np.array_equal(plain.X, res.X)
    np.testing.assert_array_equal(cached_embeddings(ds, res.spec, tmp_path), res.X)  # re-rendered without a model


def test_chat_template_missing_is_one_line(pool_file, tiny_lm, tmp_path):
    res = CliRunner().invoke(app, ["embed", str(pool_file), *COLUMNS, "--backend", "hf", "--model", str(tiny_lm),
                                   "--dtype", "float32", "--template", "chat", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no chat template" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["embed", str(pool_file), *COLUMNS, "--template", "chat",
                                   "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "backend" in res.output
