"""embrm.core.Rows: several (n_i, d) arrays of any float dtype, memory-mapped, seen as one (n, d) float32 matrix.
Every read (slices, gathers, masks, subsets, blocks, np.asarray) equals np.concatenate of the parts in float32,
whether a contiguous block is read with plain reads (a part marked with `mapped`) or through the memory map."""

import ml_dtypes
import numpy as np
import pytest

import embrm.core._rows as rows_module
from embrm.core import EmbrmError, Rows, map_rows, mapped, row_blocks, take_rows

D = 5
N16, N32 = 7, 9  # rows of the float16 part, then of the float32 part
N = N16 + N32


def _write(path, values: np.ndarray) -> None:
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=values.dtype, shape=values.shape)
    mm[:] = values
    mm.flush()
    del mm


def _open(path, marked: bool) -> np.ndarray:
    mm = np.lib.format.open_memmap(path, mode="r")
    return mapped(mm, mm.offset) if marked else mm


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two .npy files: (7, 5) float16 and (9, 5) float32, and their float32 concatenation (the truth)."""
    root = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N16, D)).astype(np.float16)
    b = rng.standard_normal((N32, D)).astype(np.float32)
    _write(root / "a.npy", a)
    _write(root / "b.npy", b)
    return root, np.concatenate([a.astype(np.float32), b])


def rows_of(files, marked: bool = True, **kwargs) -> Rows:
    root, _ = files
    return Rows([_open(root / "a.npy", marked), _open(root / "b.npy", marked)], **kwargs)


@pytest.fixture(params=[True, False], ids=["plain-reads", "memmap"])
def view(request, files):
    """(Rows over the two files, truth): with the parts marked (plain reads of contiguous blocks) and not."""
    return rows_of(files, request.param), files[1]


def test_marked_parts_read_plainly_and_unmarked_through_the_map(files, monkeypatch):
    marked, unmarked = rows_of(files, True), rows_of(files, False)
    root, truth = files
    assert [str(p.file[0]) for p in marked._parts] == [str(root / "a.npy"), str(root / "b.npy")]
    assert all(p.file[1] > 0 for p in marked._parts)  # past the .npy header
    assert all(p.file is None for p in unmarked._parts)
    calls = []
    real = np.fromfile

    def spy(*args, **kwargs):
        calls.append(kwargs.get("count"))
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "fromfile", spy)
    np.testing.assert_array_equal(unmarked[2:12], truth[2:12])
    assert calls == []
    np.testing.assert_array_equal(marked[2:12], truth[2:12])  # spans both parts: one plain read each
    assert calls == [(N16 - 2) * D, (12 - N16) * D]
    got_plain, got_map = marked[0:N], unmarked[0:N]
    assert got_plain.dtype == got_map.dtype == np.float32
    np.testing.assert_array_equal(got_plain, got_map)


def test_shape_dtype_and_repr(files):
    r = rows_of(files)
    assert r.shape == (N, D) and len(r) == N and r.ndim == 2 and r.dtype == np.float32
    assert r.storage_dtypes == ["float16", "float32"] and r.nbytes == N * D * 4
    assert "float16/float32" in repr(r) and f"{N:,} x {D}" in repr(r)


@pytest.mark.parametrize("key", [slice(0, N), slice(2, 5), slice(N16 - 2, N16 + 3), slice(N16, N), slice(3, 3),
                                 slice(None, None, 3), slice(N - 1, 2, -2), slice(-4, None), slice(10, 100)],
                         ids=repr)
def test_slices_equal_the_concatenation(view, key):
    r, truth = view
    got = r[key]
    assert got.dtype == np.float32 and got.shape == truth[key].shape
    np.testing.assert_array_equal(got, truth[key])


@pytest.mark.parametrize("key", [[3, 14, 0, 8], [N - 1, N - 1, 2, 2, N16], [N16], np.array([], np.int64),
                                 np.arange(N)[::-1]], ids=lambda k: str(list(k)))
def test_index_arrays_unsorted_and_repeated(view, key):
    r, truth = view
    got = r[np.asarray(key, np.int64)]
    assert got.dtype == np.float32 and got.shape == (len(key), D)
    np.testing.assert_array_equal(got, truth[np.asarray(key, np.int64)])


def test_a_scalar_index_is_one_row(view):
    r, truth = view
    np.testing.assert_array_equal(r[N16], truth[N16])
    np.testing.assert_array_equal(r[np.int64(3)], truth[3])


def test_negative_and_out_of_range_indices_behave_as_numpy(files):
    r, truth = rows_of(files), files[1]
    np.testing.assert_array_equal(r[np.array([-1, 0])], truth[[-1, 0]])
    np.testing.assert_array_equal(r[-1], truth[-1])
    with pytest.raises(IndexError):
        r[np.array([N])]


def test_boolean_masks(view):
    r, truth = view
    mask = np.random.default_rng(1).random(N) < 0.5
    mask[[0, N - 1]] = [True, False]
    np.testing.assert_array_equal(r[mask], truth[mask])
    np.testing.assert_array_equal(r[np.zeros(N, bool)], truth[:0])


def test_subset_of_a_subset(view):
    r, truth = view
    first = np.array([15, 2, 9, 9, 4, 7, 0, 11])
    s = r.subset(first)
    assert s.shape == (8, D) and len(s) == 8
    np.testing.assert_array_equal(s[0:8], truth[first])
    mask = np.array([True, False, True, True, False, True, False, True])
    t = s.subset(mask)
    want = truth[first][mask]
    assert t.shape == want.shape
    np.testing.assert_array_equal(t[0:len(t)], want)
    np.testing.assert_array_equal(t[[4, 0, 0]], want[[4, 0, 0]])
    np.testing.assert_array_equal(t[1:3], want[1:3])
    np.testing.assert_array_equal(np.asarray(t), want)


def test_a_subset_of_consecutive_rows_reads_a_block(files):
    """One split of two (a run of consecutive rows) is read as one contiguous block, and equals the gather."""
    r, truth = rows_of(files), files[1]
    s = r.subset(np.arange(4, 13))
    np.testing.assert_array_equal(s[0:9], truth[4:13])
    np.testing.assert_array_equal(s[2:6], truth[6:10])


def test_subset_digests_follow_the_rows(files):
    r = rows_of(files, digest="abc", checked=True)
    s, s2, other = r.subset([1, 2, 3]), r.subset([1, 2, 3]), r.subset([1, 2, 4])
    assert s.digest.startswith("abc/") and s.digest == s2.digest != other.digest and s.checked
    assert rows_of(files).subset([1]).digest is None


@pytest.mark.parametrize("per_block", [None, 1, 4, N16, N + 3])
def test_blocks_concatenate_to_the_matrix(view, per_block):
    r, truth = view
    blocks = list(r.blocks(per_block))
    if per_block:
        assert [len(b) for b in blocks[:-1]] == [per_block] * (len(blocks) - 1)
        assert len(blocks) == -(-N // per_block)
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), truth)
    s = r.subset(np.arange(N)[::-1])
    np.testing.assert_array_equal(np.concatenate(list(s.blocks(per_block))), truth[::-1])


def test_asarray_is_the_whole_matrix(view):
    r, truth = view
    X = np.asarray(r)
    assert X.dtype == np.float32 and X.shape == (N, D)
    np.testing.assert_array_equal(X, truth)
    np.testing.assert_array_equal(np.asarray(r, dtype=np.float64), truth.astype(np.float64))
    assert np.asarray(r, dtype=np.float64).dtype == np.float64


def test_asarray_is_refused_beyond_half_the_memory(files, monkeypatch):
    r = rows_of(files)
    monkeypatch.setattr(rows_module, "_memory_bytes", lambda: 2 * r.nbytes - 2)
    with pytest.raises(EmbrmError) as info:
        np.asarray(r)
    assert "memory" in str(info.value) and "\n" not in str(info.value)
    np.testing.assert_array_equal(r[0:N], files[1])  # streaming reads still work
    monkeypatch.setattr(rows_module, "_memory_bytes", lambda: 2 * r.nbytes)
    np.testing.assert_array_equal(np.asarray(r), files[1])  # exactly half fits


def test_parts_of_different_widths_are_refused():
    with pytest.raises(EmbrmError, match=r"different widths \[3, 4\]"):
        Rows([np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)])


def test_bfloat16_parts_in_memory_and_mapped(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, D)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((5, D)).astype(np.float64)
    path = tmp_path / "c.bin"
    a.tofile(path)
    mm = mapped(np.memmap(path, dtype=ml_dtypes.bfloat16, mode="r", shape=a.shape), 0)
    truth = np.concatenate([a.astype(np.float32), b.astype(np.float32)])
    for r in (Rows([a, b]), Rows([mm, b])):
        assert r.storage_dtypes == ["bfloat16", "float64"]
        np.testing.assert_array_equal(r[0:11], truth)
        np.testing.assert_array_equal(r[3:9], truth[3:9])
        np.testing.assert_array_equal(r[[10, 0, 5, 5]], truth[[10, 0, 5, 5]])
        np.testing.assert_array_equal(np.asarray(r), truth)
    name, offset = Rows([mm, b])._parts[0].file
    assert str(name) == str(path) and offset == 0


# ----------------------------------------------------------------------------- the helpers: ndarray and Rows alike


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_take_rows_on_an_ndarray_and_on_rows(files, dtype):
    r, truth = rows_of(files), files[1]
    plain = truth.astype(dtype)
    idx = np.array([14, 3, 3, 0, N16])
    got = take_rows(plain, idx)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, plain.astype(np.float32)[idx])
    on_rows = take_rows(r, idx)
    assert on_rows.dtype == np.float32
    np.testing.assert_array_equal(on_rows, truth[idx])
    np.testing.assert_array_equal(on_rows, take_rows(truth, idx))


def test_row_blocks_on_an_ndarray_and_on_rows(files):
    r, truth = rows_of(files), files[1]
    for X in (truth, truth.astype(np.float64), r):
        blocks = list(row_blocks(X, 4))
        assert [len(b) for b in blocks] == [4, 4, 4, 4] and all(b.dtype == np.float32 for b in blocks)
        np.testing.assert_array_equal(np.concatenate(blocks), truth)
    assert np.shares_memory(next(row_blocks(truth, 4)), truth)  # float32 in memory: views, no copy


def test_map_rows_on_an_ndarray_is_one_call_and_on_rows_agrees(files):
    r, truth = rows_of(files), files[1]
    w = np.arange(1, D + 1, dtype=np.float32)
    seen = []

    def fn(B):
        seen.append(B)
        return B @ w

    plain = map_rows(fn, truth)
    assert len(seen) == 1 and seen[0] is truth
    on_rows = map_rows(fn, r)
    assert len(seen) == 2 and seen[1].shape == (N, D)  # one block: fits BLOCK_BYTES
    np.testing.assert_allclose(on_rows, plain, rtol=1e-6)
    np.testing.assert_allclose(plain, truth @ w, rtol=1e-6)


def test_map_rows_streams_several_blocks_in_order(files, monkeypatch):
    r, truth = rows_of(files), files[1]
    monkeypatch.setattr(rows_module, "BLOCK_BYTES", 3 * 4 * D)  # three rows a block
    sizes = []

    def fn(B):
        sizes.append(len(B))
        return np.column_stack([B.sum(axis=1), B[:, 0]])

    got = map_rows(fn, r, progress=False)
    assert sizes == [3, 3, 3, 3, 3, 1]
    sizes.clear()
    np.testing.assert_array_equal(got[:, 1], truth[:, 0])  # in order
    np.testing.assert_allclose(got[:, 0], truth.sum(axis=1), rtol=1e-6)
    reversed_view = r.subset(np.arange(N)[::-1])
    np.testing.assert_array_equal(map_rows(fn, reversed_view)[:, 1], truth[::-1, 0])
    assert [len(b) for b in r.blocks()] == sizes == [3, 3, 3, 3, 3, 1]  # blocks() follows BLOCK_BYTES too
