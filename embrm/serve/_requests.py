"""Request bodies, checked: every way a body can be wrong is one line naming the field (and the item), so a trainer
that sends a bad batch reads what to fix, and the server keeps serving.

OpenRLHF (`--reward.remote_url`; its `SingleTurnAgentExecutor` posts one shard of rollouts per request):

    {"query": [prompt + response, ...], "prompts": [prompt, ...], "labels": [...]}

`query` is the policy's decoded prompt + response, so the response is what follows the request's prompt in it; the
policy's chat markup (ChatML, Llama 3, Gemma, Mistral) is taken off both, leaving the texts a reward model over
(instruction, answer) pairs was fitted on. Without `prompts`, the query is split at its last assistant turn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from embrm.core import EmbrmError
from embrm.evaluation import AGGREGATIONS
from embrm.serve._reward import RewardSettings

__all__ = ["BadRequest", "MAX_ITEMS", "parse_json", "reward_request", "score_request", "split_query", "unwrap_prompt"]

MAX_ITEMS = 4096  # pairs per request
MAX_TEXT = 1_000_000  # characters per prompt or response

# chat formats a policy's decoded text may carry: (the last user turn's content, the assistant turn's opening)
CHAT_FORMATS = (
    (r"<\|im_start\|>user\n(.*?)<\|im_end\|>", r"<\|im_start\|>assistant\n"),  # ChatML (Qwen, SmolLM)
    (r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
     r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n"),  # Llama 3
    (r"<start_of_turn>user\n(.*?)<end_of_turn>", r"<start_of_turn>model\n"),  # Gemma
    (r"\[INST\](.*?)\[/INST\]", r"\[/INST\]"),  # Mistral, Llama 2
)
# end-of-turn and end-of-sequence strings a decoded response may end with (skip_special_tokens=False)
STOP_STRINGS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<eos>",
                "<|end_of_text|>")


class BadRequest(EmbrmError):
    """A request the server refuses with `status` (4xx) and this one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Scoring:
    """A parsed request: the pairs, settings overrides and any extra aggregations to return."""

    prompts: list[str]
    responses: list[str]
    overrides: dict
    aggregations: tuple[str, ...] = ()


def parse_json(body: bytes) -> dict:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the body is not valid UTF-8 (byte {e.start}): send JSON encoded as UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(doc).__name__}")
    return doc


def _strings(doc: dict, key: str, *, required: bool = True) -> list[str] | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list):
        what = "missing" if value is None else f"a {type(value).__name__}"
        raise BadRequest(f"{key!r} must be a list of strings, got {what}", 422)
    if not value:
        raise BadRequest(f"{key!r} is empty: send at least one item", 422)
    if len(value) > MAX_ITEMS:
        raise BadRequest(f"{key!r} has {len(value)} items: send at most {MAX_ITEMS} per request", 413)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise BadRequest(f"{key}[{i}] must be a string, got {type(v).__name__}", 422)
        if len(v) > MAX_TEXT:
            raise BadRequest(f"{key}[{i}] has {len(v)} characters: at most {MAX_TEXT}", 413)
    return value


def _overrides(doc: dict, defaults: RewardSettings) -> dict:
    settings = doc.get("settings", {})
    if not isinstance(settings, dict):
        raise BadRequest(f"'settings' must be an object, got {type(settings).__name__}", 422)
    try:
        defaults.updated(settings)  # checked here: a bad setting is the request's fault, before any work
    except (EmbrmError, TypeError) as e:
        raise BadRequest(f"settings: {e}", 422) from None
    return settings


def unwrap_prompt(prompt: str) -> str:
    """The last user turn's content of a prompt in a known chat format (else the prompt itself)."""
    for user, _ in CHAT_FORMATS:
        turns = re.findall(user, prompt, flags=re.S)
        if turns:
            return turns[-1].strip()
    return prompt


def _clean_response(response: str) -> str:
    """The response without the end-of-turn / end-of-sequence strings a decoded rollout ends with (anything else,
    whitespace included, is kept: the text must be the one the model's vectors were made of)."""
    while True:
        stop = next((s for s in STOP_STRINGS if response.endswith(s)), None)
        if stop is None:
            return response
        response = response[: -len(stop)]


def split_query(query: str, prompt: str | None, i: int, strip_stop: bool = True) -> tuple[str, str]:
    """(prompt, response) of an OpenRLHF query: the response follows the request's prompt in the query, or (no
    prompt sent) follows the last assistant turn's opening; strip_stop: without trailing end-of-turn strings."""
    clean = _clean_response if strip_stop else str
    if prompt is not None:
        at = query.find(prompt) if prompt else 0
        if at < 0:
            raise BadRequest(f"query[{i}] does not contain prompts[{i}]: send the prompt the query starts with", 422)
        return unwrap_prompt(prompt), clean(query[at + len(prompt):])
    for _, opening in CHAT_FORMATS:
        starts = [m.end() for m in re.finditer(opening, query)]
        if starts:
            return unwrap_prompt(query[: starts[-1]]), clean(query[starts[-1]:])
    raise BadRequest(f"query[{i}] has no assistant turn of a known chat format: send 'prompts' too", 422)


def reward_request(doc: dict, defaults: RewardSettings) -> Scoring:
    """OpenRLHF's body -> the pairs (labels are accepted and unused: the reward model needs none). embrm's
    additions: "settings" (overrides) and "strip_stop" (default true: drop the end-of-turn strings a decoded rollout
    ends with; false keeps the response exactly as sent)."""
    queries = _strings(doc, "query")
    prompts = _strings(doc, "prompts", required=False)
    if prompts is not None and len(prompts) != len(queries):
        raise BadRequest(f"'prompts' has {len(prompts)} items for {len(queries)} queries: send one per query", 422)
    labels = doc.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(queries)):
        raise BadRequest(f"'labels' must be a list of {len(queries)} items (one per query) or left out", 422)
    strip_stop = doc.get("strip_stop", True)
    if not isinstance(strip_stop, bool):
        raise BadRequest(f"'strip_stop' must be true or false, got {strip_stop!r}", 422)
    pairs = [split_query(q, None if prompts is None else prompts[i], i, strip_stop) for i, q in enumerate(queries)]
    return Scoring([p for p, _ in pairs], [r for _, r in pairs], _overrides(doc, defaults))


def score_request(doc: dict, defaults: RewardSettings) -> Scoring:
    """{"pairs": [{"prompt", "response"}], "aggregations": [...] | "all", "settings": {...}} -> the pairs."""
    pairs = doc.get("pairs")
    if not isinstance(pairs, list) or not pairs:
        what = "missing" if pairs is None else ("empty" if pairs == [] else f"a {type(pairs).__name__}")
        raise BadRequest(f"'pairs' must be a non-empty list of {{\"prompt\", \"response\"}} objects, got {what}", 422)
    if len(pairs) > MAX_ITEMS:
        raise BadRequest(f"'pairs' has {len(pairs)} items: send at most {MAX_ITEMS} per request", 413)
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not isinstance(p.get("prompt"), str) or not isinstance(p.get("response"), str):
            raise BadRequest(f"pairs[{i}] must be an object with string 'prompt' and 'response'", 422)
        if max(len(p["prompt"]), len(p["response"])) > MAX_TEXT:
            raise BadRequest(f"pairs[{i}] has a text over {MAX_TEXT} characters", 413)
    return Scoring([p["prompt"] for p in pairs], [p["response"] for p in pairs], _overrides(doc, defaults),
                   _aggregations(doc.get("aggregations", [])))


def _aggregations(value) -> tuple[str, ...]:
    if value == "all":
        return AGGREGATIONS
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("'aggregations' must be a list of names or \"all\"", 422)
    bad = [v for v in value if v not in AGGREGATIONS]
    if bad:
        raise BadRequest(f"unknown aggregation {bad[0]!r}: use {', '.join(AGGREGATIONS)} or \"all\"", 422)
    return tuple(dict.fromkeys(value))
