import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from embrm.core._errors import EmbrmError
from embrm.embedding._cache import MANIFEST_FILE, EmbeddingCache, list_caches, text_keys
from embrm.embedding._verify import cache_dirs, leftovers, repair, verify

SPEC = {"backend": "test", "model": "org/model-a", "dtype": "float32", "template": "{prompt}\n\n{response}"}


def vectors(n, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def two_part_cache(tmp_path, n=6):
    cache = EmbeddingCache(tmp_path, SPEC)
    keys = text_keys([f"text {i}" for i in range(n)])
    X = vectors(n)
    cache.write_part(keys[: n // 2], X[: n // 2])
    cache.write_part(keys[n // 2:], X[n // 2:])
    return cache, keys, X


def test_write_lookup_missing_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    keys = text_keys([f"text {i}" for i in range(10)])
    X = vectors(10)
    cache.write_part(keys[:6], X[:6])
    assert cache.missing(keys) == keys[6:]
    cache.write_part(keys[6:], X[6:], n_tokens=np.arange(4), truncated=np.array([0, 1, 0, 0], bool),
                     response_cut=np.array([0, 1, 0, 0], bool))
    assert cache.missing(keys + keys) == []
    order = [3, 9, 0, 3]
    np.testing.assert_array_equal(cache.lookup([keys[i] for i in order]), X[order])
    assert cache.dim == 8 and len(cache.parts()) == 2
    truncated, cut = cache.flags(keys)
    assert truncated.tolist() == cut.tolist() == [False] * 7 + [True] + [False] * 2
    fresh = EmbeddingCache(tmp_path, SPEC)  # another reader sees the same listed state
    np.testing.assert_array_equal(fresh.lookup(keys), X)


def test_parts_carry_schema_footer_metadata_and_page_checksums(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    part = cache.write_part(text_keys(["a", "b"]), vectors(2))
    schema = pq.read_schema(part)
    etype = schema.field("embedding").type
    assert etype.list_size == 8 and str(etype.value_type) == "float"
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["embrm.fingerprint"] == cache.fingerprint and meta["embrm.dim"] == "8"
    assert meta["embrm.model"] == "org/model-a" and meta["embrm.template"] == SPEC["template"]
    assert schema.names == ["key", "embedding", "n_tokens", "truncated", "response_cut"]
    m = EmbeddingCache.part_matrix(pq.read_table(part, page_checksum_verification=True))
    assert m.dtype == np.float32 and m.shape == (2, 8)
    manifest = json.loads((cache.path / MANIFEST_FILE).read_text())
    (entry,) = manifest["parts"]
    assert entry["name"] == part.name and entry["rows"] == 2 and entry["bytes"] == part.stat().st_size


def test_settle_merges_parts_and_keeps_first_copy(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    keys = text_keys(["a", "b", "c"])
    X = vectors(3)
    cache.write_part(keys[:2], X[:2])
    cache.write_part(keys[1:], X[1:] + 100)  # a duplicate key: the first copy wins
    cache.settle()
    assert len(cache.parts()) == 1 and len(list(cache.path.glob("part-*.parquet"))) == 1
    np.testing.assert_array_equal(cache.lookup(keys), np.stack([X[0], X[1], X[2] + 100]))
    assert verify(cache.path) == []


def test_directory_is_per_fingerprint_and_an_edited_fingerprint_is_refused(tmp_path):
    a = EmbeddingCache(tmp_path, SPEC)
    a.write_part(text_keys(["x"]), vectors(1))
    b = EmbeddingCache(tmp_path, {**SPEC, "template": "Q: {prompt} A: {response}"})
    assert a.path != b.path and b.missing(text_keys(["x"])) == text_keys(["x"])
    fp = json.loads((a.path / "fingerprint.json").read_text())
    fp["spec"]["model"] = "org/other"
    (a.path / "fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(EmbrmError, match="corrupt or edited fingerprint file.*verify --repair"):
        EmbeddingCache(tmp_path, SPEC)


def test_dimension_change_is_refused(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    cache.write_part(text_keys(["x"]), vectors(1, d=8))
    with pytest.raises(EmbrmError, match="holds 8-d vectors but the model gave 4-d"):
        cache.write_part(text_keys(["y"]), vectors(1, d=4))
    assert len(cache.parts()) == 1 and len(list(cache.path.glob("part-*"))) == 1


def test_non_finite_batch_is_not_written(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    X = vectors(2)
    X[1, 3] = np.nan
    with pytest.raises(EmbrmError, match="non-finite"):
        cache.write_part(text_keys(["a", "b"]), X)
    assert cache.parts() == []


def test_every_flipped_byte_is_refused_by_reads_and_verify(tmp_path):
    cache, keys, X = two_part_cache(tmp_path, n=4)
    cache.settle()
    (part,) = cache.parts()
    good = part.read_bytes()
    rng = np.random.default_rng(0)
    for pos in range(len(good)):  # every byte of the part, each changed to another value
        flipped = bytearray(good)
        flipped[pos] ^= int(rng.integers(1, 256))
        part.write_bytes(bytes(flipped))
        with pytest.raises(EmbrmError, match="verify --repair"):
            EmbeddingCache(tmp_path, SPEC).lookup(keys)
        assert len(verify(cache.path)) == 1, pos
    part.write_bytes(good)
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, SPEC).lookup(keys), X)


def test_unlisted_and_deleted_parts_are_noticed(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    forged = EmbeddingCache(tmp_path / "elsewhere", SPEC)
    forged.write_part(keys[:3], X[:3] + 1)  # same fingerprint, right format: still not part of this cache
    shutil.copy(forged.parts()[0], cache.path / "part-99999999999999999999-forged00.parquet")
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, SPEC).lookup(keys), X)  # never read
    assert verify(cache.path) == [] and any("part not in the manifest" in n for n in leftovers(cache.path))
    cache.parts()[0].unlink()
    with pytest.raises(EmbrmError, match="listed in the manifest but missing"):
        EmbeddingCache(tmp_path, SPEC).lookup(keys)
    report = repair(cache.path)
    assert report.vectors_dropped == 3 and len(report.quarantined) == 1
    assert verify(cache.path) == [] and EmbeddingCache(tmp_path, SPEC).missing(keys) == keys[:3]


def test_truncated_part_is_quarantined_never_deleted(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    bad = cache.parts()[1]
    bad.write_bytes(bad.read_bytes()[:100])  # a crash mid-copy / disk full
    (cache.path / ".part-x.parquet.tmp").write_bytes(b"partial")
    (problem,) = verify(cache.path)  # the temp file is a leftover, not a problem
    assert str(bad) in problem and "truncated" in problem and len(leftovers(cache.path)) == 1
    with pytest.raises(EmbrmError, match="cache verify --repair"):
        EmbeddingCache(tmp_path, SPEC).lookup(keys)
    report = repair(cache.path)
    assert (cache.path / "quarantine" / bad.name).exists() and report.vectors_dropped == 3
    assert verify(cache.path) == []
    fresh = EmbeddingCache(tmp_path, SPEC)
    assert fresh.missing(keys) == keys[3:]  # the good part survives; the lost rows are re-embedded next run
    np.testing.assert_array_equal(fresh.lookup(keys[:3]), X[:3])


def test_repair_restores_fingerprint_and_rebuilds_an_edited_manifest_without_losing_vectors(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    fp = cache.path / "fingerprint.json"
    fp.write_bytes(fp.read_bytes()[:40])  # truncated
    assert "corrupt or edited fingerprint" in verify(cache.path)[0]
    manifest = json.loads((cache.path / MANIFEST_FILE).read_text())
    manifest["dim"] = 5  # edited
    (cache.path / MANIFEST_FILE).write_text(json.dumps(manifest))
    report = repair(cache.path)
    assert report.quarantined == [] and report.vectors_dropped == 0 and len(report.notes) == 2
    assert verify(cache.path) == []
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, SPEC).lookup(keys), X)


def test_a_directory_named_like_a_part_and_a_file_given_as_cache(tmp_path):
    cache, _, _ = two_part_cache(tmp_path)
    (cache.path / "part-0-dir.parquet").mkdir()
    assert any("part-0-dir.parquet" in n for n in leftovers(cache.path))
    repair(cache.path)
    assert verify(cache.path) == [] and (cache.path / "quarantine" / "part-0-dir.parquet").is_dir()
    with pytest.raises(EmbrmError, match="a file, not an embrm cache"):
        cache_dirs(cache.parts()[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbrmError, match="holds no embrm cache"):
        cache_dirs(tmp_path / "empty")
    with pytest.raises(EmbrmError, match="is a file, not a cache directory"):
        EmbeddingCache(cache.parts()[0], SPEC)


def test_cache_without_manifest_is_refused_until_repair_adopts_its_parts(tmp_path):
    cache, keys, X = two_part_cache(tmp_path)
    (cache.path / MANIFEST_FILE).unlink()  # as written by embrm < 0.3
    with pytest.raises(EmbrmError, match="parts without a manifest"):
        EmbeddingCache(tmp_path, SPEC).lookup(keys)
    repair(cache.path)
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, SPEC).lookup(keys), X)


def test_leftovers_of_an_interrupted_merge_are_not_counted_and_are_cleaned(tmp_path):
    cache, _, _ = two_part_cache(tmp_path)
    old = cache.parts()
    saved = [p.read_bytes() for p in old]
    cache.settle()  # merged; now put the old parts back as if the run died before deleting them
    for p, data in zip(old, saved):
        p.write_bytes(data)
    (cache.path / ".part-y.parquet.tmp").write_bytes(b"x")
    info = EmbeddingCache.open(cache.path).info()
    assert (info.n_parts, info.n_vectors, info.n_unique, info.n_leftover) == (1, 6, 6, 3)
    EmbeddingCache(tmp_path, SPEC).settle()
    assert verify(cache.path) == [] and len(list(cache.path.glob("part-*"))) == 1


def test_info_and_listing(tmp_path):
    cache = EmbeddingCache(tmp_path, SPEC)
    cache.write_part(text_keys(["a", "b"]), vectors(2), truncated=np.array([True, False]),
                     response_cut=np.array([True, False]))
    (info,) = [c.info() for c in list_caches(tmp_path)]
    assert info.dim == 8 and info.n_unique == 2 and info.n_parts == 1 and info.spec == SPEC
    assert (info.n_truncated, info.n_response_cut, info.n_leftover) == (1, 1, 0)
    assert EmbeddingCache.open(cache.path).fingerprint == cache.fingerprint
    with pytest.raises(EmbrmError, match="not an embrm cache"):
        EmbeddingCache.open(tmp_path)


def test_cli_verify_passes_with_a_note_on_leftovers_and_repair_clears_them(tmp_path):
    from typer.testing import CliRunner

    from embrm.cli import app

    cache, _, _ = two_part_cache(tmp_path)
    (cache.path / ".part-killed.parquet.tmp").write_bytes(b"half")
    res = CliRunner().invoke(app, ["cache", "verify", str(tmp_path)])
    assert res.exit_code == 0 and "note: " in res.stdout and "cache OK" in res.stdout
    res = CliRunner().invoke(app, ["cache", "verify", str(tmp_path), "--repair"])
    assert res.exit_code == 0 and "removed" in res.stdout
    assert leftovers(cache.path) == [] and "note: " not in CliRunner().invoke(app, ["cache", "verify",
                                                                                  str(tmp_path)]).stdout
