"""OpenAI-compatible `/embeddings` endpoint over httpx (OpenAI, vLLM, llama.cpp, Ollama, TEI...).

The API key is read from the environment variable named by `api_key_env` at request time; it never enters
spec(), logs or error messages.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import os
import random
import time

import numpy as np

from embrm.embedders.base import SPEC_VERSION, EmbedBatch, Embedder, check_positive_int, check_texts
from embrm.errors import EmbrmError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_RETRY_AFTER = 120.0  # seconds; a server asking for longer is treated as a failure after this wait


class OpenAIEmbedder(Embedder):
    """Embeddings from an OpenAI-compatible HTTP endpoint.

    Options: base_url (default $OPENAI_BASE_URL or the OpenAI API), api_key_env (name of the env var with the
    key; default OPENAI_API_KEY; optional for non-OpenAI hosts), dimensions, batch_size (texts per request),
    max_retries (on 408/409/429/5xx, timeouts and connection errors), timeout (seconds per request),
    backoff_base / backoff_max (seconds; exponential with jitter, Retry-After wins when the server sends it).
    """

    backend = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        dimensions: int | None = None,
        batch_size: int = 128,
        max_retries: int = 6,
        timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ):
        check_positive_int("dimensions", dimensions, allow_none=True)
        check_positive_int("batch_size", batch_size)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise EmbrmError(f"option max_retries={max_retries!r} is not valid: pass an integer >= 0")
        for name, value in (("timeout", timeout), ("backoff_base", backoff_base), ("backoff_max", backoff_max)):
            if not isinstance(value, (int, float)) or value < 0:
                raise EmbrmError(f"option {name}={value!r} is not valid: pass a number of seconds >= 0")
        self.model = model or DEFAULT_OPENAI_MODEL
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise EmbrmError(f"option base_url={self.base_url!r} is not valid: pass an http(s):// URL ending in /v1")
        self.api_key_env = api_key_env
        self.dimensions, self.batch_size, self.max_retries = dimensions, batch_size, max_retries
        self.timeout, self.backoff_base, self.backoff_max = float(timeout), float(backoff_base), float(backoff_max)
        self._client = None
        self._dim = dimensions
        self.requests = 0  # HTTP attempts made (retries included)

    def spec(self) -> dict:
        return {
            "spec_version": SPEC_VERSION,
            "backend": self.backend,
            "model": self.model,
            "base_url": self.base_url,
            "dimensions": self.dimensions,
            "encoding_format": "float",
            "normalize": False,  # as returned by the server
        }

    # -- HTTP ----------------------------------------------------------------------------------------
    def _key(self) -> str | None:
        key = os.environ.get(self.api_key_env) or None
        if key is None and self.base_url == DEFAULT_BASE_URL:
            raise EmbrmError(f"environment variable {self.api_key_env} is not set: export your OpenAI API key in it")
        return key

    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.timeout)
        return self._client

    def _post(self, body: dict) -> dict:
        import httpx

        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = f"{self.base_url}/embeddings"
        last, last_response = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(attempt, last_response)
            last_response = None
            self.requests += 1
            try:
                resp = self._http().post(url, json=body, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}"
                log.warning("embeddings request to %s failed (%s); attempt %d/%d", url, last, attempt + 1,
                            self.max_retries + 1)
                continue
            if resp.status_code == 200:
                return self._json(resp, url)
            if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                last, last_response = f"HTTP {resp.status_code}: {_message(resp, key)}", resp
                log.warning("embeddings request to %s got %s; attempt %d/%d", url, last, attempt + 1,
                            self.max_retries + 1)
                continue
            hint = f": check {self.api_key_env}" if resp.status_code in (401, 403) else ""
            raise EmbrmError(f"{url} returned HTTP {resp.status_code}: {_message(resp, key)}{hint}")
        attempts = self.max_retries + 1
        raise EmbrmError(f"{url} failed after {attempts} attempts ({last}): retry later or raise max_retries")

    def _sleep(self, attempt: int, resp) -> None:
        delay = _retry_after(resp) if resp is not None else None
        if delay is None:  # exponential backoff with jitter, so parallel clients do not retry in lockstep
            delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        time.sleep(min(delay, MAX_RETRY_AFTER))

    @staticmethod
    def _json(resp, url: str) -> dict:
        try:
            return resp.json()
        except ValueError:
            raise EmbrmError(f"{url} returned a non-JSON body: is base_url an OpenAI-compatible /v1 URL?") from None

    def _request(self, texts: list[str]) -> np.ndarray:
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        data = self._post(body).get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            got = len(data) if isinstance(data, list) else "no"
            raise EmbrmError(f"{self.base_url}/embeddings returned {got} embeddings for {len(texts)} texts")
        data = sorted(data, key=lambda d: d["index"])  # servers may answer out of order
        return np.stack([_vector(d["embedding"]) for d in data])

    # -- Embedder ------------------------------------------------------------------------------------
    def embed(self, texts: list[str], response_starts: list[int] | None = None) -> EmbedBatch:
        texts = check_texts(texts)
        n = len(texts)
        if n == 0:
            return EmbedBatch.build(np.zeros((0, self.dim)), [], [])
        parts = [self._request(texts[s : s + self.batch_size]) for s in range(0, n, self.batch_size)]
        dims = {p.shape[1] for p in parts}
        if len(dims) > 1:
            raise EmbrmError(f"{self.base_url}/embeddings returned vectors of different sizes {sorted(dims)}")
        self._dim = parts[0].shape[1]
        vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
        # usage is per request, not per text: token counts and truncation are unknown
        return EmbedBatch.build(vectors, np.full(n, -1), np.zeros(n, bool))

    @property
    def dim(self) -> int:
        if self._dim is None:  # one tiny request; the answer is remembered
            self._dim = self._request(["dimension probe"]).shape[1]
        return self._dim

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _vector(embedding) -> np.ndarray:
    if isinstance(embedding, str):  # servers that ignore encoding_format=float and send base64
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def _message(resp, key: str | None) -> str:
    """The server's error message on one line, with the key scrubbed in case the server echoes it."""
    try:
        err = resp.json().get("error", resp.json())
        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        msg = resp.text
    msg = " ".join(str(msg).split())[:300] or resp.reason_phrase
    return msg.replace(key, "***") if key else msg


def _retry_after(resp) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    if (ms := resp.headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
