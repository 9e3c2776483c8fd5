import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from embrm.cache import EmbeddingCache, list_caches, text_keys
from embrm.errors import EmbrmError

SPEC = {"backend": "test", "model": "org/model-a", "dtype": "float32", "template": "{prompt}\n\n{response}"}


def vectors(n, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_write_lookup_missing_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    keys = text_keys([f"text {i}" for i in range(10)])
    X = vectors(10)
    cache.write_part(keys[:6], X[:6])
    assert cache.missing(keys) == keys[6:]
    cache.write_part(keys[6:], X[6:], n_tokens=np.arange(4), truncated=np.array([0, 1, 0, 0], bool))
    assert cache.missing(keys + keys) == []
    order = [3, 9, 0, 3]
    np.testing.assert_array_equal(cache.lookup([keys[i] for i in order]), X[order])
    assert cache.dim == 8 and len(cache.parts()) == 2


def test_parts_carry_schema_and_footer_metadata(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    part = cache.write_part(text_keys(["a", "b"]), vectors(2))
    schema = pq.read_schema(part)
    etype = schema.field("embedding").type
    assert etype.list_size == 8 and str(etype.value_type) == "float"
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["embrm.fingerprint"] == cache.fingerprint and meta["embrm.dim"] == "8"
    assert meta["embrm.model"] == "org/model-a" and meta["embrm.template"] == SPEC["template"]
    # zero-copy (n, d) float32 view of one part
    m = EmbeddingCache.part_matrix(pq.read_table(part))
    assert m.dtype == np.float32 and m.shape == (2, 8)


def test_compact_merges_parts_and_keeps_first_copy(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    keys = text_keys(["a", "b", "c"])
    X = vectors(3)
    cache.write_part(keys[:2], X[:2])
    cache.write_part(keys[1:], X[1:] + 100)  # a duplicate key (e.g. crash between compact's steps)
    cache.compact()
    assert len(cache.parts()) == 1
    np.testing.assert_array_equal(cache.lookup(keys), np.stack([X[0], X[1], X[2] + 100]))


def test_directory_is_per_fingerprint_and_checked(tmp_path):
    a = EmbeddingCache(tmp_path, SPEC)
    a.write_part(text_keys(["x"]), vectors(1))
    b = EmbeddingCache(tmp_path, {**SPEC, "template": "Q: {prompt} A: {response}"})
    assert a.path != b.path and b.missing(text_keys(["x"])) == text_keys(["x"])
    # a directory whose fingerprint.json names another embedder is refused, untouched
    fp = json.loads((a.path / "fingerprint.json").read_text())
    fp["fingerprint"] = "0" * 32
    (a.path / "fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(EmbrmError, match="written by another embedder"):
        EmbeddingCache(tmp_path, SPEC)


def test_dimension_change_is_refused(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    cache.write_part(text_keys(["x"]), vectors(1, d=8))
    with pytest.raises(EmbrmError, match="holds 8-d vectors but the model gave 4-d"):
        cache.write_part(text_keys(["y"]), vectors(1, d=4))
    assert len(cache.parts()) == 1


def test_non_finite_batch_is_not_written(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    X = vectors(2)
    X[1, 3] = np.nan
    with pytest.raises(EmbrmError, match="non-finite"):
        cache.write_part(text_keys(["a", "b"]), X)
    assert cache.parts() == []


def test_verify_detects_truncated_part_and_repair_removes_it(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    keys = text_keys(["a", "b", "c", "d"])
    cache.write_part(keys[:2], vectors(2))
    bad = cache.write_part(keys[2:], vectors(2, seed=1))
    bad.write_bytes(bad.read_bytes()[:100])  # a crash mid-copy / disk full
    (cache.path / ".part-x.parquet.tmp").write_bytes(b"partial")
    problems = cache.verify()
    assert len(problems) == 2 and any(str(bad) in p for p in problems)
    with pytest.raises(EmbrmError, match="cache verify --repair"):
        EmbeddingCache(tmp_path, SPEC).lookup(keys)
    cache.verify(repair=True)
    assert cache.verify() == []
    assert cache.missing(keys) == keys[2:]  # the good part survives; the lost rows are re-embedded next run


def test_info_and_listing(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    cache.write_part(text_keys(["a", "b"]), vectors(2))
    (info,) = [c.info() for c in list_caches(tmp_path)]
    assert info.dim == 8 and info.n_unique == 2 and info.n_parts == 1 and info.spec == SPEC
    assert EmbeddingCache.open(cache.path).fingerprint == cache.fingerprint
    with pytest.raises(EmbrmError, match="not an embrm cache"):
        EmbeddingCache.open(tmp_path)
