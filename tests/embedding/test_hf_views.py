"""HF backend: token-budget batching, max pooling and several (layer, pooling) views from one forward pass."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from synthdata import tiny_llama  # noqa: E402
from transformers import AutoModel, PreTrainedTokenizerFast  # noqa: E402

from embrm.core._errors import EmbrmError  # noqa: E402
from embrm.embedding.backends._hf import HFEmbedder  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is the capital of France? Answer: Paris is the capital.",
    "Reward models score responses; embeddings make them cheap to train.",
]
# lengths from a few tokens to ~100, so batches mix lengths (real padding) and budgets cut in different places
TEXTS = [f"Q: {CORPUS[i % 3][: 5 + 7 * i]}\nA: " + "the fox answers " * (i % 5) + CORPUS[(i + 1) % 3][: 3 * i]
         for i in range(14)]
STARTS = [t.index("A: ") + 3 for t in TEXTS]
VIEWS = [(-1, "last"), (1, "mean"), (0, "max"), (-1, "mean_response")]


@pytest.fixture(scope="session")
def views_llama(tmp_path_factory):
    """A 2-layer Llama + a byte-level BPE tokenizer, saved like a hub checkpoint (as in test_embedders_hf)."""
    return tiny_llama(tmp_path_factory.mktemp("views_llama"), CORPUS * 5, vocab_size=300, max_positions=256)


def tiny(path, **options):
    return HFEmbedder(str(path), dtype="float32", **options)


def test_budget_batches_cover_rows_within_budget():
    emb = HFEmbedder("smollm2", max_tokens=100)  # batches() needs no model
    kept = np.array([30, 5, 120, 7, 7, 50, 9, 33, 20, 20, 1, 99])
    batches = emb.batches(kept)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(kept)))
    flat = kept[np.concatenate(batches)]
    assert (np.diff(flat) >= 0).all()  # length-sorted throughout
    for b in batches:
        assert len(b) == 1 or len(b) * kept[b].max() <= 100
    # greedy: adding the next row to any batch would exceed the budget
    for b, nxt in zip(batches, batches[1:]):
        assert (len(b) + 1) * kept[nxt[0]] > 100
    assert [kept[b].tolist() for b in batches][-1] == [120]  # over budget: alone
    assert [len(b) for b in HFEmbedder("smollm2", batch_size=5).batches(kept)] == [5, 5, 2]


@pytest.mark.slow
def test_vectors_do_not_depend_on_batching(views_llama):
    """Observed on CPU float32: identical where the batches are (budget 24 = one row per batch here); otherwise
    within ~4e-7 (float32 rounding of other padded widths in the matmuls), so compared at float32 tolerance."""
    runs = {name: tiny(views_llama, **opts).embed_views(TEXTS, STARTS, VIEWS) for name, opts in {
        "budget 24": {"max_tokens": 24}, "budget 10k": {"max_tokens": 10_000},
        "one row": {"batch_size": 1}, "left": {"max_tokens": 64, "padding_side": "left"}}.items()}
    one = tiny(views_llama, max_tokens=24)
    kept = one.embed(TEXTS).n_tokens
    assert len(one.batches(kept)) > 3 and len(tiny(views_llama, max_tokens=10_000).batches(kept)) == 1
    for name, batches in runs.items():
        for (layer, pooling), got, ref in zip(VIEWS, batches, runs["one row"]):
            np.testing.assert_allclose(got.vectors, ref.vectors, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name} layer={layer} pooling={pooling}")
    for got, ref in zip(runs["budget 24"], runs["one row"]):  # the same (one-row) batches: the same bits
        np.testing.assert_array_equal(got.vectors, ref.vectors)
    spec = tiny(views_llama).spec()
    assert tiny(views_llama, max_tokens=24, batch_size=3).spec() == spec  # batching is not in the fingerprint


@pytest.mark.slow
def test_views_equal_separate_embedders_and_share_forward_passes(views_llama):
    emb = tiny(views_llama, max_tokens=48)
    calls = []
    emb._load().register_forward_hook(lambda *_: calls.append(1))
    views = emb.embed_views(TEXTS, STARTS, VIEWS)
    kept = np.minimum(views[0].n_tokens, emb.max_length)
    assert len(calls) == len(emb.batches(kept))  # one forward per batch, whatever the number of views
    for (layer, pooling), got in zip(VIEWS, views):
        alone = tiny(views_llama, layer=layer, pooling=pooling, max_tokens=48).embed(TEXTS, STARTS)
        np.testing.assert_array_equal(got.vectors, alone.vectors, err_msg=f"{layer} {pooling}")  # same batches
        np.testing.assert_array_equal(got.n_tokens, alone.n_tokens)
        assert emb.view_spec(layer, pooling) == tiny(views_llama, layer=layer, pooling=pooling).spec()
    assert emb.embed(TEXTS, STARTS).vectors.tobytes() == views[0].vectors.tobytes()  # embed() = the single view


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_max_pooling_matches_unpadded_forward(views_llama, side):
    tok = PreTrainedTokenizerFast.from_pretrained(views_llama)
    model = AutoModel.from_pretrained(views_llama, dtype=torch.float32).eval()
    expected = []
    for text in TEXTS:
        with torch.inference_mode():
            ids = tok(text)["input_ids"] + [tok.eos_token_id]
            expected.append(model(input_ids=torch.tensor([ids])).last_hidden_state[0].amax(0).numpy())
    got = tiny(views_llama, pooling="max", padding_side=side, batch_size=5).embed(TEXTS)
    np.testing.assert_allclose(got.vectors, np.stack(expected), atol=2e-5)
    assert np.isfinite(got.vectors).all()  # -inf padding never wins
    assert tiny(views_llama, pooling="max").spec()["pooling"] == "max"


@pytest.mark.slow
def test_views_normalize_and_empty_input(views_llama):
    emb = tiny(views_llama, normalize=True)
    for b in emb.embed_views(TEXTS[:4], None, [(-1, "max"), (0, "mean")]):
        np.testing.assert_allclose(np.linalg.norm(b.vectors, axis=1), 1, atol=1e-6)
    empty = emb.embed_views([], None, [(-1, "last"), (1, "max")])
    assert [b.vectors.shape for b in empty] == [(0, 32), (0, 32)]


@pytest.mark.slow
def test_view_and_option_errors(views_llama):
    emb = tiny(views_llama)
    cases = [
        (lambda: emb.embed_views(TEXTS, None, [(-1, "last"), (1, "mean_response")]), "needs response_starts"),
        (lambda: emb.embed_views(TEXTS, None, [(3, "last")]), "layer=3 is out of range"),
        (lambda: emb.embed_views(TEXTS, None, [(-1, "median")]), "pooling='median'"),
        (lambda: emb.embed_views(TEXTS, None, [(1.5, "mean")]), "layer=1.5"),
        (lambda: emb.embed_views(TEXTS, None, []), "non-empty list of \\(layer, pooling\\) pairs"),
        (lambda: emb.embed_views(TEXTS, None, (-1, "last")), "non-empty list"),
        (lambda: emb.view_spec(-1, "sum"), "pooling='sum'"),
        (lambda: tiny(views_llama, max_tokens=0), "max_tokens=0"),
        (lambda: tiny(views_llama, max_tokens=True), "max_tokens=True"),
    ]
    for build, message in cases:
        with pytest.raises(EmbrmError, match=message) as info:
            build()
        assert "\n" not in str(info.value)
    spec = emb.view_spec(-2, "mean_response")
    assert spec == json.loads(json.dumps(spec)) and spec["response_tokens"]
    assert {k: v for k, v in spec.items() if k not in ("layer", "pooling", "response_tokens")} == {
        k: v for k, v in emb.spec().items() if k not in ("layer", "pooling")}
