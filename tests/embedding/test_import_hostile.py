"""Hostile files for `embrm import` and the array opener `embrm.data.open_array`: headers that lie about their size
(a few bytes declaring 10^11 x 384 floats), damaged .npy/.npz/.safetensors/torch/parquet files, bad `--order` id
files, one text given two vectors, and `--backend imported` pointed at a cache of another backend.

Each is refused with one `error:` line naming the file (and member, line or row) and nothing in the cache changes;
the header cases are refused by the opener too, with an EmbrmError before anything is allocated (a PiB request
would raise MemoryError; a GB one would show in tracemalloc's peak)."""

import collections
import contextlib
import io
import json
import pickle
import re
import struct
import tracemalloc
import zipfile
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import polars as pl
import pytest
import torch
from badinput import Bad, assert_clean_failure

from embrm.core import EmbrmError
from embrm.data import check_array_file, load_dataset, open_array, write_sun_layout
from embrm.embedding import embed_dataset, import_embeddings
from embrm.embedding.backends import make_embedder

P, R, D = 4, 3, 8
N = P * R
LIE = (10 ** 11, 384)  # 153.6 TB of float32 declared by a 128-byte header


# ----------------------------------------------------------------------------------------------- builders


def npy_text(text: str) -> bytes:
    """A version 1.0 .npy header holding `text` (padded as numpy pads it), without data."""
    body = text.encode("latin1")
    body += b" " * (63 - (10 + len(body)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def npy(shape, descr="'<f4'", fortran=False, data=b"") -> bytes:
    return npy_text(f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}") + data


def npz(members: dict, method=zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return out.getvalue()


def sizes_lie(blob: bytes, size: int, compressed: bool) -> bytes:
    """The zip with its (only) member's declared sizes replaced: the uncompressed size, and the compressed one too
    when `compressed` is False (a stored member's two sizes are one)."""
    blob = bytearray(blob)
    for signature, at in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):
        i = blob.index(signature) + at
        if not compressed:
            blob[i:i + 4] = struct.pack("<I", size)
        blob[i + 4:i + 8] = struct.pack("<I", size)
    return bytes(blob)


def safetensors(header, data=b"", length=None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def tensor_entry(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


class _Storage:
    pass


class _Tensor:
    def __init__(self, size, stride):
        self.size, self.stride = size, stride

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_Storage(), 0, self.size, self.stride, False,
                                                 collections.OrderedDict())


def torch_zip(numel: int, size, stride, data: bytes = bytes(4 * N * D)) -> bytes:
    """A torch.save zip whose pickle declares a float storage of `numel` and a tensor of `size` over it."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, _Storage) else None

    pkl = io.BytesIO()
    Pickler(pkl, protocol=2).dump(_Tensor(size, stride))
    return npz({"archive/data.pkl": pkl.getvalue(), "archive/byteorder": b"little", "archive/data/0": data,
                "archive/version": b"3\n"})


def parquet(columns: dict) -> bytes:
    out = io.BytesIO()
    pl.DataFrame(columns).write_parquet(out)
    return out.getvalue()


def vectors(seed=0) -> np.ndarray:
    """(N, D) float32 rows for the pool; rows 0 and 1 are the same text, so they carry the same vector."""
    X = np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)
    X[1] = X[0]
    return X


# ----------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Hostile:
    """A hostile file `name` under files/ (its bytes), refused by `embrm import` with a line matching `match` and
    by open_array with a message matching `opener` (where its wording differs, else `match`); `options` are added
    to the import command."""

    id: str
    name: str
    blob: bytes
    match: str
    opener: str | None = None
    options: tuple = ("--order", "rows")


def _cases() -> list[Hostile]:
    good = vectors()
    f4 = good.tobytes()
    lie = npy(LIE)
    stored_ok = npz({"emb.npy": npy((N, D), data=f4)})
    deflated_ok = npz({"emb.npy": npy((N, D), data=f4)}, zipfile.ZIP_DEFLATED)
    declares = r"declares \d+ bytes but the (file|member) holds \d+"
    entry = tensor_entry([N, D], 0, 4 * N * D)
    ragged = [list(map(float, row)) for row in good]
    ragged[5] = ragged[5][:-1]
    pids = [f"q{i // R}" for i in range(N)]
    cases = [
        # .npy headers
        Hostile("npy-lie-1e11", "lie.npy", lie, r"declares 153600000000128 bytes but the file holds 128"),
        Hostile("npy-lie-1e12", "lie12.npy", npy((10 ** 12, 384)), declares),
        Hostile("npy-lie-1gb", "lie1gb.npy", npy((2 ** 28,)), declares),  # small enough to be granted: not asked
        Hostile("npy-lie-fortran", "fortran.npy", npy(LIE, fortran=True), declares),
        Hostile("npy-lie-itemsize", "itemsize.npy", npy((10 ** 6,), "[('a', '<f4', (20000, 20000))]"), declares),
        Hostile("npy-overflow", "overflow.npy", npy((2 ** 63, 2 ** 63)), declares),
        Hostile("npy-negative", "negative.npy", npy((-1, 384)), r"negative shape \(-1, 384\)"),
        Hostile("npy-object", "object.npy", npy((3,), "'|O'", data=bytes(24)), r"Python objects \(a pickle\)"),
        Hostile("npy-header-past-eof", "longhead.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", 5000) + b"{'descr'",
                r"declares a 5000-byte header \(5010 bytes\) but 18 bytes are there"),
        Hostile("npy-header-length-2e31", "hugehead.npy",  # numpy would read (allocate) 2 GB before its own check
                b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{", r"declares a 2147483648-byte header"),
        Hostile("npy-truncated-data", "cut.npy", npy((N, D), data=f4[:100]),
                r"declares 512 bytes but the file holds 228"),
        Hostile("npy-bad-version", "version.npy", b"\x93NUMPY\x09\x00" + lie[8:], r"not a readable \.npy array"),
        Hostile("npy-nested-header", "nested.npy", npy_text("{'shape': " + "(" * 400 + ")" * 400 + "}"),
                r"not a readable \.npy array"),
        Hostile("npy-not-numpy", "text.npy", b"id,vector\n1,0.5\n", r"neither a \.npy array nor an \.npz archive",
                r"not a readable \.npy array"),
        Hostile("npy-empty", "empty.npy", b"", r"neither a \.npy array", r"not a readable \.npy array"),
        # .npz members, stored and deflated
        Hostile("npz-stored-lie", "stored.npz", npz({"emb.npy": lie}), r"\(emb\.npy\) .*" + declares),
        Hostile("npz-deflated-lie", "deflated.npz", npz({"emb.npy": lie}, zipfile.ZIP_DEFLATED),
                r"\(emb\.npy\) .*" + declares),
        Hostile("npz-deflated-size-lie", "inflate.npz",
                sizes_lie(npz({"emb.npy": npy((10 ** 9,))}, zipfile.ZIP_DEFLATED), 0xFFFFFFF0, compressed=True),
                r"\(emb\.npy\) is damaged: the archive declares 4294967280 bytes uncompressed but its \d+ deflated"),
        Hostile("npz-stored-size-lie", "storedsize.npz", sizes_lie(stored_ok, 0xFFFFFFF0, compressed=False),
                r"\(emb\.npy\) is truncated or damaged: the archive declares \d+ bytes up to its end but the file "
                r"holds \d+"),
        Hostile("npz-second-member-lies", "second.npz", npz({"emb.npy": npy((N, D), data=f4), "other.npy": lie}),
                r"\(other\.npy\) .*" + declares),
        Hostile("npz-negative", "negative.npz", npz({"emb.npy": npy((-4, 8))}), r"negative shape"),
        Hostile("npz-object", "object.npz", npz({"emb.npy": npy((3,), "'|O'", data=bytes(24))}), r"Python objects"),
        Hostile("npz-bzip2", "bzip2.npz", npz({"emb.npy": npy((N, D), data=f4)}, zipfile.ZIP_BZIP2),
                r"\(emb\.npy\) is compressed with zip method 12: save the arrays with np\.savez"),
        Hostile("npz-not-a-zip", "plain.npz", b"this is no archive at all", r"neither a \.npy array nor an \.npz",
                r"not a readable \.npz archive"),
        Hostile("npz-broken-zip", "broken.npz", b"PK\x03\x04" + bytes(40), r"not a readable \.npz archive"),
        Hostile("npz-truncated", "cutzip.npz", deflated_ok[:len(deflated_ok) // 2], r"not a readable \.npz archive"),
        Hostile("npz-corrupt-data", "corrupt.npz", _flip(deflated_ok, len(deflated_ok) - 100),
                r"not a readable \.npz (file|archive) \(Error -3 while decompressing"),
        # .safetensors headers
        Hostile("st-header-length-2e63", "length.safetensors", safetensors({}, length=2 ** 63),
                r"header declares 9223372036854775808 bytes but the file holds 10"),
        Hostile("st-header-length-1e12", "length12.safetensors", safetensors({"a": entry}, length=10 ** 12),
                r"header declares 1000000000000 bytes"),
        Hostile("st-offset-past-eof", "pasteof.safetensors",
                safetensors({"emb": tensor_entry([250_000_000_000], 0, 10 ** 12)}, bytes(16)), declares),
        Hostile("st-shape-lie", "shape.safetensors", safetensors({"emb": tensor_entry(list(LIE), 0, 96)}, bytes(96)),
                r"tensor 'emb' has 96 bytes for shape \(100000000000, 384\)"),
        Hostile("st-overlap", "overlap.safetensors",
                safetensors({"a": tensor_entry([24], 0, 96), "b": tensor_entry([24], 48, 144)}, bytes(144)),
                r"tensors 'a' and 'b' overlap"),
        Hostile("st-negative-shape", "negative.safetensors",
                safetensors({"emb": tensor_entry([-1, 8], 0, 32)}, bytes(32)), r"tensor 'emb' has a damaged header"),
        Hostile("st-reversed-offsets", "reversed.safetensors",
                safetensors({"emb": tensor_entry([0], 96, 0)}, bytes(96)), r"tensor 'emb' has a damaged header"),
        Hostile("st-float-offsets", "floats.safetensors",
                safetensors({"emb": tensor_entry([24], 0.0, 96.0)}, bytes(96)), r"tensor 'emb' has a damaged header"),
        Hostile("st-unknown-dtype", "dtype.safetensors",
                safetensors({"emb": tensor_entry([24], 0, 96, "F128")}, bytes(96)), r"unknown dtype 'F128'"),
        Hostile("st-dtype-not-a-name", "dtypelist.safetensors",
                safetensors({"emb": tensor_entry([24], 0, 96, ["F32"])}, bytes(96)), r"dtype \['F32'\] is not a name"),
        Hostile("st-not-json", "json.safetensors", safetensors(b"{not json"), r"damaged \.safetensors header"),
        Hostile("st-not-object", "list.safetensors", safetensors([1, 2]), r"not a JSON object"),
        Hostile("st-nested-json", "nested.safetensors", safetensors(b"[" * 100_000), r"damaged \.safetensors header"),
        Hostile("st-short", "short.safetensors", b"\x01\x02", r"declares no length but the file holds 2"),
        # torch zips: torch compares each storage's record with its declared size before reading
        Hostile("pt-storage-lie", "storage.pt", torch_zip(LIE[0] * LIE[1], LIE, (384, 1)),
                r"not a readable torch\.save file \(record size \(384 bytes\) does not match",
                r"cannot be loaded as tensors only"),
        Hostile("pt-shape-lie", "shape.pt", torch_zip(N * D, LIE, (384, 1)), r"not a readable torch\.save file",
                r"cannot be loaded as tensors only"),
        Hostile("pt-not-torch", "junk.pt", b"\x80\x02junk" * 8, r"not a readable torch\.save file",
                r"cannot be loaded as tensors only"),
        # parquet list columns
        Hostile("pq-ragged", "ragged.parquet", parquet({"prompt_id": pids, "embedding": ragged}),
                r"row 5 of column 'embedding' has 7 values where row 0 has 8", r"different or zero lengths"),
        Hostile("pq-null-vector", "null.parquet",
                parquet({"prompt_id": pids, "embedding": [None] + ragged[1:5] + ragged[6:] + [ragged[0]]}),
                r"row 0 of column 'embedding' has no vector", r"empty cells"),
        Hostile("pq-strings", "strings.parquet", parquet({"prompt_id": pids, "embedding": [["a"]] * N}),
                r"column 'embedding' holds String values", r"lists of numbers"),
        Hostile("pq-null-id", "nullid.parquet", parquet({"rid": [None] + [f"q{i // R}:{i % R}" for i in range(1, N)],
                                                         "embedding": [list(map(float, row)) for row in good]}),
                r"row 0 of id column 'rid' has no id", options=("--order", "rid")),
        Hostile("pq-not-parquet", "junk.parquet", b"PAR1 but not really", r"not a readable \.parquet file",
                r"not a readable parquet file"),
        # one text, two vectors (rows 0 and 1 are the same text): 2% off in one value, under the old 1% L2 bound
        Hostile("duplicate-text-conflict", "conflict.npy", _conflicting(good),
                r"row 0 and row 1 are the same text \(prompt and response\) with different vectors"),
    ]
    return cases


def _flip(blob: bytes, at: int) -> bytes:
    """The bytes with one of them inverted (here: inside a deflated member's data, which then fails to inflate)."""
    return blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1:]


def _conflicting(good: np.ndarray) -> bytes:
    X = good.copy()
    X[1, 0] = X[0, 0] * 1.02
    out = io.BytesIO()
    np.save(out, X)
    return out.getvalue()


CASES = _cases()
IMPORT_ONLY = {"duplicate-text-conflict", "pq-null-id"}  # faults of the import's alignment, not of the file
HEADERS = [c for c in CASES if c.id not in IMPORT_ONLY]  # what open_array refuses too
# what check_array_file refuses from the headers alone
CHECKED = [c for c in HEADERS if c.name.endswith((".npy", ".npz", ".safetensors"))]


def _order_cases(ids: list[str]) -> dict:
    """id -> (file name, bytes or None for a directory, match) of bad --order id files."""
    text = "\n".join(ids).encode()
    lines = ids[:4] + [""] + ids[4:]
    return {
        "order-latin1": ("latin1.txt", text.replace(ids[2].encode(), ids[2].encode() + b"\xe9"),
                         r"latin1\.txt line 3: not UTF-8 text \(invalid continuation byte"),
        "order-utf16": ("utf16.txt", "\n".join(ids).encode("utf-16"), r"utf16\.txt line 1: not UTF-8 text"),
        "order-blank-line": ("blank.txt", "\n".join(lines).encode(), r"blank\.txt line 5: blank line among the ids"),
        "order-duplicate": ("dup.txt", "\n".join([ids[1]] + ids[1:]).encode(),
                            r"dup\.txt: id 'q0:1' appears at rows 0 and 1"),
        "order-unknown": ("unknown.txt", "\n".join(ids[:-1] + ["q9:99"]).encode(),
                          r"unknown\.txt: row 11: id 'q9:99' is not a response"),
        "order-short": ("short.txt", "\n".join(ids[:-1]).encode(), r"short\.txt: 11 ids for the 12 rows"),
        "order-directory": ("adir", None, r"--order \S*adir: is a directory"),
        "order-missing": ("absent.txt", "missing", r"--order '\S*absent\.txt': neither 'rows', an existing id file"),
        "order-empty": ("", "missing", r"--order is empty: pass --order rows or a text file"),
    }


# ----------------------------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(root, Dataset): a 4 x 3 pool whose q0 has one answer twice, every hostile file under files/ and ids/, and
    cache/ holding a valid import of vectors() (what a refused import must leave as it was)."""
    root = tmp_path_factory.mktemp("hostile")
    rows = [{"prompt_id": f"q{p}", "prompt": f"Question {p}?", "response": f"Answer {max(r, 1) if p == 0 else r}.",
             "gold": float(p + r)} for p in range(P) for r in range(R)]
    pl.DataFrame(rows).write_parquet(root / "pool.parquet")
    ds = load_dataset(root / "pool.parquet")
    (root / "files").mkdir()
    for case in CASES:
        (root / "files" / case.name).write_bytes(case.blob)
    (root / "ids").mkdir()
    for name, blob, _ in _order_cases(ds.responses["response_id"].to_list()).values():
        if blob is None:
            (root / "ids" / name).mkdir()
        elif blob != "missing":
            (root / "ids" / name).write_bytes(blob)
    np.save(root / "good.npy", vectors())
    import_embeddings(ds, root / "good.npy", model="m", layer=None, pooling=None, order="rows",
                      cache_dir=root / "cache")
    return root, ds


def import_args(file: str, *options) -> tuple:
    return ("import", "{root}/pool.parquet", file, "--model", "m", "--cache-dir", "{root}/cache", *options)


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_import_refuses_a_hostile_file_in_one_line(hostile, case):
    root, _ = hostile
    bad = Bad(case.id, import_args(f"{{root}}/files/{case.name}", *case.options),
              re.escape(case.name) + r"\b.*" + case.match, watch=("cache",))
    assert_clean_failure(bad, root)


def test_import_allocates_nothing_a_header_declares(hostile):
    """Every hostile file through the importer's reader under tracemalloc (once, for speed: the CLI cases above
    show the messages): refused with a one-line EmbrmError, numpy's and Python's peak small."""
    root, ds = hostile
    for case in CASES:
        with traced() as peak, pytest.raises(EmbrmError) as e:
            import_embeddings(ds, root / "files" / case.name, model="m", layer=None, pooling=None,
                              order=case.options[1], cache_dir=root / "cache")
        assert "\n" not in str(e.value) and peak() < 32 * 2 ** 20, (case.id, str(e.value), peak())


@contextlib.contextmanager
def traced():
    """Yields a function giving the peak of numpy's and Python's allocations (tracemalloc) inside the block: a
    lying size that numpy was granted shows there (one it was refused raises MemoryError)."""
    tracemalloc.start()
    peaks = []
    try:
        yield lambda: peaks[0]
    finally:
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


@pytest.mark.parametrize("case", HEADERS, ids=[c.id for c in HEADERS])
def test_the_opener_refuses_a_hostile_header_without_allocating(hostile, case):
    root, _ = hostile
    match = re.escape(case.name) + r"\b.*" + (case.opener or case.match)
    with traced() as peak, pytest.raises(EmbrmError, match=match) as e:
        open_array(root / "files" / case.name)
    assert "\n" not in str(e.value) and peak() < 32 * 2 ** 20, (str(e.value), peak())


@pytest.mark.parametrize("case", CHECKED, ids=[c.id for c in CHECKED])
def test_the_shared_check_refuses_what_both_paths_refuse(hostile, case):
    root, _ = hostile
    with pytest.raises(EmbrmError, match=re.escape(case.name) + r"\b.*" + case.match):
        check_array_file(root / "files" / case.name)


@pytest.mark.parametrize("case", list(_order_cases([f"q{i}" for i in range(N)])))
def test_a_bad_order_file_is_named_with_its_line(hostile, case):
    root, ds = hostile
    name, _, match = _order_cases(ds.responses["response_id"].to_list())[case]
    given = f"{{root}}/ids/{name}" if name else " "
    bad = Bad(case, import_args("{root}/good.npy", "--order", given), match, watch=("cache",))
    assert_clean_failure(bad, root)


def test_an_id_file_with_a_bom_crlf_and_trailing_blank_lines_is_read(hostile, tmp_path):
    root, ds = hostile
    X = vectors(1)
    X[1] = X[0]
    perm = np.random.default_rng(3).permutation(N)
    np.save(tmp_path / "e.npy", X[perm])
    ids = ds.responses["response_id"].to_numpy()[perm]
    (tmp_path / "ids.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(ids).encode() + b"\r\n\r\n")
    result = import_embeddings(ds, tmp_path / "e.npy", model="m", layer=None, pooling=None,
                               order=str(tmp_path / "ids.txt"), cache_dir=tmp_path / "c")
    assert (result.n, result.n_unique, result.layout) == (N, N - 1, "ids")
    np.testing.assert_array_equal(_cached(result, ds), X)


def test_duplicate_texts_within_rounding_keep_one_vector(hostile, tmp_path):
    """The copies of one text may differ by bfloat16 or float16 rounding, each or both (and be stored in Fortran
    order); the first is kept."""
    _, ds = hostile
    X = vectors(2)
    for name, copy in (("bf16", X[0].astype(ml_dtypes.bfloat16).astype(np.float32)),
                       ("f16", X[0].astype(np.float16).astype(np.float32))):
        X[1] = copy
        np.save(tmp_path / f"{name}.npy", np.asfortranarray(X))
        result = import_embeddings(ds, tmp_path / f"{name}.npy", model=name, layer=None, pooling=None,
                                   order="rows", cache_dir=tmp_path / "c")
        assert (result.n, result.n_unique) == (N, N - 1)
        np.testing.assert_array_equal(_cached(result, ds)[1], X[0])


def _cached(result, ds) -> np.ndarray:
    """The vectors `fit --backend imported` reads for the dataset."""
    return embed_dataset(ds, make_embedder("imported", result.cache_dir), cache_dir=Path(result.cache_dir).parent,
                         progress=False).X


# ----------------------------------------------------------------------------------------------- --backend imported


@pytest.fixture(scope="module")
def sun_declaration(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-sun")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBRM_STATE_DIR", str(root / "state"))
        layout = write_sun_layout(root / "sun", train_prompts=8, train_responses=4, test_prompts=4,
                                  test_responses=4, dim=8, seed=1, progress=False)
    return layout.declaration, root / "state"


@pytest.mark.parametrize("dataset", ["pool.toml", "sun"])
def test_backend_imported_refuses_a_cache_of_another_backend(renamed_pool, sun_declaration, tmp_path, dataset):
    """A sentence-transformers cache made by `embrm embed` is no import, on a text pool and on an array dataset
    (whose own vectors never ask the embedder for any)."""
    (st_cache,) = [d for d in (renamed_pool / "cache").iterdir() if d.is_dir()]
    source = renamed_pool / "pool.toml" if dataset == "pool.toml" else sun_declaration[0]
    bad = Bad(f"imported-{dataset}", ("fit", str(source), "--backend", "imported", "--model", str(st_cache),
                                      "--cache-dir", str(renamed_pool / "cache"), "--out", "{root}/m"),
              re.escape(str(st_cache)) + r": holds vectors of backend 'st', not an `embrm import`: use --backend st "
                                         r"--model \S+all-MiniLM",
              watch=(str(renamed_pool / "cache"),), env={"EMBRM_STATE_DIR": str(sun_declaration[1])})
    assert_clean_failure(bad, tmp_path)
    assert not (tmp_path / "m").exists()


def test_the_hostile_cases_are_many_and_distinct():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len({c.name for c in CASES}) == len(CASES)
    assert len(CHECKED) >= 30
