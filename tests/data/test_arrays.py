"""Text-less array files (Sun et al.'s release shape): every format opens without being read where it can, keeps
its dtype, refuses a bad file in one line naming it, and big-file facts (digest, finiteness) are remembered."""

import hashlib
import json
import os

import ml_dtypes
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file as save_safetensors
from safetensors.torch import save_file as save_safetensors_torch

from embrm.core._errors import EmbrmError
from embrm.data import _arrays
from embrm.data._arrays import ARRAY_FORMATS, ArraySplit, ensure_finite, file_digest, open_array, read_split

P, R, D = 3, 4, 5


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    """A fresh state directory per test: the store is its file-facts.json."""
    monkeypatch.setenv("EMBRM_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def emb(dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal((P, R, D)).astype(dtype)


def gold(seed=1):
    return np.random.default_rng(seed).standard_normal((P, R))


def refused(match_file, fn, *args, **kwargs) -> str:
    """The message of the EmbrmError fn raises: one line naming the file."""
    with pytest.raises(EmbrmError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert match_file in msg and "\n" not in msg, msg
    return msg


def mapped(a: np.ndarray) -> bool:
    """The array (or an array it views) is a memory map of a file."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a, np.ndarray) else None
    return False


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_npy_is_memory_mapped_with_its_dtype(tmp_path, dtype):
    x = emb(dtype)
    np.save(tmp_path / "e.npy", x)
    a = open_array(tmp_path / "e.npy")
    assert isinstance(a, np.memmap) and a.dtype == dtype and not a.flags.writeable
    np.testing.assert_array_equal(a, x)


def test_npz_stored_members_are_mapped_compressed_ones_read(tmp_path):
    x, g = emb(np.float16), gold()
    np.savez(tmp_path / "s.npz", emb=x, gold=g)
    np.savez_compressed(tmp_path / "c.npz", emb=x)
    a = open_array(tmp_path / "s.npz", "emb")
    assert isinstance(a, np.memmap) and a.dtype == np.float16
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(open_array(tmp_path / "s.npz", "gold"), g)
    c = open_array(tmp_path / "c.npz")  # the only member
    assert not mapped(c) and c.dtype == np.float16
    np.testing.assert_array_equal(c, x)
    msg = refused("s.npz", open_array, tmp_path / "s.npz")
    assert "emb, gold" in msg and "name one" in msg
    assert "emb, gold" in refused("s.npz", open_array, tmp_path / "s.npz", "embeddings")


def test_npz_member_after_a_long_name_and_fortran_order(tmp_path):
    """The data offset comes from each member's own local header (names of any length, Fortran order kept)."""
    x = np.asfortranarray(emb(np.float64)[0])
    np.savez(tmp_path / "f.npz", **{"a" * 200: np.zeros(7), "x": x})
    a = open_array(tmp_path / "f.npz", "x")
    assert isinstance(a, np.memmap) and a.flags.f_contiguous
    np.testing.assert_array_equal(a, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_safetensors_is_memory_mapped_with_its_dtype(tmp_path, dtype):
    x, g = emb(dtype), gold()
    save_safetensors({"embeddings": x, "gold": g}, tmp_path / "e.safetensors", metadata={"by": "test"})
    a = open_array(tmp_path / "e.safetensors", "embeddings")
    assert isinstance(a, np.memmap) and a.dtype == dtype
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(open_array(tmp_path / "e.safetensors", "gold"), g)
    msg = refused("e.safetensors", open_array, tmp_path / "e.safetensors")  # __metadata__ is not a tensor
    assert "(embeddings, gold)" in msg and "__metadata__" not in msg


def test_safetensors_bfloat16(tmp_path):
    t = torch.randn(P, R, D).to(torch.bfloat16)
    save_safetensors_torch({"x": t}, tmp_path / "b.safetensors")
    a = open_array(tmp_path / "b.safetensors")
    assert isinstance(a, np.memmap) and a.dtype == ml_dtypes.bfloat16 and a.shape == (P, R, D)
    np.testing.assert_array_equal(a.astype(np.float32), t.float().numpy())


def test_torch_tensor_dict_and_bfloat16_are_shared_not_copied(tmp_path):
    x = torch.randn(P, R, D)
    torch.save(x, tmp_path / "t.pt")
    torch.save({"embeddings": x.to(torch.bfloat16), "gold": torch.randn(P, R, dtype=torch.float64), "n": 3},
               tmp_path / "d.pth")
    a = open_array(tmp_path / "t.pt")
    assert a.dtype == np.float32 and not a.flags.owndata
    np.testing.assert_array_equal(a, x.numpy())
    b = open_array(tmp_path / "d.pth", "embeddings")
    assert b.dtype == ml_dtypes.bfloat16 and not b.flags.owndata
    np.testing.assert_array_equal(b.astype(np.float32), x.to(torch.bfloat16).float().numpy())
    assert open_array(tmp_path / "d.pth", "gold").dtype == np.float64
    torch.save(x, tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # cannot be mapped: read
    np.testing.assert_array_equal(open_array(tmp_path / "old.pt"), x.numpy())
    assert "embeddings, gold" in refused("d.pth", open_array, tmp_path / "d.pth")  # `n` is no tensor
    assert "embeddings, gold" in refused("d.pth", open_array, tmp_path / "d.pth", "n")


class Payload:
    """A pickle that would run code when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_torch_pickles_are_refused_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"x": torch.ones(2), "evil": Payload(str(marker))}, tmp_path / "p.pt")
    assert "tensors only" in refused("p.pt", open_array, tmp_path / "p.pt")
    assert not marker.exists()


def test_parquet_list_and_scalar_columns(tmp_path):
    x, g = emb(), gold()
    ids = np.repeat([f"q{i}" for i in (2, 0, 1)], R)  # prompts delimited by runs, in file order
    pq.write_table(pa.table({"prompt_id": ids, "embedding": pa.array(list(x.reshape(P * R, D)), pa.list_(pa.float32())),
                             "fixed": pa.array(list(x.reshape(P * R, D)), pa.list_(pa.float32(), D)),
                             "gold": g.ravel()}), tmp_path / "t.parquet")
    a = open_array(tmp_path / "t.parquet")
    assert a.dtype == np.float32 and a.shape == (P, R, D)
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(open_array(tmp_path / "t.parquet", "fixed"), x)
    np.testing.assert_array_equal(open_array(tmp_path / "t.parquet", "gold"), g)
    assert "prompt_id, embedding" in refused("t.parquet", open_array, tmp_path / "t.parquet", "emb")
    split = read_split(tmp_path / "t.parquet", tmp_path / "t.parquet")  # gold read from its "gold" column
    np.testing.assert_array_equal(split.gold, g)


def test_parquet_groups_must_be_equal_and_consecutive(tmp_path):
    pq.write_table(pa.table({"prompt_id": ["a", "a", "b"], "gold": [1.0, 2.0, 3.0]}), tmp_path / "u.parquet")
    assert "same number" in refused("u.parquet", open_array, tmp_path / "u.parquet", "gold")
    pq.write_table(pa.table({"prompt_id": ["a", "b", "a", "b"], "gold": [1.0, 2.0, 3.0, 4.0]}),
                   tmp_path / "s.parquet")
    assert "consecutive" in refused("s.parquet", open_array, tmp_path / "s.parquet", "gold")


# ----------------------------------------------------------------------------- bad files


def test_bad_files_are_one_line_errors_naming_them(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert "pickle" in refused("obj.npy", open_array, tmp_path / "obj.npy")

    np.save(tmp_path / "full.npy", emb())
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-7])
    assert "truncated" in refused("cut.npy", open_array, tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    refused("junk.npy", open_array, tmp_path / "junk.npy")

    save_safetensors({"x": emb()}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-7])
    assert "truncated" in refused("cut.safetensors", open_array, tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:20])  # cut inside the JSON header
    assert "truncated" in refused("head.safetensors", open_array, tmp_path / "head.safetensors")

    (tmp_path / "e.h5").write_bytes(b"")
    assert ".npy" in refused("e.h5", open_array, tmp_path / "e.h5")
    refused("absent.npy", open_array, tmp_path / "absent.npy")
    (tmp_path / "dir.npy").mkdir()
    assert "directory" in refused("dir.npy", open_array, tmp_path / "dir.npy")
    assert "use one of x" in refused("full.safetensors", open_array, tmp_path / "full.safetensors", "y")
    refused("full.npy", open_array, tmp_path / "full.npy", "y")  # one array: no key to pick
    np.savez(tmp_path / "full.npz", x=emb())
    (tmp_path / "cut.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:-30])
    refused("cut.npz", open_array, tmp_path / "cut.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([None, 1], dtype=object))
    assert "pickle" in refused("obj.npz", open_array, tmp_path / "obj.npz")
    refused("absent.npy", file_digest, tmp_path / "absent.npy")
    (tmp_path / "bad.pt").write_bytes(b"garbage" * 10)
    refused("bad.pt", open_array, tmp_path / "bad.pt")


def test_formats_are_the_documented_ones():
    assert ARRAY_FORMATS == (".npy", ".npz", ".safetensors", ".pt", ".pth", ".parquet")


# ----------------------------------------------------------------------------- a split


def test_read_split_keeps_the_map_and_squeezes_gold(tmp_path):
    x, g = emb(np.float16), gold()
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "g.npy", g[..., None].astype(np.float32))
    s = read_split(tmp_path / "e.npy", tmp_path / "g.npy")
    assert isinstance(s, ArraySplit) and isinstance(s.embeddings, np.memmap) and s.embeddings.dtype == np.float16
    assert s.gold.shape == (P, R) and s.gold.dtype == np.float64 and not mapped(s.gold)
    np.testing.assert_array_equal(s.gold, g.astype(np.float32))
    assert s.embeddings_path.name == "e.npy" and s.gold_path.name == "g.npy"
    np.save(tmp_path / "gi.npy", np.arange(P * R).reshape(P, R))  # integer gold is fine
    assert read_split(tmp_path / "e.npy", tmp_path / "gi.npy").gold.dtype == np.float64


def test_read_split_refuses_bad_shapes_and_values(tmp_path):
    x, g = emb(), gold()
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "g.npy", g)
    np.save(tmp_path / "short.npy", g[:2])
    msg = refused("short.npy", read_split, tmp_path / "e.npy", tmp_path / "short.npy", where="sun.toml [train]")
    assert msg.startswith("sun.toml [train]: ") and "e.npy" in msg and "(2, 4)" in msg and "(3, 4, 5)" in msg

    msg = refused("absent.npy", read_split, tmp_path / "e.npy", tmp_path / "absent.npy", where="sun.toml [test]")
    assert msg.startswith("sun.toml [test]: ")
    np.save(tmp_path / "flat.npy", x[0])
    assert "3-D" in refused("flat.npy", read_split, tmp_path / "flat.npy", tmp_path / "g.npy")
    np.save(tmp_path / "one.npy", x[:, :1])
    assert "2 responses" in refused("one.npy", read_split, tmp_path / "one.npy", tmp_path / "g.npy")
    np.save(tmp_path / "int.npy", x.astype(np.int32))
    assert "int32" in refused("int.npy", read_split, tmp_path / "int.npy", tmp_path / "g.npy")

    bad = g.copy()
    bad[1, 2] = bad[2, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    msg = refused("nan.npy", read_split, tmp_path / "e.npy", tmp_path / "nan.npy")
    assert "2 responses" in msg and "prompt 1, response 2" in msg

    x[2, 3, 1] = np.inf
    np.save(tmp_path / "inf.npy", x)
    msg = refused("inf.npy", read_split, tmp_path / "inf.npy", tmp_path / "g.npy")
    assert "1 responses" in msg and "prompt 2, response 3" in msg


def test_finiteness_scan_in_chunks_finds_the_first_bad_row(tmp_path, monkeypatch):
    monkeypatch.setattr(_arrays, "CHUNK_BYTES", R * D * 4)  # one prompt a chunk
    x = emb(np.float64)
    x[2, 1, 0] = np.nan
    x[2, 3, 4] = 1e300  # finite in float64, inf as the float32 a fit uses
    np.save(tmp_path / "e.npy", x)
    msg = refused("e.npy", ensure_finite, open_array(tmp_path / "e.npy"), tmp_path / "e.npy")
    assert "2 responses" in msg and "prompt 2, response 1" in msg
    t = torch.from_numpy(emb()).to(torch.bfloat16)
    t[1, 0, 0] = float("nan")
    save_safetensors_torch({"x": t}, tmp_path / "b.safetensors")
    msg = refused("b.safetensors", ensure_finite, open_array(tmp_path / "b.safetensors"), tmp_path / "b.safetensors")
    assert "prompt 1, response 0" in msg


# ----------------------------------------------------------------------------- remembered facts


def test_digest_is_sha256_remembered_until_the_file_changes(tmp_path, monkeypatch, state):
    path = tmp_path / "e.npy"
    np.save(path, emb())
    calls = []
    real = _arrays._sha256
    monkeypatch.setattr(_arrays, "_sha256", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(_arrays, "HASH_BLOCK", 100)  # several blocks
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_digest(path) == expected and len(calls) == 1
    assert file_digest(path) == expected and len(calls) == 1
    store = json.loads((state / "file-facts.json").read_text())
    entry = store[str(path.resolve())]
    assert entry["sha256"] == expected and entry["size"] == path.stat().st_size

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # same bytes, new mtime
    assert file_digest(path) == expected and len(calls) == 2
    with open(path, "ab") as f:  # new size
        f.write(b"x")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # ... at the remembered mtime
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest() != expected and len(calls) == 3


def test_a_damaged_or_unwritable_store_is_ignored(tmp_path, monkeypatch, state):
    path = tmp_path / "e.npy"
    np.save(path, emb())
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    state.mkdir()
    for junk in ("{not json", "[1, 2]", json.dumps({str(path.resolve()): "x"}),
                 json.dumps({str(path.resolve()): {"size": "?", "finite": "e"}})):
        (state / "file-facts.json").write_text(junk)
        assert file_digest(path) == expected
        ensure_finite(open_array(path), path)
        assert json.loads((state / "file-facts.json").read_text())[str(path.resolve())]["finite"] == [""]
    st = path.stat()  # an entry for the file as it is, with fields of the wrong types
    (state / "file-facts.json").write_text(json.dumps({str(path.resolve()): {
        "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": 5, "finite": ""}}))
    assert file_digest(path) == expected
    refused("e.npy", ensure_finite, np.full((P, R, D), np.nan), path)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EMBRM_STATE_DIR", str(tmp_path / "file" / "state"))  # cannot be created, even by root
    assert file_digest(path) == expected


def test_finiteness_is_remembered_per_key_until_the_file_changes(tmp_path, state):
    path = tmp_path / "e.npz"
    np.savez(path, a=emb(), b=emb())
    ensure_finite(open_array(path, "a"), path, "a")
    nan = np.full((P, R, D), np.nan)
    ensure_finite(nan, path, "a")  # remembered: not scanned again
    assert json.loads((state / "file-facts.json").read_text())[str(path.resolve())]["finite"] == ["a"]
    refused("e.npz", ensure_finite, nan, path, "b")  # another array of the file
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    refused("e.npz", ensure_finite, nan, path, "a")
