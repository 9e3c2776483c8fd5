"""Chat-template rendering without a model: equal to the tokenizer's own apply_chat_template, reproducible from
the cache spec alone, with the response start located in each text."""

import json
import time

import pytest

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from embrm.core._errors import EmbrmError  # noqa: E402
from embrm.embedding._chat import CHAT_DATE, ChatTemplate, load_chat_template  # noqa: E402

PROMPTS = ["Hi there", "What is 2+2?", "Résumé: 日本語で答えて 🙂", "multi\nline\n\nprompt", "braces {x} {{ y }}",
           "Hi there", "  padded prompt  ", "special <|im_end|> <eos> inside"]
RESPONSES = ["Hello!", "Four.", "はい、どうぞ 🎉 — ok", "", "{% raw %}{{ not a template }}", "   ",
             "  leading and trailing spaces \n", "a\n\nb"]

CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TRIM = ("{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content | trim }} [/INST]"
        "{% else %} {{ m.content | trim }}{{ eos_token }}{% endif %}{% endfor %}")
# transformers' extras: namespace, loop controls, tojson (no HTML escaping), a {% generation %} block, dict()
EXTRAS = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
          "{% set ns.n = ns.n + 1 %}#{{ ns.n }} {{ m.role }} {{ dict(c=m.content) | tojson }}\n"
          "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{{ eos_token }}"
          "{% endif %}{% endfor %}")
DATED = ("{% if strftime_now is defined %}{% set d = strftime_now('%d %b %Y') %}{% else %}{% set d = 'none' %}"
         "{% endif %}Today Date: {{ d }}\n{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>"
         "{% endfor %}")
RAISES = ("{% for m in messages %}{% if m.role == 'assistant' %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{% endfor %}")


def conversation(p, r):
    return [{"role": "user", "content": p}, {"role": "assistant", "content": r}]


def reference(tok, prompts=PROMPTS, responses=RESPONSES):
    return [tok.apply_chat_template(conversation(p, r), tokenize=False) for p, r in zip(prompts, responses)]


def hand_tokenizer(template=None, **tokens):
    """A tokenizer with a hand-written chat template (no vocabulary needed: only its template and tokens are read)."""
    tokens = tokens or {"eos_token": "<eos>", "pad_token": "<pad>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), **tokens)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="session")
def smollm2_tok():
    """The packaged SmolLM2-135M-Instruct GGUF's tokenizer (read from the GGUF: slow, so once per session)."""
    pytest.importorskip("gguf")
    from embrm.embedding.backends._hf import smollm2_gguf

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.slow
def test_smollm2_gguf_carries_a_chat_template_and_renders_like_transformers(smollm2_tok):
    assert isinstance(smollm2_tok.chat_template, str) and "<|im_start|>" in smollm2_tok.chat_template
    chat = ChatTemplate.from_tokenizer(smollm2_tok)
    texts, starts = chat.render(PROMPTS, RESPONSES)
    assert texts == reference(smollm2_tok)
    assert texts[0].startswith("<|im_start|>system\n") and texts[0].endswith("<|im_start|>assistant\nHello!<|im_end|>\n")
    for text, start, r in zip(texts, starts, RESPONSES):  # inserted verbatim: the response starts exactly there
        assert text[start:].startswith(r + "<|im_end|>") and text[:start].endswith("<|im_start|>assistant\n")
    assert dict(chat.tokens) == smollm2_tok.special_tokens_map


@pytest.mark.parametrize("template", [CHATML, TRIM, EXTRAS], ids=["chatml", "trim", "extras"])
def test_hand_written_templates_render_like_transformers(template):
    tok = hand_tokenizer(template, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    texts, _ = ChatTemplate.from_tokenizer(tok).render(PROMPTS, RESPONSES)
    assert texts == reference(tok)


def test_none_tokens_stay_undefined_like_transformers():
    template = "{% if bos_token is defined %}BOS={{ bos_token }}|{% endif %}" + CHATML
    tok = hand_tokenizer(template)  # no bos_token
    chat = ChatTemplate.from_tokenizer(tok)
    assert "bos_token" not in dict(chat.tokens)
    assert ChatTemplate(template, {"bos_token": None, "eos_token": "<eos>"}).tokens == (("eos_token", "<eos>"),)
    assert chat.render(PROMPTS, RESPONSES)[0] == reference(tok)
    assert not chat.render(["p"], ["r"])[0][0].startswith("BOS")


def test_response_starts_plain_template():
    texts, starts = ChatTemplate(CHATML, {"bos_token": "<s>"}).render(PROMPTS, RESPONSES)
    for text, start, r in zip(texts, starts, RESPONSES):
        assert text[start:].startswith(r + "<|im_end|>\n")
        assert text[:start].endswith("<|im_start|>assistant\n")
        assert text[start + len(r):] == "<|im_end|>\n"


def test_response_starts_when_the_template_trims_the_content():
    chat = ChatTemplate(TRIM, {"eos_token": "</s>"})
    texts, starts = chat.render(PROMPTS, RESPONSES)
    for text, start, r in zip(texts, starts, RESPONSES):
        assert text[:start].endswith("[/INST] ")  # the assistant content starts right after the turn header
        assert text[start:] == r.strip() + "</s>"


def test_response_start_falls_back_to_the_assistant_turn_when_the_content_is_rewritten():
    # the template rewrites the content (upper) and prefixes it with a think block: the response text is not in
    # the rendering, so the start is where the rendering first departs from the sentinel one (the assistant turn)
    template = ("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}<think></think>"
                "{{ m.content | upper }}{% else %}{{ m.content }}{% endif %}</{{ m.role }}>{% endfor %}")
    texts, starts = ChatTemplate(template).render(["q", "q"], ["Hello World", "UPPER already"])
    assert texts[0] == "<user>q</user><assistant><think></think>HELLO WORLD</assistant>"
    assert texts[0][starts[0]:] == "HELLO WORLD</assistant>"  # at the sentinel's offset (it is upper-cased too)
    assert texts[1][starts[1]:] == "UPPER already".upper() + "</assistant>"
    # content that the template drops entirely: the sentinel is absent; the start is where the renderings differ
    drop = "{% for m in messages %}<{{ m.role }}>{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"
    texts, starts = ChatTemplate(drop).render(["q"], ["gone"])
    assert texts == ["<user>q<assistant>"] and starts == [len(texts[0])]


def test_response_start_finds_the_response_after_inserted_text():
    # content-dependent text before the response (a note when the answer is long): found after the anchor
    template = ("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' and m.content|length > 10 %}"
                "(long) {% endif %}{{ m.content | trim }}</{{ m.role }}>{% endfor %}")
    texts, starts = ChatTemplate(template).render(["long"], [" a long answer here "])
    assert texts[0][starts[0]:].startswith("a long answer here</assistant>")


@pytest.mark.slow
def test_spec_round_trip_renders_identically(smollm2_tok):
    for chat in (ChatTemplate.from_tokenizer(smollm2_tok), ChatTemplate(TRIM, {"eos_token": "</s>",
                                                                             "additional": ["<a>", "<b>"]})):
        spec = json.loads(json.dumps(chat.spec()))  # JSON-able, as stored in a cache fingerprint
        assert set(spec) >= {"chat_template", "chat_tokens", "chat_sha256"}
        again = ChatTemplate.from_spec(spec)
        assert again == chat and hash(again) == hash(chat) and again.spec() == chat.spec()
        assert again.render(PROMPTS, RESPONSES) == chat.render(PROMPTS, RESPONSES)
    edited = {**spec, "chat_template": spec["chat_template"] + " "}
    with pytest.raises(EmbrmError, match="chat_sha256"):
        ChatTemplate.from_spec(edited)
    with pytest.raises(EmbrmError, match="chat_template"):
        ChatTemplate.from_spec({"template": "x"})
    # a different template, token or date is a different fingerprint
    shas = {ChatTemplate(TRIM).sha256(), ChatTemplate(CHATML).sha256(), ChatTemplate(TRIM, {"eos_token": "x"}).sha256(),
            ChatTemplate(TRIM, date="2025-01-01").sha256()}
    assert len(shas) == 4


def test_dated_template_renders_a_fixed_date(monkeypatch):
    chat = ChatTemplate(DATED)
    texts, starts = chat.render(["q"], ["a"])
    assert texts == ["Today Date: 26 Jul 2024\n<user>q</user><assistant>a</assistant>"] and CHAT_DATE == "2024-07-26"
    assert texts[0][starts[0]:] == "a</assistant>"
    assert ChatTemplate(DATED, date="2025-03-01").render(["q"], ["a"])[0][0].startswith("Today Date: 01 Mar 2025\n")
    # transformers renders the same text when its clock says the fixed date
    from datetime import datetime

    import transformers.utils.chat_template_utils as ctu

    if not hasattr(ctu, "datetime"):
        pytest.skip("this transformers reads the clock elsewhere")

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 7, 26)

    monkeypatch.setattr(ctu, "datetime", Frozen)
    assert texts == reference(hand_tokenizer(DATED), ["q"], ["a"])


def test_template_that_raises_is_one_actionable_line():
    with pytest.raises(EmbrmError) as err:
        ChatTemplate(RAISES).render(["q", "q2"], ["a", "b"])
    message = str(err.value)
    assert "\n" not in message and "Conversation roles must alternate" in message and "--template" in message
    with pytest.raises(EmbrmError, match="does not parse") as err:
        ChatTemplate("{% for m in messages %}{{ m.content }").render(["q"], ["a"])
    assert "\n" not in str(err.value)
    with pytest.raises(EmbrmError, match="row 1: response must be a string"):
        ChatTemplate(CHATML).render(["q", "q"], ["a", None])
    with pytest.raises(EmbrmError, match="2 prompts but 1 responses"):
        ChatTemplate(CHATML).render(["q", "q"], ["a"])


def test_sandbox_blocks_unsafe_templates():
    with pytest.raises(EmbrmError, match="failed.*unsafe"):
        ChatTemplate("{{ messages.__class__.__mro__ }}").render(["q"], ["a"])
    with pytest.raises(EmbrmError, match="failed.*'_x'"):
        ChatTemplate("{% set ns = namespace() %}{% set ns._x = 1 %}").render(["q"], ["a"])
    with pytest.raises(EmbrmError, match="failed"):  # immutable: templates cannot change the messages
        ChatTemplate("{{ messages.append(1) }}").render(["q"], ["a"])


def test_tokenizer_without_template_is_an_error(tmp_path):
    with pytest.raises(EmbrmError, match="has no chat template: use the plain template") as err:
        ChatTemplate.from_tokenizer(hand_tokenizer(None))
    assert "\n" not in str(err.value)
    with pytest.raises(EmbrmError, match="no 'default'"):
        ChatTemplate.from_tokenizer(hand_tokenizer({"tool_use": CHATML}))
    named = ChatTemplate.from_tokenizer(hand_tokenizer({"default": CHATML, "tool_use": TRIM}))
    assert named.source == CHATML
    with pytest.raises(EmbrmError, match="non-empty"):
        ChatTemplate("")


def test_load_chat_template_reads_only_the_tokenizer(tmp_path):
    tok = hand_tokenizer(CHATML, bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(tmp_path / "tok")
    chat = load_chat_template(str(tmp_path / "tok"))
    assert chat == ChatTemplate.from_tokenizer(tok) and chat.render(PROMPTS, RESPONSES)[0] == reference(tok)
    hand_tokenizer(None).save_pretrained(tmp_path / "plain")
    with pytest.raises(EmbrmError, match="no chat template"):
        load_chat_template(str(tmp_path / "plain"))
    with pytest.raises(EmbrmError, match="cannot load the tokenizer") as err:
        load_chat_template(str(tmp_path / "missing"))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_renders_thousands_of_rows_per_second(smollm2_tok):
    chat = ChatTemplate.from_tokenizer(smollm2_tok)
    prompts = [f"Question {i // 8}: how do I cook dish number {i // 8}?" for i in range(8000)]
    responses = [f"Step {i}. " * 20 for i in range(8000)]
    t = time.perf_counter()
    texts, starts = chat.render(prompts, responses)
    assert time.perf_counter() - t < 4.0  # >= 2000 rows/s (about 7000 here: ~140 us a row)
    assert all(text[s:].startswith(r) for text, s, r in zip(texts[:50], starts, responses))
