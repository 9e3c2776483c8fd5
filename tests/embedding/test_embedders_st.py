"""sentence-transformers backend with the real packaged all-MiniLM-L6-v2 on real AlpacaEval texts."""

import json

import numpy as np
import polars as pl
import pytest
from realdata import DATA_DIR

from embrm.core._errors import EmbrmError
from embrm.embedding.backends import DEFAULT_MODEL, EmbedBatch, make_embedder
from embrm.embedding.backends._st import CANONICAL_MINILM, STEmbedder

RESPONSES = DATA_DIR / "alpaca_eval_models" / "responses.parquet"
needs_responses = pytest.mark.skipif(not RESPONSES.exists(), reason=f"{RESPONSES} not found (set EMBRM_DATA_DIR)")


@pytest.fixture(scope="module")
def texts():
    """200 real (instruction, answer) texts spread over prompts and models (answers cut to keep the test quick)."""
    df = pl.read_parquet(RESPONSES, columns=["instruction", "output"]).gather_every(97).head(200)
    return (df["instruction"] + "\n\n" + df["output"].str.slice(0, 900)).to_list()


@pytest.fixture(scope="module")
def fp32():
    emb = make_embedder("st", dtype="float32")
    yield emb
    emb.close()


@pytest.fixture(scope="module")
def fp32_batch(fp32, texts):
    return fp32.embed(texts)


def test_spec_without_loading_the_model():
    emb = make_embedder("st", dtype="float32")
    spec = emb.spec()
    assert emb._model is None  # spec never loads weights (a warm cache run must stay model-free)
    assert spec == json.loads(json.dumps(spec))
    assert spec["model"] == CANONICAL_MINILM and spec["max_length"] == 256 and spec["normalize"] is True
    assert spec["dtype"] == "float32" and spec["backend"] == "st" and spec["truncation"] == "prompt_first"
    # every alias of the packaged model gives the same (machine-independent) spec
    for alias in (None, DEFAULT_MODEL, CANONICAL_MINILM):
        assert make_embedder("st", alias, dtype="float32").spec() == spec
    assert make_embedder("st", dtype="auto").spec()["dtype"] in ("float32", "bfloat16", "int8")
    assert make_embedder("st", max_length=128, dtype="float32").spec()["max_length"] == 128


@pytest.mark.slow
@needs_responses
def test_real_texts_shape_dtype_norm(fp32, fp32_batch, texts):
    b = fp32_batch
    assert isinstance(b, EmbedBatch)
    assert b.vectors.shape == (len(texts), 384) and b.vectors.dtype == np.float32 and b.vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(b.vectors, axis=1), 1.0, atol=1e-5)
    assert b.n_tokens.dtype == np.int32 and b.truncated.dtype == bool
    assert b.response_cut.dtype == bool and not b.response_cut.any()  # no response starts: nothing known
    assert (b.truncated == (b.n_tokens > 256)).all() and not b.truncated.all()
    assert fp32.dim == 384
    # spec unchanged by loading; rows independent of batch composition
    assert fp32.spec() == make_embedder("st", dtype="float32").spec()
    again = fp32.embed(texts[5:8][::-1]).vectors
    np.testing.assert_allclose(again, b.vectors[5:8][::-1], atol=1e-5)


@pytest.mark.slow
@needs_responses
def test_bf16_matches_fp32(fp32_batch, texts):
    emb = make_embedder("st", dtype="bfloat16")
    b16 = emb.embed(texts)
    assert emb.spec()["dtype"] == "bfloat16" and b16.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b16.vectors, axis=1), 1.0, atol=1e-5)
    cos = (b16.vectors * fp32_batch.vectors).sum(1)
    assert cos.min() >= 0.999, cos.min()
    np.testing.assert_array_equal(b16.n_tokens, fp32_batch.n_tokens)


@pytest.mark.slow
def test_truncation_flags_and_max_length(fp32):
    long = "word " * 2000
    b = fp32.embed(["short text", long])
    assert b.truncated.tolist() == [False, True]
    assert b.n_tokens[0] == 4 and b.n_tokens[1] > 2000  # [CLS] short text [SEP]; counted before truncation
    short = make_embedder("st", max_length=16, dtype="float32")
    b16 = short.embed([long, "word " * 14 + "stop here"])
    assert b16.truncated.tolist() == [True, True]
    # cut to 16 tokens: the tail beyond the cut does not change the vector
    np.testing.assert_allclose(b16.vectors[0], short.embed(["word " * 30]).vectors[0], atol=1e-6)


@pytest.mark.slow
def test_normalize_off_gives_raw_pooled_vectors(fp32):
    raw = make_embedder("st", normalize=False, dtype="float32").embed(["a cat sat on the mat", "hello"]).vectors
    norms = np.linalg.norm(raw, axis=1)
    assert (np.abs(norms - 1) > 0.1).all()  # the model's Normalize module was removed
    np.testing.assert_allclose(raw / norms[:, None], fp32.embed(["a cat sat on the mat", "hello"]).vectors, atol=1e-5)


@pytest.mark.slow
def test_empty_and_bad_inputs(fp32):
    b = fp32.embed([])
    assert b.vectors.shape == (0, 384) and b.n_tokens.shape == (0,)
    with pytest.raises(EmbrmError, match="text 1 is NoneType"):
        fp32.embed(["ok", None])
    with pytest.raises(EmbrmError, match="single str"):
        fp32.embed("just one")


@pytest.mark.slow
def test_user_errors_are_one_line():
    cases = [
        (lambda: make_embedder("st", "/no/such/model"), "model path /no/such/model does not exist"),
        (lambda: make_embedder("nope"), "unknown embedder backend 'nope'"),
        (lambda: make_embedder("st", batchsize=3), "unknown option"),
        (lambda: make_embedder("st", dtype="float16"), "dtype='float16'"),
        (lambda: make_embedder("st", max_length=0), "max_length=0"),
        (lambda: make_embedder("st", max_length=100_000).embed(["x"]), "exceeds"),
    ]
    for build, message in cases:
        with pytest.raises(EmbrmError, match=message) as info:
            build()
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_local_directory_path(tmp_path, fp32):
    """A directory saved by this sentence-transformers (max length in tokenizer_config, not sentence_bert_config)
    is loaded as given, named by its path in spec, and its default max_length is read without loading it."""
    fp32.embed(["x"])
    fp32._model.save(str(tmp_path / "minilm"))
    emb = STEmbedder(str(tmp_path / "minilm"), dtype="float32")
    assert emb.spec()["model"] == str(tmp_path / "minilm") and emb.spec()["max_length"] == 256
    assert emb._model is None
    np.testing.assert_allclose(emb.embed(["hello"]).vectors, fp32.embed(["hello"]).vectors, atol=1e-6)
