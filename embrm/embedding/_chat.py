"""A causal LM's own chat rendering of one (prompt, response) row: a user turn and an assistant turn.

The texts are rendered without the model: ChatTemplate holds the Jinja source and the special-token strings the
template may read, and spec() / from_spec() carry both into a cache fingerprint, so a later process with no model
loaded re-renders exactly the same texts (and so the same cache keys).

Renderer. transformers' only public renderer (`render_jinja_template`) reads the clock through `strftime_now` and
offers no way to replace it, and its compile function is private, so rendering uses its own jinja2 sandbox built
with the settings of transformers' one (`utils/chat_template_utils.py`): ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, the loopcontrols extension, a `{% generation %}` block (renders its body), `tojson`
that does not escape HTML, `raise_exception`, `strftime_now`, a restricted `namespace` and `dict`. The variables
are those of `tok.apply_chat_template(conversation, tokenize=False)`: messages, tools=None, documents=None,
add_generation_prompt=False and the tokenizer's named special tokens (tokens that are None are left undefined,
as transformers does). The tests check that the two renderings are equal.

Dates. Templates that insert today's date (`strftime_now`, e.g. Llama 3.x system headers) would change the text,
and so the cache key, every day. `strftime_now` therefore always formats the fixed date CHAT_DATE (26 Jul 2024,
midnight: the date Llama 3.1's own template falls back on), which is part of the spec.

Response start (for response-token pooling and prompt-first truncation). The same conversation is rendered once
per distinct prompt with a sentinel as the assistant content and split at the sentinel into head and tail:
1. the text is head + response + tail (the template inserts the content verbatim): the start is len(head);
2. otherwise (the template transforms the content, e.g. `| trim`) the anchor is where the text first differs from
   the sentinel rendering, at most len(head) (where the assistant content starts; if the template drops or
   rewrites the sentinel, at most the sentinel rendering's length). The start is the first occurrence of the
   stripped response at or after the anchor; if it is not found (or the response is blank), the anchor.
So for a trimmed response the start is that of its stripped text; otherwise text[start:] begins at (or inside)
the assistant content, unless the template renders text before that content which depends on the response.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from embrm.core import EmbrmError

CHAT_DATE = "2024-07-26"
NO_TEMPLATE = "use the plain template (--template plain)"
_SENTINEL = "embrmresponsesentinel7c1f9a2e"  # lowercase letters and digits: survives trim / lower / strip


def _token_value(value):
    """A special token as a string (AddedToken -> str), a list of strings as a tuple, None as None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template's Jinja source, the special-token strings it may read, and the fixed date of strftime_now.

    `tokens` may be given as a dict; it is stored as a sorted tuple of (name, value) pairs (values: str, or a
    tuple of str for list-valued tokens of older transformers), without the None ones, so the object is hashable."""

    source: str
    tokens: tuple = field(default=())
    date: str = CHAT_DATE

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise EmbrmError(f"chat template must be a non-empty Jinja string, got {self.source!r}: {NO_TEMPLATE}")
        pairs = self.tokens.items() if isinstance(self.tokens, dict) else self.tokens
        tokens = tuple(sorted((str(k), _token_value(v)) for k, v in pairs if v is not None))
        object.__setattr__(self, "tokens", tokens)
        try:
            datetime.strptime(self.date, "%Y-%m-%d")
        except (TypeError, ValueError):
            raise EmbrmError(f"chat template date {self.date!r} must be YYYY-MM-DD") from None

    @property
    def token_map(self) -> dict:
        """The special tokens as the template sees them (list-valued tokens as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.tokens}

    @classmethod
    def from_tokenizer(cls, tok) -> ChatTemplate:
        """The tokenizer's chat template (a dict of named templates: its "default") and named special tokens."""
        source = getattr(tok, "chat_template", None)
        name = getattr(tok, "name_or_path", "") or type(tok).__name__
        if isinstance(source, dict):
            if "default" not in source:
                raise EmbrmError(f"model {name} has several chat templates {sorted(source)} and no 'default' one: "
                                 f"{NO_TEMPLATE}")
            source = source["default"]
        if not isinstance(source, str) or not source.strip():
            raise EmbrmError(f"model {name} has no chat template: {NO_TEMPLATE}")
        tokens = getattr(tok, "special_tokens_map", None) or {}
        return cls(source, dict(tokens))

    def spec(self) -> dict:
        """JSON-able description that from_spec() turns back into this template (goes into the cache fingerprint)."""
        tokens = self.token_map
        return {"chat_template": self.source, "chat_tokens": tokens, "chat_date": self.date,
                "chat_sha256": self.sha256()}

    def sha256(self) -> str:
        blob = json.dumps([self.source, self.token_map, self.date], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @classmethod
    def from_spec(cls, spec: dict) -> ChatTemplate:
        """Inverse of spec(); checks chat_sha256 when present (a hand-edited spec would re-render other texts)."""
        if not isinstance(spec, dict) or not isinstance(spec.get("chat_template"), str):
            raise EmbrmError("cache spec has no 'chat_template' string: re-embed with --template chat")
        tokens = spec.get("chat_tokens") or {}
        if not isinstance(tokens, dict):
            raise EmbrmError(f"cache spec 'chat_tokens' must be a mapping, got {type(tokens).__name__}: "
                             f"re-embed with --template chat")
        out = cls(spec["chat_template"], tokens, spec.get("chat_date", CHAT_DATE))
        if spec.get("chat_sha256") not in (None, out.sha256()):
            raise EmbrmError("cache spec 'chat_sha256' does not match its chat template: the spec was edited; "
                             "restore it or re-embed with --template chat")
        return out

    def render(self, prompts: list[str], responses: list[str]) -> tuple[list[str], list[int]]:
        """Each (prompt, response) as a user turn and an assistant turn, rendered like
        tok.apply_chat_template(conversation, tokenize=False); and where each response starts in its text."""
        if len(prompts) != len(responses):
            raise EmbrmError(f"chat render got {len(prompts)} prompts but {len(responses)} responses")
        template = _compile(self.source)
        variables = {**self.token_map, "tools": None, "documents": None, "add_generation_prompt": False,
                     "strftime_now": _fixed_strftime(self.date)}
        heads: dict[str, tuple[str, int, str | None]] = {}
        texts, starts = [], []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            p, r = _as_text(p, "prompt", i), _as_text(r, "response", i)
            if p not in heads:
                probe = _render_one(template, variables, p, _SENTINEL, i)
                head, found, tail = probe.partition(_SENTINEL)
                heads[p] = (probe, len(head) if found else len(probe),
                            tail if found and _SENTINEL not in tail else None)
            text = _render_one(template, variables, p, r, i)
            texts.append(text)
            starts.append(_response_start(text, r, *heads[p]))
        return texts, starts


def load_chat_template(where: str, **from_pretrained_kwargs) -> ChatTemplate:
    """Load only the tokenizer at `where` (a directory or hub id; kwargs such as gguf_file or revision go to
    AutoTokenizer.from_pretrained) and take its chat template."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise EmbrmError("the chat template needs transformers: pip install 'embrm[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(where, **from_pretrained_kwargs)
    except Exception as e:  # noqa: BLE001 - any load failure becomes one actionable line
        raise EmbrmError(f"cannot load the tokenizer of {where}: {_one_line(e)}: give a local model directory, "
                         f"a GGUF file or a hub id (hub ids need internet)") from None
    return ChatTemplate.from_tokenizer(tok)


def _response_start(text: str, response: str, probe: str, head: int, tail: str | None) -> int:
    """Where `response` starts in `text` (the rule in the module docstring): `probe` is the sentinel rendering,
    `head` the sentinel's offset in it, `tail` what follows the sentinel (None unless it occurs exactly once)."""
    if tail is not None and text == probe[:head] + response + tail:
        return head
    anchor = len(os.path.commonprefix([text[:head], probe[:head]]))
    needle = response.strip()
    at = text.find(needle, anchor) if needle else -1
    return at if at >= 0 else anchor


def _as_text(value, what: str, row: int) -> str:
    if not isinstance(value, str):
        raise EmbrmError(f"row {row}: {what} must be a string for the chat template, got {type(value).__name__}: "
                         f"fill or drop missing {what}s")
    return value


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _render_one(template, variables: dict, prompt: str, response: str, row: int) -> str:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    try:
        return template.render(messages=messages, **variables)
    except Exception as e:  # noqa: BLE001 - a template's raise_exception or a runtime error: one line
        raise EmbrmError(f"row {row}: the chat template failed on a user + assistant turn: {_one_line(e)}: "
                         f"{NO_TEMPLATE}") from None


def _fixed_strftime(date: str):
    moment = datetime.strptime(date, "%Y-%m-%d")

    def strftime_now(format):
        return moment.strftime(format)

    return strftime_now


@lru_cache(maxsize=16)
def _compile(source: str):
    """Compile a chat template in a sandbox with the settings of transformers' chat-template renderer."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise EmbrmError("the chat template needs jinja2>=3.1.6: pip install 'jinja2>=3.1.6'") from None
    if tuple(int(x) for x in jinja2.__version__.split(".")[:3] if x.isdigit()) < (3, 1, 6):
        raise EmbrmError(f"jinja2 {jinja2.__version__} has known sandbox escapes and chat templates are untrusted "
                         f"code: pip install -U 'jinja2>=3.1.6'")

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for masks): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise EmbrmError(f"the chat template does not parse: {_one_line(e)}: fix the model's chat_template or "
                         f"{NO_TEMPLATE}") from None
