import json
import tomllib

import numpy as np
import pytest

from embrm.core import EmbrmError
from embrm.data._sun_layout import planted_gold, write_sun_layout

TINY = dict(train_prompts=6, train_responses=4, test_prompts=5, test_responses=7, dim=8, seed=3, progress=False)
NAMES = {"train_embeddings": "embd_Gemma2b-sft_Gemma2b_Harmless_train.npy",
         "train_gold": "reward_Gemma2b-sft_Gemma2b_Harmless_train.npy",
         "test_embeddings": "embd_Gemma2b-sft_Gemma2b_Harmless_test.npy",
         "test_gold": "reward_Gemma2b-sft_Gemma2b_Harmless_test.npy"}


def arrays(layout):
    return {key: np.load(getattr(layout, key)) for key in NAMES}


def stamps(directory):
    """Each file's (inode, mtime): a rewrite (a .part renamed over it) changes the inode even within a clock tick."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_sun_names_shapes_dtypes_and_no_part_files(tmp_path):
    layout = write_sun_layout(tmp_path, **TINY)
    assert {key: getattr(layout, key).name for key in NAMES} == NAMES
    a = arrays(layout)
    assert a["train_embeddings"].shape == (6, 4, 8) and a["train_gold"].shape == (6, 4, 1)
    assert a["test_embeddings"].shape == (5, 7, 8) and a["test_gold"].shape == (5, 7, 1)
    assert all(v.dtype == np.float32 for v in a.values())
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*NAMES.values(), "layout.json",
                                                                "sun-harmless-gemma2b.toml"])
    assert layout.params["dim"] == 8 and layout.params["seed"] == 3 and "gold" in layout.params
    assert json.loads((tmp_path / "layout.json").read_text()) == layout.params


def test_gold_is_planted_gold_of_stored_rows(tmp_path):
    a = arrays(write_sun_layout(tmp_path, **TINY))
    for split in ("train", "test"):
        X, g = a[f"{split}_embeddings"], a[f"{split}_gold"]
        want = planted_gold(X.reshape(-1, 8), 8, 3).reshape(g.shape[:2])
        np.testing.assert_allclose(g[..., 0], want, rtol=1e-6, atol=1e-6)
        assert np.ptp(g) > 0.5  # not a constant
    other = planted_gold(a["test_embeddings"].reshape(-1, 8), 8, 4)
    assert not np.allclose(other, a["test_gold"].ravel(), atol=1e-3)  # the seed picks the directions


def test_splits_use_different_prompts_and_responses_differ(tmp_path):
    a = arrays(write_sun_layout(tmp_path, **{**TINY, "test_responses": 4}))
    train, test = a["train_embeddings"], a["test_embeddings"]
    assert not np.allclose(train[:5], test)
    assert len(np.unique(train.reshape(-1, 8), axis=0)) == 24


def test_gold_is_nonlinear_with_the_planted_structure(tmp_path):
    """Prompts have offsets, but none along the gold directions; a linear fit explains ~1/3 of the gold, a fit
    with squares and products all of it."""
    from embrm.data._sun_layout import _directions

    R, d = 8, 6
    layout = write_sun_layout(tmp_path, train_prompts=300, train_responses=R, test_prompts=1, test_responses=2,
                              dim=d, seed=1, progress=False)
    X = np.load(layout.train_embeddings).astype(np.float64)
    g = np.load(layout.train_gold).ravel().astype(np.float64)
    means = X.mean(axis=1)  # per prompt: offset + mean of R response parts (variance 1/(R d) per coordinate)
    assert means.var(axis=0).sum() > 1.5 / R  # the offsets are there (~0.25 in all)
    z = np.sqrt(d) * means @ _directions(d, 1)
    assert np.all(z.var(axis=0) < 1.6 / R)  # ...but not along w and v: there only the responses' 1/R

    def r2(F):
        F = np.column_stack([F, np.ones(len(F))])
        resid = g - F @ np.linalg.lstsq(F, g, rcond=None)[0]
        return 1 - resid.var() / g.var()

    flat = X.reshape(-1, d)
    quad = np.column_stack([flat] + [flat[:, i] * flat[:, j] for i in range(d) for j in range(i, d)])
    assert 0.15 < r2(flat) < 0.6
    assert r2(quad) > 0.999


def test_independent_of_chunk_bytes(tmp_path):
    small = arrays(write_sun_layout(tmp_path / "small", chunk_bytes=1, **TINY))
    big = arrays(write_sun_layout(tmp_path / "big", chunk_bytes=1 << 30, **TINY))
    mid = arrays(write_sun_layout(tmp_path / "mid", chunk_bytes=3 * 4 * 8 * 4, **TINY))  # 3 prompts, uneven end
    for key in NAMES:
        np.testing.assert_array_equal(small[key], big[key])
        np.testing.assert_array_equal(mid[key], big[key])


def test_declaration_parses_with_relative_paths(tmp_path):
    layout = write_sun_layout(tmp_path, **TINY)
    assert layout.declaration == tmp_path / "sun-harmless-gemma2b.toml"
    doc = tomllib.loads(layout.declaration.read_text())["dataset"]
    assert doc["name"] == "sun-harmless-gemma2b"
    assert doc["train"] == {"embeddings": NAMES["train_embeddings"], "gold": NAMES["train_gold"]}
    assert doc["test"] == {"embeddings": NAMES["test_embeddings"], "gold": NAMES["test_gold"]}
    for split in ("train", "test"):
        for kind in ("embeddings", "gold"):
            assert (layout.declaration.parent / doc[split][kind]).is_file()
    named = write_sun_layout(tmp_path / "n", name="My Set", task="Helpful", embedder="Gemma7b", **TINY)
    assert named.declaration.name == "My Set.toml"
    doc = tomllib.loads(named.declaration.read_text())["dataset"]
    assert doc["name"] == "My Set" and doc["test"]["gold"] == "reward_Gemma2b-sft_Gemma7b_Helpful_test.npy"


def test_rerun_reuses_and_changed_params_rewrite(tmp_path):
    first = write_sun_layout(tmp_path, **TINY)
    before, before_X = stamps(tmp_path), np.load(first.train_embeddings)
    again = write_sun_layout(tmp_path, **{**TINY, "chunk_bytes": 1, "progress": None})  # no effect on the files
    assert stamps(tmp_path) == before and again == first

    renamed = write_sun_layout(tmp_path, **{**TINY, "name": "other"})  # only a new declaration
    assert renamed.declaration.name == "other.toml" and renamed.params["name"] == "other"
    assert {name: stamps(tmp_path)[name] for name in NAMES.values()} == {name: before[name] for name in NAMES.values()}
    assert json.loads((tmp_path / "layout.json").read_text())["name"] == "other"
    after_rename = stamps(tmp_path)

    numpy_ints = write_sun_layout(tmp_path, **{**TINY, "name": "other", "dim": np.int64(8), "seed": np.uint32(3)})
    assert numpy_ints.params == renamed.params and stamps(tmp_path) == after_rename

    changed = write_sun_layout(tmp_path, **{**TINY, "seed": 4})
    after = stamps(tmp_path)
    assert all(after[name] != before[name] for name in NAMES.values())
    assert not np.allclose(np.load(changed.train_embeddings), before_X)
    assert json.loads((tmp_path / "layout.json").read_text())["seed"] == 4


def test_incomplete_files_are_rewritten(tmp_path):
    layout = write_sun_layout(tmp_path, **TINY)
    good = np.load(layout.test_embeddings)
    with open(layout.test_embeddings, "r+b") as f:  # a truncated array under the final name
        f.truncate(200)  # header intact, data cut
    write_sun_layout(tmp_path, **TINY)
    np.testing.assert_array_equal(np.load(layout.test_embeddings), good)
    layout.train_gold.unlink()
    write_sun_layout(tmp_path, **TINY)
    assert layout.train_gold.is_file()


def test_failed_write_leaves_no_part_and_no_layout(tmp_path, monkeypatch):
    import embrm.data._sun_layout as mod

    write_sun_layout(tmp_path, **TINY)

    def boom(*args):
        raise RuntimeError("killed")

    monkeypatch.setattr(mod, "_gold", boom)
    with pytest.raises(RuntimeError):
        write_sun_layout(tmp_path, **{**TINY, "seed": 9})
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "layout.json").exists()


def test_float16(tmp_path):
    layout = write_sun_layout(tmp_path, dtype="float16", **TINY)
    X = np.load(layout.train_embeddings)
    assert X.dtype == np.float16 and np.load(layout.train_gold).dtype == np.float32
    ref = arrays(write_sun_layout(tmp_path / "f32", **TINY))["train_embeddings"]
    np.testing.assert_array_equal(X, ref.astype(np.float16))
    np.testing.assert_allclose(np.load(layout.train_gold).ravel(), planted_gold(X.reshape(-1, 8), 8, 3),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(train_prompts=0), dict(test_prompts=1.5), dict(train_responses=1),
                                 dict(test_responses=True), dict(dim=1), dict(dtype="bfloat16"), dict(seed=-1),
                                 dict(chunk_bytes=0), dict(task="a/b"), dict(gen=""), dict(name="..")])
def test_bad_parameter(tmp_path, bad):
    with pytest.raises(EmbrmError) as e:
        write_sun_layout(tmp_path / "out", **{**TINY, **bad})
    assert "\n" not in str(e.value) and e.value.field == next(iter(bad))
    assert not (tmp_path / "out").exists()


def test_planted_gold_shape_check():
    with pytest.raises(EmbrmError):
        planted_gold(np.zeros((3, 5)), 8, 0)
    x = np.zeros((1, 8))
    assert planted_gold(x, 8, 0)[0] == 0
