"""Array datasets (embeddings + gold arrays, no texts) declared in a TOML: the responses table names each row by its
position, the vectors are a Rows over the files (left on disk), `prompts = N` keeps N prompts of each split, every
array format loads, and every fault in a declaration is one line naming the declaration or the file."""

import os
import textwrap

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import save_file as save_safetensors

from embrm.core import EmbrmError, Rows
from embrm.data._registry import load_dataset, read_declaration

P_TRAIN, R_TRAIN, P_TEST, R_TEST, D = 5, 3, 4, 6, 4
SPLITS = """[dataset]
name = "arr"
[dataset.train]
embeddings = "{train_e}"
gold = "{train_g}"
[dataset.test]
embeddings = "{test_e}"
gold = "{test_g}"
"""


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    """Remembered file facts go to a temporary state dir, never ~/.cache."""
    monkeypatch.setenv("EMBRM_STATE_DIR", str(tmp_path / "state"))


def arrays(seed=0):
    """{split: (embeddings (P, R, d) float32, gold (P, R, 1) float32)}."""
    rng = np.random.default_rng(seed)
    return {split: (rng.standard_normal((p, r, D)).astype(np.float32), rng.standard_normal((p, r, 1)).astype(np.float32))
            for split, p, r in (("train", P_TRAIN, R_TRAIN), ("test", P_TEST, R_TEST))}


def write(root, data, *, suffix=".npy", emb_dtype=np.float32, text=SPLITS):
    """The arrays as files (each its own) and the declaration `arr.toml`; returns its path."""
    names = {}
    for split, (E, G) in data.items():
        for kind, a in (("e", E.astype(emb_dtype)), ("g", G)):
            name = f"{split}_{kind}{suffix}"
            if suffix == ".npy":
                np.save(root / name, a)
            elif suffix == ".npz":
                np.savez(root / name, a=a)
            else:
                save_safetensors({"t": np.ascontiguousarray(a)}, root / name)
            names[f"{split}_{kind}"] = name
    (root / "arr.toml").write_text(text.format(**names))
    return root / "arr.toml"


@pytest.fixture
def split_ds(tmp_path):
    data = arrays()
    return load_dataset(write(tmp_path, data)), data


def refused(path, where: str) -> str:
    """The message of loading `path`: one line, naming `where`."""
    with pytest.raises(EmbrmError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert where in msg and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- what loads


def test_train_and_test_load_as_positions_with_gold_in_order(split_ds):
    ds, data = split_ds
    r = ds.responses
    assert ds.name == "arr" and len(r) == P_TRAIN * R_TRAIN + P_TEST * R_TEST
    assert ds.predefined_split and not ds.texts and ds.has_gold and not ds.excluded.any()
    assert r.group_by("split").len().sort("split").rows() == [("test", P_TEST * R_TEST), ("train", P_TRAIN * R_TRAIN)]
    train, test = r.filter(pl.col("split") == "train"), r.filter(pl.col("split") == "test")
    assert train["prompt_id"].unique(maintain_order=True).to_list() == [f"train-{i:06d}" for i in range(P_TRAIN)]
    assert test["prompt_id"].unique(maintain_order=True).to_list() == [f"test-{i:06d}" for i in range(P_TEST)]
    assert train["response_id"][:4].to_list() == ["train-000000:0", "train-000000:1", "train-000000:2",
                                                   "train-000001:0"]
    assert r["response_id"].n_unique() == len(r) and r["scored"].all()
    for split, part in (("train", train), ("test", test)):
        E, G = data[split]
        P, R = G.shape[:2]
        assert part["prompt_index"].to_list() == np.repeat(np.arange(P), R).tolist()
        assert part["response_index"].to_list() == np.tile(np.arange(R), P).tolist()
        np.testing.assert_array_equal(part["gold"].to_numpy(), G.reshape(-1).astype(np.float64))
    assert r["split"].to_list()[:P_TRAIN * R_TRAIN] == ["train"] * (P_TRAIN * R_TRAIN)  # train rows first


def test_the_vectors_are_rows_over_the_files(split_ds):
    ds, data = split_ds
    X = ds.vectors
    assert isinstance(X, Rows) and X.checked and X.shape == (len(ds.responses), D)
    want = np.concatenate([data[s][0].reshape(-1, D) for s in ("train", "test")])
    np.testing.assert_array_equal(X[0:len(X)], want)
    assert all(p.file is not None for p in X._parts)  # memory-mapped .npy: plain reads
    rows = ds.responses.with_row_index("row").filter((pl.col("prompt_id") == "test-000002")
                                                     & (pl.col("response_index") == 5))["row"].item()
    np.testing.assert_array_equal(X[rows], data["test"][0][2, 5])


def test_a_single_split_has_no_split_column(tmp_path):
    E, G = arrays()["test"]
    np.save(tmp_path / "e.npy", E)
    np.save(tmp_path / "g.npy", G[..., 0])  # (P, R) gold
    (tmp_path / "one.toml").write_text('[dataset]\nembeddings = "e.npy"\ngold = "g.npy"\n')
    ds = load_dataset(tmp_path / "one.toml")
    assert not ds.predefined_split and "split" not in ds.responses.columns
    assert ds.name == "e" and len(ds.responses) == P_TEST * R_TEST  # the embeddings file's stem
    assert ds.responses["prompt_id"].unique().sort().to_list() == [f"{i:06d}" for i in range(P_TEST)]
    np.testing.assert_array_equal(ds.responses["gold"].to_numpy(), G.reshape(-1))
    np.testing.assert_array_equal(np.asarray(ds.vectors), E.reshape(-1, D))


def test_prompts_keeps_the_first_n_of_each_split(tmp_path):
    data = arrays()
    path = write(tmp_path, data, text=SPLITS.replace('name = "arr"', 'name = "arr"\nprompts = 2'))
    ds = load_dataset(path)
    assert ds.responses["prompt_id"].unique().sort().to_list() == ["test-000000", "test-000001", "train-000000",
                                                                   "train-000001"]
    assert len(ds.responses) == 2 * R_TRAIN + 2 * R_TEST and ds.predefined_split
    X = ds.vectors
    assert isinstance(X, Rows) and len(X) == len(ds.responses)
    want = np.concatenate([data["train"][0][:2].reshape(-1, D), data["test"][0][:2].reshape(-1, D)])
    np.testing.assert_array_equal(np.asarray(X), want)
    np.testing.assert_array_equal(ds.responses["gold"].to_numpy(),
                                  np.concatenate([data["train"][1][:2].ravel(), data["test"][1][:2].ravel()]))
    too_many = write(tmp_path, data, text=SPLITS.replace('name = "arr"', f'name = "arr"\nprompts = {P_TEST + 1}'))
    assert "ask for at most" in refused(too_many, "prompts")


@pytest.mark.parametrize("suffix,dtype", [(".npz", np.float32), (".safetensors", np.float16), (".npy", np.float16),
                                          (".safetensors", np.float32)])
def test_other_formats_and_float16_load(tmp_path, suffix, dtype):
    data = arrays(1)
    ds = load_dataset(write(tmp_path, data, suffix=suffix, emb_dtype=dtype))
    assert ds.vectors.storage_dtypes == [np.dtype(dtype).name] * 2
    want = np.concatenate([data[s][0].astype(dtype).astype(np.float32).reshape(-1, D) for s in ("train", "test")])
    np.testing.assert_array_equal(np.asarray(ds.vectors), want)
    np.testing.assert_array_equal(ds.responses["gold"].to_numpy(),
                                  np.concatenate([data[s][1].ravel() for s in ("train", "test")]))


def test_keys_pick_arrays_of_one_file(tmp_path):
    data = arrays(2)
    for split, (E, G) in data.items():
        np.savez(tmp_path / f"{split}.npz", emb=E, g=G)
    text = "[dataset]\n" + "".join(f'[dataset.{s}]\nembeddings = "{s}.npz"\ngold = "{s}.npz"\n'
                                   f'embeddings_key = "emb"\ngold_key = "g"\n' for s in ("train", "test"))
    (tmp_path / "keys.toml").write_text(text)
    ds = load_dataset(tmp_path / "keys.toml")
    np.testing.assert_array_equal(ds.vectors[0:P_TRAIN * R_TRAIN], data["train"][0].reshape(-1, D))
    assert ds.name == "train"  # no name: the first embeddings file's stem


# ----------------------------------------------------------------------------- what is refused


def declaration(tmp_path, text: str):
    data = arrays()
    for split, (E, G) in data.items():
        np.save(tmp_path / f"{split}_e.npy", E)
        np.save(tmp_path / f"{split}_g.npy", G)
    np.save(tmp_path / "short_g.npy", data["train"][1][:-1])
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(text))
    return path


TRAIN = '[dataset.train]\nembeddings = "train_e.npy"\ngold = "train_g.npy"\n'
TEST = '[dataset.test]\nembeddings = "test_e.npy"\ngold = "test_g.npy"\n'


@pytest.mark.parametrize("text,says", [
    ("[dataset]\n" + TRAIN, "has a train table but no test table"),
    ('[dataset]\nembeddings = "train_e.npy"\ngold = "train_g.npy"\n' + TRAIN + TEST, "not both"),
    ('[dataset]\n[dataset.train]\nembeddings = "train_e.npy"\n' + TEST, "[dataset].train: needs gold"),
    ("[dataset]\n" + TRAIN.replace("[dataset.train]\n", "[dataset.train]\nmodel = \"x\"\n") + TEST,
     "[dataset].train: unknown key 'model'"),
    ('[dataset]\nembeddings = "train_e.npy"\n', "[dataset]: needs gold"),
    ('[dataset]\nembeddings = "train_e.npy"\ngold = "train_g.npy"\ncolor = 1\n', "unknown key 'color'"),
    ('[dataset]\nembeddings = "train_e.npy"\ngold = "train_g.npy"\nprompts = 0\n', "prompts must be a positive"),
], ids=["train-only", "both", "missing-gold", "unknown-split-key", "single-no-gold", "unknown-key", "prompts-0"])
def test_bad_declarations_are_one_line_naming_the_declaration(tmp_path, text, says):
    path = declaration(tmp_path, text)
    msg = refused(path, str(path))
    assert says in msg, msg


def test_a_missing_file_is_named(tmp_path):
    path = declaration(tmp_path, "[dataset]\n" + TRAIN.replace("train_g.npy", "nowhere.npy") + TEST)
    msg = refused(path, str(tmp_path / "nowhere.npy"))
    assert str(path) in msg and "is not a file" in msg and "gold" in msg


def test_a_gold_of_another_shape_is_named(tmp_path):
    path = declaration(tmp_path, "[dataset]\n" + TRAIN.replace("train_g.npy", "short_g.npy") + TEST)
    msg = refused(path, "short_g.npy")
    assert "train_e.npy" in msg and "[dataset.train]" in msg and "same prompts and responses" in msg


def test_a_path_table_stays_a_file_dataset(tmp_path):
    path = declaration(tmp_path, '[dataset]\npath = "pool.parquet"\ngold = "train_g.npy"\n')
    msg = refused(path, str(path))
    assert "unknown key 'gold'" in msg and "path" in msg


def test_a_declaration_validates_before_loading(tmp_path):
    path = declaration(tmp_path, "[dataset]\n" + TRAIN + TEST)
    spec = read_declaration(path)
    assert [a.split for a in spec.arrays] == ["train", "test"]
    assert spec.arrays[0].embeddings == str(tmp_path / "train_e.npy") and spec.label == "train_e"


# ----------------------------------------------------------------------------- fingerprint and views


def test_the_fingerprint_is_stable_and_follows_the_contents(tmp_path):
    data = arrays()
    path = write(tmp_path, data)
    first = load_dataset(path).vectors.digest
    assert first and load_dataset(path).vectors.digest == first
    target = tmp_path / "test_e.npy"
    stat = target.stat()
    changed = data["test"][0].copy()
    changed[1, 2, 3] += 1.0
    np.save(target, changed)  # same size, other bytes
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_dataset(path).vectors.digest
    assert second != first and load_dataset(path).vectors.digest == second
    np.save(target, data["test"][0])
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    assert load_dataset(path).vectors.digest == first  # a digest of the contents, not of the file's dates


def test_filter_keeps_the_rows_aligned(split_ds):
    ds, data = split_ds
    sub = ds.filter((pl.col("response_index") % 2 == 1) & (pl.col("prompt_index") != 1))
    assert isinstance(sub.vectors, Rows) and len(sub.vectors) == len(sub.responses) > 0
    assert sub.vectors.digest != ds.vectors.digest
    r = sub.responses
    want = np.stack([data[s][0][p, i] for s, p, i in zip(r["split"], r["prompt_index"], r["response_index"])])
    np.testing.assert_array_equal(np.asarray(sub.vectors), want)
    np.testing.assert_array_equal(sub.vectors[[3, 0]], want[[3, 0]])
