"""int8 on OpenVINO (backends._openvino) for the hf backend, on the tiny offline Llama of test_embedders_hf: agreement
with float32 torch, the spec (the recipe only in int8's), views from one converted model, the conversion kept on
disk, and what dtype "auto" chooses and why."""

import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("transformers")
import test_embedders_hf as hf_tests  # noqa: E402

from embrm.core import EmbrmError  # noqa: E402
from embrm.embedding.backends import _base, _openvino, make_embedder  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _openvino.available(), reason="openvino/nncf not installed (embrm[fast])")]
tiny_dir = hf_tests.tiny_dir  # the tiny Llama of the hf tests (fixture), reused
CORPUS, TEXTS = hf_tests.CORPUS, hf_tests.TEXTS
STARTS = [t.index("A: ") + 3 for t in TEXTS]
VIEWS = [(-1, "last"), (1, "mean"), (0, "max"), (-1, "mean_response"), (-2, "last")]
# measured on the tiny random Llama (hidden size 32): min cosine 0.99996 over these views; a real model agrees less
# (SmolLM2: the agreement record of test_auto_... is the real check, and bench_embed measures it on real texts)
TINY_FLOOR = 0.999


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """One state directory for the module: the tiny model converts once, as it would on a user's machine."""
    path = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBRM_STATE_DIR", str(path))
        yield path


@pytest.fixture
def fresh(state, tmp_path, monkeypatch):
    """A state directory without agreement records that shares the module's converted models (converted once)."""
    (state / "openvino").mkdir(exist_ok=True)
    (tmp_path / "openvino").symlink_to(state / "openvino", target_is_directory=True)
    monkeypatch.setenv("EMBRM_STATE_DIR", str(tmp_path))
    return tmp_path


def tiny(path, dtype="int8", **options):
    return make_embedder("hf", str(path), dtype=dtype, batch_size=2, **options)


def _cosines(a, b):
    return np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_agrees_with_float32_and_only_its_spec_carries_the_recipe(state, tiny_dir):
    int8 = tiny(tiny_dir).embed_views(TEXTS, STARTS, VIEWS)
    float32 = tiny(tiny_dir, "float32").embed_views(TEXTS, STARTS, VIEWS)
    for view, q, f in zip(VIEWS, int8, float32):
        assert q.vectors.shape == f.vectors.shape and q.vectors.dtype == np.float32
        assert _cosines(q.vectors, f.vectors).min() >= TINY_FLOOR, view
        assert np.array_equal(q.n_tokens, f.n_tokens) and np.array_equal(q.response_cut, f.response_cut)
    assert not np.array_equal(int8[0].vectors, float32[0].vectors)  # really another computation

    spec = tiny(tiny_dir).view_spec(1, "mean")
    assert spec["dtype"] == "int8" and spec["int8"] == _openvino.RECIPE
    # float32 (and bfloat16) specs are as before int8 existed: existing caches stay valid
    assert tiny(tiny_dir, "float32").spec() == {
        "spec_version": 1, "backend": "hf", "model": str(tiny_dir), "revision": None, "layer": -1, "pooling": "last",
        "append_eos": True, "padding_side": "right", "position_ids": "from_attention_mask", "max_length": 512,
        "truncation": "prompt_first", "dtype": "float32", "normalize": False}
    assert "int8" not in tiny(tiny_dir, "bfloat16").view_spec(0, "mean_response")


def test_int8_views_equal_separate_embeds_whatever_the_padding_side(state, tiny_dir):
    together = tiny(tiny_dir).embed_views(TEXTS, STARTS, VIEWS)
    for (layer, pooling), batch in zip(VIEWS, together):
        alone = tiny(tiny_dir, layer=layer, pooling=pooling).embed(TEXTS, STARTS)
        np.testing.assert_allclose(alone.vectors, batch.vectors, atol=1e-6, err_msg=f"{layer}, {pooling}")
    left = tiny(tiny_dir, padding_side="left").embed_views(TEXTS, STARTS, VIEWS)
    for a, b in zip(left, together):
        assert np.isfinite(a.vectors).all()
        np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)


def test_int8_cuts_long_texts_as_float32_does(state, tiny_dir):
    texts = [" ".join(CORPUS) + " " + t for t in TEXTS]
    starts = [len(t) - len(u) + s for t, u, s in zip(texts, TEXTS, STARTS)]
    q = tiny(tiny_dir, max_length=16).embed(texts, starts)
    f = tiny(tiny_dir, "float32", max_length=16).embed(texts, starts)
    assert q.truncated.all() and np.array_equal(q.response_cut, f.response_cut)
    assert _cosines(q.vectors, f.vectors).min() >= TINY_FLOOR


def test_a_second_embedder_reads_the_conversion_back(state, tiny_dir, monkeypatch):
    tiny(tiny_dir).embed(TEXTS[:2])
    (folder,) = [p for p in (state / "openvino").iterdir()]
    before = (folder.stat().st_mtime_ns, (folder / "model.bin").stat().st_mtime_ns)
    monkeypatch.setattr(_openvino, "_convert", lambda *a: pytest.fail("converted again"))
    again = tiny(tiny_dir, layer=0, pooling="mean")
    again.embed(TEXTS)
    assert (folder.stat().st_mtime_ns, (folder / "model.bin").stat().st_mtime_ns) == before
    assert list((state / "openvino").iterdir()) == [folder]  # one converted model for every view


def test_auto_chooses_int8_once_it_agrees_and_says_so(monkeypatch, fresh, tiny_dir):
    monkeypatch.setattr(_base, "fast_int8", lambda: False)
    assert tiny(tiny_dir, "auto").spec()["dtype"] != "int8"  # no int8 dot products: torch, nothing measured
    assert not (fresh / "agreement").exists()

    monkeypatch.setattr(_base, "fast_int8", lambda: True)
    emb = tiny(tiny_dir, "auto")
    assert emb.spec()["dtype"] == "int8" and emb.spec()["int8"] == _openvino.RECIPE
    assert re.fullmatch(r"int8 on OpenVINO, min cosine \d\.\d{4} \(mean \d\.\d{4}\) to float32 on 64 fixed texts",
                        emb.precision())
    (record,) = (fresh / "agreement").glob("*.json")
    found = json.loads(record.read_text())
    assert found["n"] == len(_openvino.check_sample()) and TINY_FLOOR <= found["min_cos"] <= found["mean_cos"] <= 1

    # measured once per model and machine, of the model's default embedding: any view reads the record back
    monkeypatch.setattr(type(emb), "_measure_agreement", lambda self: pytest.fail("measured twice"))
    assert tiny(tiny_dir, "auto", layer=1, pooling="max").spec()["dtype"] == "int8"

    # below the floor: auto keeps float32 and says why
    monkeypatch.setattr(_openvino, "AGREEMENT_FLOOR", 1.01)
    kept = tiny(tiny_dir, "auto")
    assert kept.spec()["dtype"] == "float32" and "int8 not used: min cosine" in kept.precision()
    assert "int8" not in kept.spec()


def test_a_model_changed_in_place_is_checked_again(monkeypatch, fresh, tiny_dir):
    monkeypatch.setattr(_base, "fast_int8", lambda: True)
    measured = []
    monkeypatch.setattr(_openvino, "check_sample", lambda: measured.append(1) or TEXTS)
    tiny(tiny_dir, "auto").spec()
    config = tiny_dir / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        tiny(tiny_dir, "auto").spec()
    finally:
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(measured) == 2 and len(list((fresh / "agreement").glob("*.json"))) == 2


def test_int8_errors_are_one_line(monkeypatch, tiny_dir):
    monkeypatch.setattr(_openvino, "available", lambda: False)
    with pytest.raises(EmbrmError, match=r"pip install \"embrm\[fast\]\"") as e:
        tiny(tiny_dir)
    assert "\n" not in str(e.value)
    assert tiny(tiny_dir, "auto").spec()["dtype"] in ("float32", "bfloat16")  # auto without OpenVINO: torch
