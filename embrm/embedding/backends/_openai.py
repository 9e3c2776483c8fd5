"""OpenAI-compatible `/embeddings` endpoint over httpx (OpenAI, vLLM, llama.cpp, Ollama, TEI...).

The API key is read from the environment variable named by `api_key_env` at request time; it never enters
spec(), logs or error messages, and a base URL with credentials in it (user:password@) is refused.

Every 200 reply is validated completely before anything is returned (a faulty server once sent index 0 for every
item, which filed the wrong vector under every text): a malformed reply raises one EmbrmError line and is not
retried, since it is a faulty server, not a transient error. As embed() returns all of its requests or nothing,
the cache never receives a vector from a bad batch.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import os
import random
import re
import time
from collections import Counter

import numpy as np

from embrm.core import EmbrmError
from embrm.embedding.backends._base import SPEC_VERSION, EmbedBatch, Embedder, check_positive_int, check_texts

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_RETRY_AFTER = 120.0  # seconds; a server asking for longer is treated as a failure after this wait
BAD_REPLY_FIX = "the server is not OpenAI-compatible or is faulty: check --base-url"
FLOAT32_MAX = float(np.finfo(np.float32).max)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _BadReply(Exception):
    """What is wrong with a 200 reply; _request turns it into one EmbrmError line naming the endpoint."""


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
        if not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env):  # not echoed: may be the key
            raise EmbrmError("option api_key_env is not an environment variable name (letters, digits, _): pass the "
                             "name of the variable that holds the key, not the key itself")
        self.model = model or DEFAULT_OPENAI_MODEL
        self.api_key_env = api_key_env
        self.base_url = self._base_url(base_url)
        self.endpoint = f"{self.base_url}/embeddings"
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

    def _base_url(self, base_url: str | None) -> str:
        """The endpoint root. Credentials in it are refused: they would reach spec() (so the cache fingerprint,
        every cache part and model manifests) and error messages, and httpx would send them as Basic auth in
        place of the Bearer key."""
        source = "option base_url" if base_url else "$OPENAI_BASE_URL"
        url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if "@" in url:  # anywhere: an unencoded '/', '?' or '#' in a password hides where userinfo ends
            raise EmbrmError(f"{source} {_redact(url)} contains credentials (user:password@): remove them and export "
                             f"the key in the environment variable named by --api-key-env ({self.api_key_env})")
        key = os.environ.get(self.api_key_env)
        _refuse_key_in(url, key, self.api_key_env)
        if not url.startswith(("http://", "https://")):
            raise EmbrmError(f"{source}={_scrub(url, key)!r} is not valid: pass an http(s):// URL ending in /v1")
        return url

    # -- HTTP ----------------------------------------------------------------------------------------
    def _key(self) -> str | None:
        key = os.environ.get(self.api_key_env) or None
        _refuse_key_in(self.base_url, key, self.api_key_env)  # the variable may have been set after __init__
        if key is None and self.base_url == DEFAULT_BASE_URL:
            raise EmbrmError(f"environment variable {self.api_key_env} is not set: export your OpenAI API key in it")
        return key

    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.timeout)
        return self._client

    def _post(self, body: dict):
        """The parsed JSON body of a 200 reply (any JSON value), after retrying transient failures."""
        import httpx

        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = self.endpoint
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
                return _body(resp)
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

    def _request(self, texts: list[str]) -> np.ndarray:
        """One request: the (len(texts), d) float32 rows in input order, or EmbrmError if the reply is bad."""
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        try:
            vectors = _vectors(self._post(body), len(texts))
            self._check_dim(vectors.shape[1])
        except _BadReply as e:
            raise EmbrmError(f"{self.endpoint} returned a bad reply ({e}): {BAD_REPLY_FIX}") from None
        self._dim = vectors.shape[1]
        return vectors

    def _check_dim(self, d: int) -> None:
        """Every reply of one embedder has the size asked for (dimensions) or else the size of the first one."""
        if self._dim is not None and d != self._dim:
            why = f"dimensions={self.dimensions} requested" if self.dimensions else "in earlier replies"
            raise _BadReply(f"vectors have {d} values, not {self._dim} as {why}")

    # -- Embedder ------------------------------------------------------------------------------------
    def embed(self, texts: list[str], response_starts: list[int] | None = None) -> EmbedBatch:
        texts = check_texts(texts)
        n = len(texts)
        if n == 0:
            return EmbedBatch.build(np.zeros((0, self.dim)), [], [])
        # All requests first: one bad reply raises and returns nothing, so the caller caches nothing of this call.
        parts = [self._request(texts[s : s + self.batch_size]) for s in range(0, n, self.batch_size)]
        vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]  # same size: _request checked
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


# -- reply validation: nothing in a reply is trusted --------------------------------------------------------


def _body(resp):
    try:
        return resp.json()
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise _BadReply("the body is not JSON") from None


def _vectors(payload, n: int) -> np.ndarray:
    """The (n, d) float32 rows of a reply in input order, or _BadReply naming the first problem.

    An `index` must be a JSON integer: 1.0 is refused (as is true), since a compatible server writes integers and
    a float means a serializer that cannot be trusted with the rest either.
    """
    data = _data(payload, n)
    indexes, rows = zip(*(_item(k, item, n) for k, item in enumerate(data)))
    order = _order(indexes, n)
    sizes = [len(row) for row in rows]
    common = Counter(sizes).most_common(1)[0][0]
    if (odd := next((k for k, size in enumerate(sizes) if size != common), None)) is not None:
        raise _BadReply(f"item {odd} has {sizes[odd]} values where the others have {common}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: reported just below
        matrix = np.asarray(rows, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise _BadReply(f"item {bad[0]}: 'embedding' has non-finite values (NaN, infinity or beyond float32)")
    return matrix[order]  # servers may answer out of order; fancy indexing copies into a C-contiguous array


def _data(payload, n: int) -> list:
    if not isinstance(payload, dict):
        raise _BadReply(f"the body is {_kind(payload)}, not a JSON object")
    if "data" not in payload:
        raise _BadReply("the body has no 'data' list")
    data = payload["data"]
    if not isinstance(data, list):
        raise _BadReply(f"'data' is {_kind(data)}, not a list")
    if len(data) != n:
        raise _BadReply(f"'data' has {len(data)} items for {n} texts sent")
    return data


def _item(k: int, item, n: int) -> tuple[int, list | np.ndarray]:
    """(index, row) of reply item k; the row is a list of ints/floats or a float32 array, not yet converted."""
    if not isinstance(item, dict):
        raise _BadReply(f"item {k} is {_kind(item)}, not an object")
    index = item.get("index")
    if type(index) is not int:  # not bool (an int subclass), not 1.0
        raise _BadReply(f"item {k} has no integer 'index' (it is {_kind(index) if 'index' in item else 'missing'})")
    if not 0 <= index < n:
        shown = index if abs(index) < 10**18 else "huge"  # str() of a 5000-digit int raises
        raise _BadReply(f"item {k} has index {shown}, outside 0..{n - 1}")
    if "embedding" not in item:
        raise _BadReply(f"item {k} has no 'embedding'")
    return index, _row(k, item["embedding"])


def _row(k: int, embedding) -> list | np.ndarray:
    if isinstance(embedding, str):  # servers that ignore encoding_format=float and send base64
        try:
            raw = base64.b64decode(embedding, validate=True)
        except ValueError:  # binascii.Error, non-ASCII
            raise _BadReply(f"item {k}: 'embedding' is a string but not base64") from None
        if len(raw) % 4:
            raise _BadReply(f"item {k}: base64 'embedding' has {len(raw)} bytes, not a multiple of 4 (float32)")
        row = np.frombuffer(raw, dtype="<f4")
    elif isinstance(embedding, list):
        _check_numbers(k, embedding)
        row = embedding
    else:
        raise _BadReply(f"item {k}: 'embedding' is {_kind(embedding)}, not a list of numbers or a base64 string")
    if not len(row):
        raise _BadReply(f"item {k}: 'embedding' is empty")
    return row


def _check_numbers(k: int, values: list) -> None:
    """Only JSON numbers: numpy would silently turn "0.5" into 0.5, null into NaN and true into 1."""
    kinds = set(map(type, values))  # one C-level pass; the search below runs only on a bad reply
    if not kinds <= {float, int}:
        bad = next(v for v in values if type(v) not in (float, int))
        raise _BadReply(f"item {k}: 'embedding' contains {_kind(bad)}")
    if int in kinds and any(abs(v) > FLOAT32_MAX for v in values if type(v) is int):  # np.asarray would raise
        raise _BadReply(f"item {k}: 'embedding' has non-finite values (NaN, infinity or beyond float32)")


def _order(indexes: tuple[int, ...], n: int) -> np.ndarray:
    """Reply positions in index order; the indexes (all in 0..n-1 by now) must be a permutation."""
    index = np.asarray(indexes, dtype=np.int64)
    counts = np.bincount(index, minlength=n)
    if counts.max() > 1:
        dup = int(counts.argmax())
        raise _BadReply(f"indexes are not a permutation of 0..{n - 1} (index {dup} appears {counts[dup]} times)")
    return np.argsort(index)


def _kind(value) -> str:
    """A JSON value's type in words: never the value itself, which a server could fill with anything."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a bool", int: "an integer",
             float: "a float", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


# -- secrets and retries ------------------------------------------------------------------------------------


def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _refuse_key_in(url: str, key: str | None, env: str) -> None:
    """A base URL carrying the key itself (?api_key=...) would put it in spec(), the cache and every error.

    Short values are not checked: local servers take any key ("EMPTY", "1"), which may well occur in a URL."""
    if key and len(key) >= 16 and key in url:
        raise EmbrmError(f"base_url contains the value of ${env} (the API key): remove it from the URL; the key is "
                         f"sent in the Authorization header")


def _redact(url: str) -> str:
    """The URL with everything between the scheme and its last '@' (user:password) replaced by ***."""
    start = url.find("://") + 3 if "://" in url else 0
    return url[:start] + "***" + url[url.rindex("@"):]


def _message(resp, key: str | None) -> str:
    """The server's error message on one line, with the key scrubbed in case the server echoes it."""
    try:
        err = resp.json().get("error", resp.json())
        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError, RecursionError):
        msg = resp.text
    # scrub before cutting: a key split at the cut would otherwise leak in part
    return _scrub(" ".join(str(msg).split()), key)[:300] or resp.reason_phrase


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
