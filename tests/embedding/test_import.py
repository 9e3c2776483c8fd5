"""`embrm import`: vectors made elsewhere (.npy, .npz, .safetensors, .parquet, torch.save) registered in the cache,
aligned with the dataset, refused with one line when they cannot be, and then used by `fit --backend imported`."""

import json
import pickle

import numpy as np
import polars as pl
import pytest
import safetensors.numpy
import torch
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core._errors import EmbrmError
from embrm.data._registry import load_dataset
from embrm.embedding._cache import EmbeddingCache, text_keys
from embrm.embedding._embed import DEFAULT_TEMPLATE, cache_spec, embed_dataset, render
from embrm.embedding._importer import import_embeddings
from embrm.embedding.backends import make_embedder

runner = CliRunner()
P, R, D = 20, 5, 8
ORIGIN = dict(model="sun2025/gemma-2b", layer="18", pooling="last")


class Opaque:  # a custom class: loading a file that holds one needs pickle
    pass


@pytest.fixture
def pool(tmp_path):
    """(pool file, Dataset, V (P, R, D) float32 with gold in coordinate 0, X (n, D) aligned with the rows)."""
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(P, R))
    rows = [{"prompt_id": f"q{p}", "prompt": f"Question {p}?", "response": f"Answer {r} to {p}.",
             "gold": float(gold[p, r])} for p in range(P) for r in range(R)]
    path = tmp_path / "pool.parquet"
    pl.DataFrame(rows).write_parquet(path)
    V = rng.normal(size=(P, R, D)).astype(np.float32)
    V[..., 0] = 3 * gold
    return path, load_dataset(path), V, V.reshape(P * R, D)


def imported(ds, path, cache, **kw):
    return import_embeddings(ds, path, cache_dir=cache, **{**ORIGIN, **kw})


def vectors_of(ds, result, cache):
    return embed_dataset(ds, make_embedder("imported", result.cache_dir), cache_dir=cache, progress=False).X


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


# ----------------------------------------------------------------------------------------------- formats


def test_npy_in_row_order_is_served_warm_and_a_reimport_is_a_no_op(pool, tmp_path):
    path, ds, _, X = pool
    np.save(tmp_path / "e.npy", X.astype(np.float64))
    first = imported(ds, tmp_path / "e.npy", tmp_path / "c", order="rows")
    assert (first.n, first.dim, first.n_written, first.layout) == (P * R, D, P * R, "rows")
    assert first.spec["layer"] == 18 and first.spec["backend"] == "imported"
    np.testing.assert_array_equal(vectors_of(ds, first, tmp_path / "c"), X)
    again = imported(ds, tmp_path / "e.npy", tmp_path / "c", order="rows")
    assert again.fingerprint == first.fingerprint and again.n_written == 0
    assert len(EmbeddingCache.open(first.cache_dir).parts()) == 1


def test_the_cache_keys_texts_as_embed_dataset_does(pool, tmp_path):
    _, ds, _, X = pool
    np.save(tmp_path / "e.npy", X)
    result = imported(ds, tmp_path / "e.npy", tmp_path / "c", order="rows")
    cache = EmbeddingCache(tmp_path / "c", cache_spec(make_embedder("imported", result.cache_dir), DEFAULT_TEMPLATE))
    assert str(cache.path) == result.cache_dir
    np.testing.assert_array_equal(cache.lookup(text_keys(render(ds.responses)[0])), X)


def test_npz_takes_its_only_array_or_the_key_named(pool, tmp_path):
    _, ds, V, X = pool
    np.savez(tmp_path / "one.npz", emb=V)
    np.testing.assert_array_equal(vectors_of(ds, imported(ds, tmp_path / "one.npz", tmp_path / "c"), tmp_path / "c"),
                                  X)
    np.savez(tmp_path / "two.npz", emb=V, other=V[..., :3])
    result = imported(ds, tmp_path / "two.npz", tmp_path / "c2", key="emb")
    assert result.key == "emb" and result.layout == "prompts x responses"


def test_safetensors_float16_and_bfloat16(pool, tmp_path):
    from safetensors.torch import save_file

    _, ds, V, X = pool
    safetensors.numpy.save_file({"emb": V.astype(np.float16), "mask": np.ones(3, np.int64)}, tmp_path / "h.safetensors")
    result = imported(ds, tmp_path / "h.safetensors", tmp_path / "c", key="emb")
    np.testing.assert_allclose(vectors_of(ds, result, tmp_path / "c"), X, rtol=1e-3, atol=1e-3)
    save_file({"emb": torch.from_numpy(V).to(torch.bfloat16)}, tmp_path / "b.safetensors")
    result = imported(ds, tmp_path / "b.safetensors", tmp_path / "c")
    np.testing.assert_allclose(vectors_of(ds, result, tmp_path / "c"), X, rtol=1e-2, atol=1e-2)


def test_torch_tensor_and_dict_of_tensors(pool, tmp_path):
    _, ds, V, X = pool
    torch.save(torch.from_numpy(V), tmp_path / "t.pt")
    result = imported(ds, tmp_path / "t.pt", tmp_path / "c")
    np.testing.assert_array_equal(vectors_of(ds, result, tmp_path / "c"), X)
    torch.save({"emb": torch.from_numpy(V).to(torch.bfloat16), "n": 3}, tmp_path / "d.pth")
    result = imported(ds, tmp_path / "d.pth", tmp_path / "c")  # the only tensor
    assert result.key == "emb"
    np.testing.assert_allclose(vectors_of(ds, result, tmp_path / "c"), X, rtol=1e-2, atol=1e-2)


def test_parquet_list_column_aligned_by_its_id_column(pool, tmp_path):
    _, ds, _, X = pool
    perm = np.random.default_rng(1).permutation(P * R)
    ids = ds.responses["response_id"].to_numpy()[perm]
    pl.DataFrame({"rid": ids, "vec": X[perm].tolist(), "score": np.zeros(P * R)}).write_parquet(tmp_path / "v.parquet")
    result = imported(ds, tmp_path / "v.parquet", tmp_path / "c", order="rid")
    assert result.layout == "ids" and result.key == "vec"
    np.testing.assert_allclose(vectors_of(ds, result, tmp_path / "c"), X)


def test_rows_in_another_order_through_an_id_file(pool, tmp_path):
    _, ds, _, X = pool
    perm = np.random.default_rng(2).permutation(P * R)
    np.save(tmp_path / "e.npy", X[perm])
    (tmp_path / "ids.txt").write_text("\n".join(ds.responses["response_id"].to_numpy()[perm]) + "\n\n")
    result = imported(ds, tmp_path / "e.npy", tmp_path / "c", order=tmp_path / "ids.txt")
    np.testing.assert_array_equal(vectors_of(ds, result, tmp_path / "c"), X)


def test_a_repeated_text_keeps_one_vector(tmp_path):
    rows = [{"prompt_id": "a", "prompt": "p", "response": r} for r in ("x", "x", "y")]
    pl.DataFrame(rows).write_parquet(tmp_path / "d.parquet")
    ds = load_dataset(tmp_path / "d.parquet")
    X = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    np.save(tmp_path / "e.npy", X)
    result = imported(ds, tmp_path / "e.npy", tmp_path / "c", order="rows")
    assert (result.n, result.n_unique, result.n_written) == (3, 2, 2)
    np.save(tmp_path / "bad.npy", X[[0, 2, 2]])
    with pytest.raises(EmbrmError, match=r"row 0 and row 1 are the same text .* different vectors"):
        imported(ds, tmp_path / "bad.npy", tmp_path / "c", order="rows")


# ----------------------------------------------------------------------------------------------- bad inputs


def write_bad(tmp_path, V, X, ds, case):
    """The file of a bad-input case and the import options it is passed with."""
    f = tmp_path / "bad.npy"
    if case == "pickle":
        f = tmp_path / "bad.pt"
        torch.save({"emb": torch.from_numpy(V), "meta": Opaque()}, f)
        return f, {}
    if case == "several":
        f = tmp_path / "bad.npz"
        np.savez(f, a=V, b=V)
        return f, {}
    if case == "no-such-key":
        f = tmp_path / "bad.safetensors"
        safetensors.numpy.save_file({"a": V}, f)
        return f, {"key": "emb"}
    ids = ds.responses["response_id"].to_list()
    values, order = {"prompts": V[:, :4], "rows": X[:-1], "int": (V * 10).astype(np.int64), "no-order": X,
                     "order-3d": V}.get(case, X), {"rows": "rows", "order-3d": "rows"}.get(case)
    if case == "nan":
        values = X.copy()
        values[7, 3] = np.nan
        order = "rows"
    if case in ("count", "unknown", "missing", "duplicate"):
        bad = {"count": ids[:-1], "unknown": ids[:-1] + ["q9:99"], "missing": ids[:-1] + ["q0:0"],
               "duplicate": [ids[1]] + ids[1:]}[case]
        (tmp_path / "ids.txt").write_text("\n".join(bad))
        order = str(tmp_path / "ids.txt")
    np.save(f, values)
    return f, {"order": order}


BAD = {
    "prompts": r"shape \(20, 4, 8\) is 20 prompts x 4 responses, but pool.parquet has 20 prompts with 5 responses",
    "rows": r"99 rows but pool.parquet has 100 responses",
    "int": r"holds int64 values: embeddings must be floats",
    "nan": r"row 7 has a non-finite value \(nan\) in column 3",
    "no-order": r"does not say which response each row is: pass --order rows",
    "order-3d": r"drop --order",
    "count": r"99 ids for the 100 rows",
    "unknown": r"row 99: id 'q9:99' is not a response of pool.parquet",
    "missing": r"id 'q0:0' appears at rows 0 and 99",
    "duplicate": r"id 'q0:1' appears at rows 0 and 1",
    "pickle": r"loading it needs pickle .* which embrm never runs",
    "several": r"holds 2 arrays \(a, b\): pass --key NAME",
    "no-such-key": r"no tensor named 'emb' \(it holds: a\)",
}


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_are_refused_with_one_line_naming_the_file(pool, tmp_path, case):
    _, ds, V, X = pool
    f, options = write_bad(tmp_path, V, X, ds, case)
    with pytest.raises(EmbrmError, match=BAD[case]) as e:
        imported(ds, f, tmp_path / "c", **options)
    message = str(e.value)
    assert "\n" not in message and (str(f) in message or str(tmp_path / "ids.txt") in message)
    assert not (tmp_path / "c").exists()  # nothing written


def test_a_missing_id_is_named(pool, tmp_path):
    _, ds, _, X = pool
    np.save(tmp_path / "e.npy", X[:-1])
    ids = ds.responses["response_id"].to_list()
    (tmp_path / "ids.txt").write_text("\n".join(ids[:-1]))
    with pytest.raises(EmbrmError, match=r"response 'q19:4' of pool.parquet has no row \(1 missing\)"):
        imported(ds, tmp_path / "e.npy", tmp_path / "c", order=tmp_path / "ids.txt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_never_run(pool, tmp_path):
    _, ds, _, _ = pool

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    (tmp_path / "boom.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(EmbrmError, match="boom.bin: loading it needs pickle"):
        imported(ds, tmp_path / "boom.bin", tmp_path / "c")


# ----------------------------------------------------------------------------------------------- CLI and fit


def test_sun_layout_imports_then_fits_like_the_same_vectors_written_directly(pool, tmp_path):
    path, ds, V, X = pool
    torch.save(torch.from_numpy(V), tmp_path / "sun.pt")
    cache = tmp_path / "c"
    shown = invoke("import", path, tmp_path / "sun.pt", "--model", "sun2025/gemma-2b", "--layer", "18",
                   "--pooling", "last", "--cache-dir", cache).stdout
    result = json.loads(invoke("import", path, tmp_path / "sun.pt", "--model", "sun2025/gemma-2b", "--layer", "18",
                               "--pooling", "last", "--cache-dir", cache, "--format", "json").stdout)
    assert result["n"] == P * R and result["dim"] == D and result["n_written"] == 0  # the second is a no-op
    assert f"--backend imported --model {result['cache_dir']} --cache-dir {cache}" in " ".join(shown.split())
    fit = ["--ensemble", "3", "--format", "json", "--seed", "3"]
    got = json.loads(invoke("fit", path, "--backend", "imported", "--model", result["cache_dir"], "--cache-dir", cache,
                            "--out", tmp_path / "m1", *fit).stdout)
    assert got["accuracy"] > 0.85  # gold sits in coordinate 0
    # the same vectors written directly under the default embedder's fingerprint
    direct = tmp_path / "direct"
    keys = text_keys(render(ds.responses)[0])
    EmbeddingCache(direct, cache_spec(make_embedder("st"), DEFAULT_TEMPLATE)).write_part(keys, X)
    want = json.loads(invoke("fit", path, "--cache-dir", direct, "--out", tmp_path / "m2", *fit).stdout)
    assert {k: v for k, v in got.items() if k != "model_dir"} == {k: v for k, v in want.items() if k != "model_dir"}
    with np.load(tmp_path / "m1" / "weights.npz") as a, np.load(tmp_path / "m2" / "weights.npz") as b:
        np.testing.assert_array_equal(a["coef"], b["coef"])
    # and bon-sim reads the imported vectors through the saved model's spec
    invoke("bon-sim", path, "--model", tmp_path / "m1", "--cache-dir", cache, "--out", tmp_path / "bon")


def test_imported_backend_explains_texts_that_were_not_imported(pool, tmp_path, monkeypatch):
    path, ds, V, _ = pool
    torch.save(torch.from_numpy(V), tmp_path / "sun.pt")
    monkeypatch.chdir(tmp_path)
    result = imported(ds, tmp_path / "sun.pt", "cache")
    by_print = make_embedder("imported", result.fingerprint[:12])  # a fingerprint prefix under ./cache
    assert by_print.spec() == {k: v for k, v in result.spec.items() if k != "template"} and by_print.dim == D
    out = invoke("fit", path, "--backend", "imported", "--model", result.cache_dir, "--template",
                 "Q: {prompt}\nA: {response}", "--out", tmp_path / "m", code=2).output
    assert "were never imported into" in out and "--template" in out and "Traceback" not in out


def test_cli_errors_are_one_line_and_exit_2(pool, tmp_path):
    path, _, _, X = pool
    np.save(tmp_path / "e.npy", X)
    out = invoke("import", path, tmp_path / "e.npy", "--model", "m", "--cache-dir", tmp_path / "c", code=2).output
    assert "pass --order rows" in out and len(out.strip().splitlines()) == 1
    out = invoke("fit", path, "--backend", "imported", "--model", tmp_path / "nowhere", "--out", tmp_path / "m",
                 code=2).output
    assert "no imported cache matches it" in out


def test_a_study_runs_on_imported_vectors(pool, tmp_path):
    path, ds, V, _ = pool
    np.savez(tmp_path / "sun.npz", embeddings=V)
    result = imported(ds, tmp_path / "sun.npz", tmp_path / "c")
    (tmp_path / "study.toml").write_text(f"""
name = "imported"
seeds = [0]
datasets = ["{path}"]
human_pairs = []
k = 2
aggregations = ["mean"]
methods = []
replicate = false
[labels]
n_pairs = 200
[[noise]]
name = "bt10"
beta = 10.0
[[learners]]
head = "linear"
[embedder]
backend = "imported"
model = "{result.cache_dir}"
""")
    invoke("run", tmp_path / "study.toml", "--out", tmp_path / "res", "--cache-dir", tmp_path / "c", "--workers", "1")
    job = json.loads(next((tmp_path / "res" / "jobs").glob("*.json")).read_text())
    assert job["metrics"]["accuracy"] > 0.85  # gold sits in coordinate 0 of the imported vectors
    report = (tmp_path / "res" / "report.md").read_text()
    assert f"imported: sun2025/gemma-2b layer 18 pooling last, {D}-d, from `sun.npz` (sha256 {result.sha256[:12]})" \
        in report
