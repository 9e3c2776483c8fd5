"""int8 on OpenVINO (backends._openvino) for the st backend: agreement with float32 torch on real texts, what
dtype "auto" chooses and why, the converted model's integrity on disk, and one-line errors."""

import json

import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR

from embrm.core import EmbrmError, fast_int8
from embrm.embedding.backends import _openvino, make_embedder

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _openvino.available(), reason="openvino/nncf not installed (embrm[fast])")]
RESPONSES = DATA_DIR / "alpaca_eval_models" / "responses.parquet"


@pytest.fixture(scope="module")
def texts():
    """120 real (instruction, answer) texts over prompts and models, whole answers (many longer than the window)."""
    df = pl.read_parquet(RESPONSES, columns=["instruction", "output"]).gather_every(193).head(120)
    return (df["instruction"] + "\n\n" + df["output"]).to_list()


@pytest.fixture(scope="module")
def float32_vectors(texts):
    with make_embedder("st", dtype="float32") as emb:
        return emb.embed(texts).vectors


def _cosines(a, b):
    return np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_agrees_with_float32_on_every_real_text(texts, float32_vectors):
    with make_embedder("st", dtype="int8") as emb:
        batch = emb.embed(texts)
        spec = emb.spec()
    assert batch.vectors.shape == float32_vectors.shape and batch.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1, atol=1e-5)
    assert _cosines(batch.vectors, float32_vectors).min() >= _openvino.AGREEMENT_FLOOR
    assert not np.array_equal(batch.vectors, float32_vectors)  # really another computation
    # int8 caches are their own: the recipe is in the spec, float32's spec is as before (no int8 key)
    assert spec["dtype"] == "int8" and spec["int8"] == _openvino.RECIPE
    assert "int8" not in make_embedder("st", dtype="float32").spec()


def test_int8_cuts_long_texts_prompt_first_as_float32_does(texts):
    starts = [t.index("\n\n") + 2 for t in texts]
    with make_embedder("st", dtype="int8") as q, make_embedder("st", dtype="float32") as f:
        a, b = q.embed(texts, starts), f.embed(texts, starts)
    assert a.truncated.any() and np.array_equal(a.truncated, b.truncated)
    assert np.array_equal(a.response_cut, b.response_cut) and np.array_equal(a.n_tokens, b.n_tokens)


@pytest.mark.skipif(not fast_int8(), reason="this CPU has no int8 dot products, or has fast bfloat16: auto keeps torch")
def test_auto_chooses_int8_once_it_agrees_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBRM_STATE_DIR", str(tmp_path))
    emb = make_embedder("st")
    assert emb.spec()["dtype"] == "int8"
    assert emb.precision().startswith("int8 on OpenVINO, min cosine 0.99")
    records = list((tmp_path / "agreement").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["n"] == len(_openvino.check_sample())

    # measured once per model and machine: a second embedder reads the record instead of measuring
    monkeypatch.setattr(type(emb), "_measure_agreement", lambda self: pytest.fail("measured twice"))
    assert make_embedder("st").spec() == emb.spec()

    # an agreement below the floor: auto keeps float32 and the summary says why
    monkeypatch.setattr(_openvino, "AGREEMENT_FLOOR", 1.01)
    kept = make_embedder("st")
    assert kept.spec()["dtype"] == "float32" and "int8 not used: min cosine" in kept.precision()


def test_a_damaged_converted_model_is_converted_again(monkeypatch, tmp_path, texts, float32_vectors):
    monkeypatch.setenv("EMBRM_STATE_DIR", str(tmp_path))
    with make_embedder("st", dtype="int8") as emb:
        before = emb.embed(texts[:20]).vectors
    (weights,) = (tmp_path / "openvino").glob("*/model.bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the int8 weights
    weights.write_bytes(bytes(data))
    with make_embedder("st", dtype="int8") as emb:
        after = emb.embed(texts[:20]).vectors
    assert np.array_equal(after, before)  # converted again from the torch weights, not read damaged
    assert list((tmp_path / "openvino").iterdir()) == [weights.parent]  # no temp folders left behind


def test_int8_errors_are_one_line(monkeypatch):
    with pytest.raises(EmbrmError, match="dtype int8 runs on the CPU") as e:
        from embrm.embedding.backends._base import resolve_dtype

        resolve_dtype("int8", "cuda")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(_openvino, "available", lambda: False)
    with pytest.raises(EmbrmError, match=r"pip install \"embrm\[fast\]\"") as e:
        make_embedder("st", dtype="int8")
    assert "\n" not in str(e.value)
    assert make_embedder("st").spec()["dtype"] in ("float32", "bfloat16")  # auto without OpenVINO: torch
