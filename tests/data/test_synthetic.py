import numpy as np
import polars as pl
import pytest

from embrm.core._errors import EmbrmError
from embrm.data._synthetic import synthetic_pool


def test_shapes_dtypes_and_contract():
    sp = synthetic_pool(30, 20, dim=16, k_members=5, seed=1)
    r = sp.responses
    assert r.height == 600
    assert r.schema["prompt_id"] == pl.Utf8 and r.schema["response_id"] == pl.Utf8
    assert r.schema["gold"] == pl.Float64 and r["response_id"].is_unique().all()
    assert "prompt" not in r.columns  # texts omitted by default
    assert sp.embeddings.shape == (600, 16) and sp.embeddings.dtype == np.float32
    assert sp.scores.shape == (600, 5) and sp.scores.dtype == np.float32
    np.testing.assert_array_equal(r["gold"].to_numpy(), sp.gold)
    assert r["prompt_id"].n_unique() == 30


def test_seeded_and_embedding_flag_consistent():
    a = synthetic_pool(20, (3, 11), dim=8, seed=5)
    b = synthetic_pool(20, (3, 11), dim=8, seed=5, embeddings=False)
    c = synthetic_pool(20, (3, 11), dim=8, seed=6)
    assert b.embeddings is None
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.prompt_index, b.prompt_index)
    assert a.responses["prompt_id"].to_list() == b.responses["prompt_id"].to_list()
    assert len(a.gold) != len(c.gold) or not np.allclose(a.gold, c.gold)
    sizes = np.bincount(a.prompt_index)
    assert sizes.min() >= 3 and sizes.max() <= 11 and len(set(sizes)) > 1


def test_gold_is_the_stated_function_of_embeddings():
    sp = synthetic_pool(10, 10, dim=12, seed=2, nonlinear=0.0, error=0.0)
    u, v = sp.truth["u"], sp.truth["v"]
    x = sp.embeddings.astype(np.float64)
    s, h = x @ u, x @ v
    np.testing.assert_allclose(sp.gold, s - 0.35 * np.maximum(h, 0) ** 2, atol=1e-4)
    np.testing.assert_allclose(sp.scores, s[:, None] + h[:, None] * sp.truth["hack_k"], atol=1e-4)


def test_no_hack_no_error_members_equal_gold_base():
    sp = synthetic_pool(10, 10, dim=12, seed=2, hack=0, hack_penalty=0, error=0)
    np.testing.assert_allclose(sp.scores, np.repeat(sp.gold[:, None], 10, 1), atol=1e-4)


def test_texts_and_errors():
    sp = synthetic_pool(3, 2, dim=4, texts=True)
    assert (sp.responses["prompt"].str.len_chars() > 0).all()
    with pytest.raises(EmbrmError, match="lo <= hi"):
        synthetic_pool(3, (5, 2))
