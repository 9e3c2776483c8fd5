"""Reward functions for RL trainers, in-process (a model dir: no server) or as thin clients of `embrm serve` (a URL).

    from embrm.serve import trl_reward
    GRPOTrainer(..., reward_funcs=[trl_reward("models/mlp")])                       # in-process
    GRPOTrainer(..., reward_funcs=[trl_reward("http://127.0.0.1:8000", asynchronous=True)])   # a server

TRL calls `reward(prompts, completions, **kwargs) -> list[float]` once per B x G completions (strings, or chat
messages: the last user turn and the assistant's content are used). verl calls
`compute_score(data_source, solution_str, ground_truth, extra_info)` per sample (`extra_info["prompt"]` carries the
prompt, as in verl's data recipes) or, with its batch reward manager, `compute_score(data_sources, solution_strs,
ground_truths, extra_infos)`; point verl's `custom_reward_function.path` at this module with name
`verl_compute_score` (or `verl_compute_score_batch`) and `EMBRM_REWARD` at a model dir or a server URL.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time

import httpx

from embrm.core import EmbrmError
from embrm.serve._reward import RewardModel

__all__ = ["RemoteRewards", "reward_source", "trl_reward", "verl_compute_score", "verl_compute_score_batch",
           "verl_reward", "REWARD_ENV"]

REWARD_ENV = "EMBRM_REWARD"  # verl's module-level functions: the model dir or server URL they score with
PROMPT_KEYS = ("prompt", "question", "instruction", "problem")  # where verl recipes keep the prompt in extra_info


class RemoteRewards:
    """A running `embrm serve`, called over HTTP (POST /score); retries connection failures and 503s like
    OpenRLHF's client (5 tries, a second apart)."""

    def __init__(self, url: str, *, api_key_env: str | None = None, timeout: float = 180.0, tries: int = 5):
        self.url = url.rstrip("/")
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise EmbrmError(f"api_key_env {api_key_env}: the variable is unset or empty: export the server's key")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout, self.tries = timeout, tries

    def _body(self, prompts, responses, overrides) -> dict:
        return {"pairs": [{"prompt": p, "response": r} for p, r in zip(prompts, responses)],
                "settings": dict(overrides or {})}

    def _settled(self, attempt: int, reply: httpx.Response | None, error: Exception | None) -> list[float] | None:
        """The reply's rewards, or None to try again (a 503 or a connection failure before the last try)."""
        last = attempt == self.tries - 1
        if error is not None:
            if last:
                raise EmbrmError(f"{self.url}: {type(error).__name__}: is `embrm serve` running there?")
            return None
        if reply.status_code == 503 and not last:
            return None
        if reply.status_code != 200:
            try:
                message = reply.json().get("error")
            except ValueError:
                message = reply.text[:200]
            raise EmbrmError(f"{self.url}/score answered {reply.status_code}: {message}")
        return reply.json()["rewards"]

    def rewards(self, prompts: list[str], responses: list[str], overrides: dict | None = None) -> list[float]:
        body = self._body(prompts, responses, overrides)
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            for attempt in range(self.tries):
                try:
                    reply, error = client.post(f"{self.url}/score", json=body), None
                except httpx.TransportError as e:
                    reply, error = None, e
                if (got := self._settled(attempt, reply, error)) is not None:
                    return got
                time.sleep(1.0)

    async def arewards(self, prompts: list[str], responses: list[str], overrides: dict | None = None) -> list[float]:
        body = self._body(prompts, responses, overrides)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            for attempt in range(self.tries):
                try:
                    reply, error = await client.post(f"{self.url}/score", json=body), None
                except httpx.TransportError as e:
                    reply, error = None, e
                if (got := self._settled(attempt, reply, error)) is not None:
                    return got
                await asyncio.sleep(1.0)


class _LocalRewards:
    """A RewardModel in this process, with the same two calls as RemoteRewards."""

    def __init__(self, model: RewardModel):
        self.model = model

    def rewards(self, prompts, responses, overrides=None) -> list[float]:
        return self.model.rewards(prompts, responses, overrides).rewards.tolist()

    async def arewards(self, prompts, responses, overrides=None) -> list[float]:
        return await asyncio.to_thread(self.rewards, prompts, responses, overrides)


def reward_source(source, **load_options):
    """A scorer from a RewardModel, a server URL (http:// or https://) or a model dir (loaded with load_options:
    cache_dir, settings, dataset, ...)."""
    if isinstance(source, (RemoteRewards, _LocalRewards)):
        return source
    if isinstance(source, RewardModel):
        return _LocalRewards(source)
    text = str(source)
    if text.startswith(("http://", "https://")):
        return RemoteRewards(text, **load_options)
    return _LocalRewards(RewardModel.load(text, **load_options))


def _content(item) -> str:
    """A TRL prompt or completion: a string, or chat messages (the last user turn of a prompt, the assistant's
    content of a completion)."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and all(isinstance(m, dict) for m in item):
        users = [m for m in item if m.get("role") == "user"]
        return str((users or item or [{}])[-1].get("content", ""))
    raise EmbrmError(f"a prompt or completion must be a string or a list of chat messages, got {type(item).__name__}")


def trl_reward(source, *, settings: dict | None = None, asynchronous: bool = False, name: str = "embrm_reward",
               **load_options):
    """A TRL GRPOTrainer reward function (sync, or async for TRL's event loop) scoring with `source` (a model dir,
    a RewardModel or a server URL); `settings`: overrides of the model's (aggregation, lam, length_penalty, ...)."""
    scorer = reward_source(source, **load_options)

    def texts(prompts, completions):
        if len(prompts) != len(completions):
            raise EmbrmError(f"{len(prompts)} prompts for {len(completions)} completions: TRL passes one per "
                             f"completion")
        return [_content(p) for p in prompts], [_content(c) for c in completions]

    if asynchronous:
        async def reward(prompts, completions, **kwargs) -> list[float]:
            return await scorer.arewards(*texts(prompts, completions), settings)
    else:
        def reward(prompts, completions, **kwargs) -> list[float]:
            return scorer.rewards(*texts(prompts, completions), settings)
    reward.__name__ = reward.__qualname__ = name
    return reward


def _prompt_of(extra_info, i: int = 0) -> str:
    if isinstance(extra_info, dict):
        for key in PROMPT_KEYS:
            if isinstance(extra_info.get(key), str):
                return extra_info[key]
    raise EmbrmError(f"extra_info of sample {i} has no prompt: put it in the dataset's extra_info under one of "
                     f"{', '.join(PROMPT_KEYS)}")


def verl_reward(source, *, settings: dict | None = None, **load_options):
    """(compute_score, compute_score_batch) for verl, scoring with `source` (a model dir, RewardModel or URL)."""
    scorer = reward_source(source, **load_options)

    def compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, **kwargs) -> dict:
        return {"score": scorer.rewards([_prompt_of(extra_info)], [solution_str], settings)[0]}

    def compute_score_batch(data_sources=None, solution_strs=(), ground_truths=None, extra_infos=None,
                            **kwargs) -> list[dict]:
        infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
        prompts = [_prompt_of(info, i) for i, info in enumerate(infos)]
        return [{"score": r} for r in scorer.rewards(prompts, list(solution_strs), settings)]

    return compute_score, compute_score_batch


@functools.lru_cache(maxsize=1)
def _from_env():
    source = os.environ.get(REWARD_ENV)
    if not source:
        raise EmbrmError(f"${REWARD_ENV} is unset: export the model dir or the `embrm serve` URL to score with")
    return verl_reward(source)


def verl_compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, **kwargs) -> dict:
    """verl's per-sample reward (NaiveRewardManager) from the model or server in $EMBRM_REWARD."""
    return _from_env()[0](data_source, solution_str, ground_truth, extra_info, **kwargs)


def verl_compute_score_batch(data_sources=None, solution_strs=(), ground_truths=None, extra_infos=None,
                             **kwargs) -> list[dict]:
    """verl's batch reward (BatchRewardManager) from the model or server in $EMBRM_REWARD: one call per batch."""
    return _from_env()[1](data_sources, solution_strs, ground_truths, extra_infos, **kwargs)
