"""Prompt-first truncation: a text longer than the window loses the start of its prompt, never its response.

With the default template and a right cut, a long prompt pushed every answer out of the window, so all answers to
it got one identical vector. Real packaged MiniLM (st) and a tiny offline Llama (hf); the real AlpacaEval pool and
the SmolLM2 tokenizer where they are installed.
"""

import json

import numpy as np
import polars as pl
import pytest
import torch
from realdata import DATA_DIR
from synthdata import tiny_llama

from embrm.core._errors import EmbrmError
from embrm.embedding.backends import EmbedBatch, make_embedder
from embrm.embedding.backends._base import PromptFirst

RESPONSES = DATA_DIR / "alpaca_eval_models" / "responses.parquet"
WORDS = ("review battery screen camera price delivery support warranty colour weight speaker charger keyboard "
         "update refund manual").split()
# ~600 word pieces: far beyond MiniLM's 256
PROMPT = "Summarise the pros and cons in this review. " + " ".join(
    f"The {WORDS[i % 16]} was {('great', 'poor', 'fine')[i % 3]} on day {i}." for i in range(90))
ANSWERS = ["Pros: great battery. Cons: poor support.", "It is mostly positive.", "Negative overall.",
           "The reviewer liked the camera and disliked the price."]


def render(prompt, answers):
    texts = [f"{prompt}\n\n{a}" for a in answers]
    return texts, [len(prompt) + 2] * len(answers)


def max_offdiag_cos(v):
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = v @ v.T
    return cos[~np.eye(len(v), dtype=bool)].max()


def min_offdiag_distance(v):
    """Smallest distance between two rows, relative to the mean row norm (0: two identical vectors)."""
    d = np.linalg.norm(v[:, None] - v[None], axis=2)
    return d[~np.eye(len(v), dtype=bool)].min() / np.linalg.norm(v, axis=1).mean()


# --------------------------------------------------------------------------------------------- st (MiniLM)


@pytest.fixture(scope="module")
def st():
    emb = make_embedder("st", dtype="float32")
    emb.embed(["load"])
    yield emb
    emb.close()


def raw_encode(emb, texts):
    """The model's own call (its right cut at 256), normalised as embrm does: no embrm truncation logic."""
    v = emb._model.encode(texts, batch_size=emb.batch_size, convert_to_numpy=True).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.slow
def test_right_cut_gave_identical_vectors_prompt_first_does_not(st):
    texts, starts = render(PROMPT, ANSWERS)
    old = raw_encode(st, texts)
    assert max_offdiag_cos(old) > 0.99999  # the bug: the answers were cut away, one vector for all
    no_starts = st.embed(texts)  # without response starts: today's right cut, unchanged
    np.testing.assert_array_equal(no_starts.vectors, old)
    assert not no_starts.response_cut.any()
    new = st.embed(texts, starts)
    assert max_offdiag_cos(new.vectors) < 0.995  # short answers after ~240 prompt tokens: close, not equal
    assert new.truncated.all() and not new.response_cut.any()
    np.testing.assert_array_equal(new.n_tokens, no_starts.n_tokens)  # the full text, before any cut
    np.testing.assert_array_equal(new.n_tokens, st._count(texts))
    assert (new.n_tokens > 256).all()


@pytest.mark.slow
def test_kept_text_is_the_prompt_end_plus_the_whole_response(st):
    texts, starts = render(PROMPT, ANSWERS)
    batch = st.embed(texts, starts)
    cut, new_starts, response_cut = st._prompt_first.cut(texts, np.array(starts), batch.n_tokens)
    assert not response_cut.any()
    for text, start, kept, kept_start in zip(texts, starts, cut, new_starts):
        assert kept[kept_start:] == text[start:]  # the whole response (and template tail), start shifted
        assert text[:start].endswith(kept[:kept_start]) and len(kept[:kept_start].strip()) > 500
    counts = st._prompt_first.count(cut)
    assert (counts <= 256).all() and (counts >= 250).all()  # fits, and the window is (nearly) full
    np.testing.assert_allclose(batch.vectors, raw_encode(st, cut), atol=1e-6)  # the model saw exactly that


@pytest.mark.slow
def test_response_longer_than_the_window_keeps_its_start(st):
    answer = " ".join(f"Point {i}: the {WORDS[i % 16]} matters." for i in range(120))
    texts, starts = render("Short question?", [answer, "A short answer."])
    batch = st.embed(texts, starts)
    assert batch.truncated.tolist() == [True, False] and batch.response_cut.tolist() == [True, False]
    cut, new_starts, _ = st._prompt_first.cut(texts, np.array(starts), batch.n_tokens)
    # the short prompt stays whole (it is under the prompt's floor); the answer keeps its start
    assert new_starts[0] == starts[0] and cut[0][:starts[0]] == texts[0][:starts[0]]
    assert answer.startswith(cut[0][new_starts[0]:]) and len(cut[0]) > 500
    assert cut[1] == texts[1]
    np.testing.assert_allclose(batch.vectors[0], raw_encode(st, [cut[0]])[0], atol=1e-6)


@pytest.mark.slow
def test_long_prompt_and_long_response_share_the_window(st):
    """Both too long: the prompt keeps its last quarter of the window, the response its start in the rest."""
    answer = " ".join(f"Point {i}: the {WORDS[i % 16]} matters." for i in range(120))
    texts, starts = render(PROMPT, [answer])
    batch = st.embed(texts, starts)
    cut, new_starts, response_cut = st._prompt_first.cut(texts, np.array(starts), batch.n_tokens)
    prompt_part, response_part = cut[0][:new_starts[0]], cut[0][new_starts[0]:]
    assert texts[0][:starts[0]].endswith(prompt_part) and answer.startswith(response_part) and response_cut[0]
    n_prompt = len(st._prompt_first._token_ends([prompt_part])[0])
    assert n_prompt == int(st._prompt_first.budget * st._prompt_first.PROMPT_FLOOR)
    assert st._prompt_first.count(cut)[0] <= st._prompt_first.window


@pytest.mark.slow
def test_texts_that_fit_are_unchanged(st):
    texts, starts = render("Name a colour.", ANSWERS)
    batch = st.embed(texts, starts)
    np.testing.assert_array_equal(batch.vectors, raw_encode(st, texts))  # bit-identical
    assert not batch.truncated.any() and not batch.response_cut.any()
    mixed, mixed_starts = texts + render(PROMPT, ANSWERS[:1])[0], starts + render(PROMPT, ANSWERS[:1])[1]
    got = st.embed(mixed, mixed_starts)
    np.testing.assert_allclose(got.vectors[:-1], batch.vectors, atol=1e-6)  # a cut neighbour changes nothing
    assert got.truncated.tolist() == [False] * len(texts) + [True]


def test_spec_names_the_policy_and_batch_is_backward_compatible():
    spec = make_embedder("st", dtype="float32").spec()
    assert spec["truncation"] == "prompt_first" and "truncation_side" not in spec
    b = EmbedBatch.build(np.ones((3, 2)), [1, 2, 3], [False, True, False])  # positional, as the openai backend
    assert b.response_cut.dtype == bool and b.response_cut.tolist() == [False] * 3
    assert EmbedBatch.build(np.ones((1, 2)), [1], [True], [True]).response_cut.tolist() == [True]


@pytest.mark.slow
def test_bad_response_starts_are_one_line_errors(st):
    for starts, message in [([0], "got 1 response_starts for 2 texts"), ([0, 9], r"response_starts\[1\]=9 is outside"),
                            ([-1, 0], r"response_starts\[0\]=-1")]:
        with pytest.raises(EmbrmError, match=message) as info:
            st.embed(["ab", "cd"], starts)
        assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(not RESPONSES.exists(), reason=f"{RESPONSES} not found (set EMBRM_DATA_DIR)")
def test_real_long_prompts_get_distinct_answers(st):
    """The real pool's longest prompt: its answers collapsed to one vector under the right cut."""
    df = pl.read_parquet(RESPONSES, columns=["prompt_id", "instruction", "output"])
    prompts = df["instruction"].unique(maintain_order=True).to_list()
    longest = prompts[int(np.argmax(st._count(prompts)))]
    pool = df.filter(pl.col("instruction") == longest).head(12)
    texts, starts = render(longest, [a[:300] for a in pool["output"]])
    assert max_offdiag_cos(raw_encode(st, texts)) > 0.99999
    assert max_offdiag_cos(st.embed(texts, starts).vectors) < 0.99


# ------------------------------------------------------------------------------------------- hf (tiny Llama)

HF_WINDOW = 40


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer Llama + a byte-level BPE tokenizer (no special tokens added; EOS appended by embrm)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny_llama_trunc"), [PROMPT] + ANSWERS, vocab_size=600,
                      max_positions=2048)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """text -> (last-layer hidden states of `ids + EOS`, char offsets): unpadded, no embrm logic."""
    from transformers import AutoModel, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_dir)
    model = AutoModel.from_pretrained(tiny_dir, dtype=torch.float32).eval()

    def run(text, max_tokens=None):
        enc = tok(text, return_offsets_mapping=True)
        ids = enc["input_ids"][: None if max_tokens is None else max_tokens - 1] + [tok.eos_token_id]
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        return hidden, np.array(enc["offset_mapping"]).reshape(-1, 2)

    return run


def tiny(tiny_dir, **options):
    return make_embedder("hf", str(tiny_dir), dtype="float32", max_length=HF_WINDOW, batch_size=3, **options)


@pytest.mark.slow
def test_hf_right_cut_gave_identical_vectors_prompt_first_does_not(tiny_dir, reference):
    texts, starts = render(PROMPT, ANSWERS)
    emb = tiny(tiny_dir)
    old = emb.embed(texts).vectors  # no response starts: today's right cut
    np.testing.assert_allclose(old, np.stack([reference(t, HF_WINDOW)[0][-1] for t in texts]), atol=2e-5)
    assert min_offdiag_distance(old) < 1e-6
    new = emb.embed(texts, starts)
    assert min_offdiag_distance(new.vectors) > 1e-2 and new.truncated.all() and not new.response_cut.any()
    assert new.n_tokens.tolist() == [len(reference(t)[0]) for t in texts]  # full text + EOS
    cut, new_starts, _ = emb._prompt_first.cut(texts, np.array(starts), new.n_tokens)
    for text, start, kept, kept_start, vec in zip(texts, starts, cut, new_starts, new.vectors):
        assert kept[kept_start:] == text[start:] and text[:start].endswith(kept[:kept_start])
        hidden, _ = reference(kept)
        assert HF_WINDOW - 2 <= len(hidden) <= HF_WINDOW  # fits (EOS included), window (nearly) full
        np.testing.assert_allclose(vec, hidden[-1], atol=2e-5)


@pytest.mark.slow
def test_hf_mean_response_offset_is_shifted_to_the_cut(tiny_dir, reference):
    texts, starts = render(PROMPT, ANSWERS)
    emb = tiny(tiny_dir, pooling="mean_response")
    batch = emb.embed(texts, starts)
    cut, new_starts, _ = emb._prompt_first.cut(texts, np.array(starts), batch.n_tokens)
    for kept, start, answer, vec in zip(cut, new_starts, ANSWERS, batch.vectors):
        assert kept[start:] == answer
        hidden, spans = reference(kept)
        in_response = np.append((spans[:, 1] > start) & (spans[:, 1] > spans[:, 0]), False)  # EOS excluded
        assert 0 < in_response.sum() < len(in_response) - 1  # prompt tokens kept, and excluded from the mean
        np.testing.assert_allclose(vec, hidden[in_response].mean(0), atol=2e-5)


@pytest.mark.slow
def test_hf_long_response_keeps_its_start_and_fitting_texts_are_unchanged(tiny_dir, reference):
    answer = " ".join(f"The {w} was fine." for w in WORDS * 3)
    texts, starts = render("Name a colour.", [answer] + ANSWERS)
    emb = tiny(tiny_dir)
    batch = emb.embed(texts, starts)
    assert batch.response_cut.tolist() == [True] + [False] * len(ANSWERS)
    assert batch.truncated.tolist() == [True] + [False] * len(ANSWERS)
    cut, new_starts, _ = emb._prompt_first.cut(texts, np.array(starts), batch.n_tokens)
    assert new_starts[0] == starts[0] and answer.startswith(cut[0][new_starts[0]:]) and cut[1:] == texts[1:]
    np.testing.assert_allclose(batch.vectors[0], reference(cut[0])[0][-1], atol=2e-5)
    fit = emb.embed(texts[1:], starts[1:]).vectors
    np.testing.assert_array_equal(fit, emb.embed(texts[1:]).vectors)  # bit-identical without any cut logic
    assert emb.spec()["truncation"] == "prompt_first"
    assert json.loads(json.dumps(emb.spec())) == emb.spec()


@pytest.mark.slow
def test_smollm2_tokenizer_junction_still_fits():
    """Byte-level BPE merges differently across the prompt/response junction ("\\n\\n" + word): the recount
    trims the prompt so the joined text fits exactly, the response intact."""
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    from embrm.embedding.backends._hf import smollm2_gguf

    path = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    cutter = PromptFirst(tok, 48, extra=1)
    texts, starts = render(PROMPT + " ünïcödé 日本語 🎉", ANSWERS)
    cut, new_starts, response_cut = cutter.cut(texts, np.array(starts), cutter.count(texts))
    assert not response_cut.any() and (cutter.count(cut) <= 48).all() and (cutter.count(cut) >= 46).all()
    assert all(k[s:] == a for k, s, a in zip(cut, new_starts, ANSWERS))
