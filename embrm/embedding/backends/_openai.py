"""OpenAI-compatible `/embeddings` endpoint over httpx (OpenAI, vLLM, llama.cpp, Ollama, TEI...).

The API key is read from the environment variable named by `api_key_env` at request time; it never enters
spec(), logs or error messages. Secrets are kept out by shape as well as by value: a base URL with a query string,
fragment or credentials (user:password@), or with a path segment shaped like a key or token, is refused without
being echoed, and every server text that reaches an error line or a log goes through _scrub first.

Every 200 reply is validated completely before anything is returned (a faulty server once sent index 0 for every
item, which filed the wrong vector under every text): a malformed reply raises one EmbrmError line and is not
retried, since it is a faulty server, not a transient error. As embed() returns all of its requests or nothing,
the cache never receives a vector from a bad batch. Each request has a total deadline (`timeout`: a server
trickling a byte a second never trips httpx's per-read timeout) and a cap on its decompressed size (gzip bombs).
"""

from __future__ import annotations

import base64
import contextvars
import email.utils
import json
import logging
import os
import random
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote, unquote

import numpy as np

from embrm.core import EmbrmError
from embrm.embedding.backends._base import (
    SPEC_VERSION,
    EmbedBatch,
    Embedder,
    check_positive_int,
    check_texts,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_RETRY_AFTER = 120.0  # seconds; a server asking for longer is treated as a failure after this wait
DEFAULT_TIMEOUT = 120.0  # seconds for a whole request (connect, send, wait, read): a slow CPU server's big batch fits
# Decompressed reply caps. A vector of 65,536 values (8x the widest embedding models) at ~32 bytes of JSON per value
# is 2 MiB, so a request of n texts may take 1 MiB + n x 2 MiB, and never more than 256 MiB (OpenAI's largest
# legitimate reply, 2048 inputs x 3072 dims x ~24 bytes, is ~150 MB): a gzip bomb stops there.
REPLY_BYTES_PER_TEXT = 2 * 2**20
MAX_REPLY_BYTES = 256 * 2**20
ERROR_BODY_BYTES = 64 * 2**10  # an error reply is shown cut to 300 characters: reading more is never needed
BAD_REPLY_FIX = "the server is not OpenAI-compatible or is faulty: check --base-url"
FLOAT32_MAX = float(np.finfo(np.float32).max)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what an Authorization header can carry
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("embrm_openai_deadline", default=None)


class _BadReply(Exception):
    """What is wrong with a 200 reply; _request turns it into one EmbrmError line naming the endpoint."""


@dataclass(frozen=True)
class _Reply:
    """One HTTP reply, its body read (and decompressed) within the caps."""

    status: int
    reason: str
    headers: object  # httpx.Headers: _retry_after reads it
    body: bytes
    cut: bool  # the body went on past the cap


class OpenAIEmbedder(Embedder):
    """Embeddings from an OpenAI-compatible HTTP endpoint.

    Options: base_url (default $OPENAI_BASE_URL or the OpenAI API), api_key_env (name of the env var with the
    key; default OPENAI_API_KEY; optional for non-OpenAI hosts), dimensions, batch_size (texts per request),
    max_retries (on 408/409/429/5xx, timeouts and connection errors), timeout (seconds for a whole request:
    connect, send, wait and read together; default 120), backoff_base / backoff_max (seconds; exponential with
    jitter, Retry-After wins when the server sends it), max_reply_bytes (ceiling on a decompressed reply; default
    256 MiB, and 1 MiB + 2 MiB per text below that).
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
        timeout: float = DEFAULT_TIMEOUT,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ):
        check_positive_int("dimensions", dimensions, allow_none=True)
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_reply_bytes", max_reply_bytes)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise EmbrmError(f"option max_retries={max_retries!r} is not valid: pass an integer >= 0")
        for name, value in (("timeout", timeout), ("backoff_base", backoff_base), ("backoff_max", backoff_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise EmbrmError(f"option {name}={value!r} is not valid: pass a number of seconds >= 0")
        if not timeout:
            raise EmbrmError("option timeout=0 is not valid: pass the seconds a whole request may take (> 0)")
        if not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env):  # not echoed: may be the key
            raise EmbrmError("option api_key_env is not an environment variable name (letters, digits, _): pass the "
                             "name of the variable that holds the key, not the key itself", field="api_key_env")
        self.model = model or DEFAULT_OPENAI_MODEL
        self.api_key_env = api_key_env
        _check_key(os.environ.get(api_key_env) or None, api_key_env)
        self.base_url = self._base_url(base_url)
        self.endpoint = f"{self.base_url}/embeddings"
        self.dimensions, self.batch_size, self.max_retries = dimensions, batch_size, max_retries
        self.timeout, self.backoff_base, self.backoff_max = float(timeout), float(backoff_base), float(backoff_max)
        self.max_reply_bytes = max_reply_bytes
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
        """The endpoint root, checked by _check_url before it can reach spec() (so the cache fingerprint, every
        cache part and model manifests) or an error line."""
        source = "option base_url" if base_url else "$OPENAI_BASE_URL"
        url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        _check_url(url, os.environ.get(self.api_key_env) or None, source, self.api_key_env)
        return url

    # -- HTTP ----------------------------------------------------------------------------------------
    def _key(self) -> str | None:
        key = os.environ.get(self.api_key_env) or None
        _check_key(key, self.api_key_env)  # the variable may have been set after __init__
        _refuse_key_in(self.base_url, key, self.api_key_env)
        if key is None and self.base_url == DEFAULT_BASE_URL:
            raise EmbrmError(f"environment variable {self.api_key_env} is not set: export your OpenAI API key in it")
        return key

    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.timeout)
            _bound_by_deadline(self._client)
        return self._client

    def _post(self, body: dict, cap: int):
        """The parsed JSON body of a 200 reply (any JSON value), after retrying transient failures."""
        import httpx

        key = self._key()
        headers = {"Accept-Encoding": "gzip, deflate"}  # the encodings _read inflates within the cap
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url, attempts = self.endpoint, self.max_retries + 1
        last, last_reply = "", None
        for attempt in range(attempts):
            if attempt:
                self._sleep(attempt, last_reply)
            last_reply = None
            self.requests += 1
            try:
                reply = self._exchange(body, headers, cap)
            except httpx.TimeoutException:
                last = f"no complete reply within {self.timeout:g} s"
            except httpx.TransportError as e:
                last = type(e).__name__  # the name only: exception texts may quote what the server sent
            else:
                if reply.status == 200:
                    if reply.cut:
                        raise _BadReply(f"the reply is larger than {_size(cap)} once decompressed")
                    return _body(reply.body)
                message = _message(reply, key)
                if reply.status not in RETRY_STATUS and reply.status < 500:
                    hint = f": check {self.api_key_env}" if reply.status in (401, 403) else ""
                    raise EmbrmError(f"{url} returned HTTP {reply.status}: {message}{hint}")
                last, last_reply = f"HTTP {reply.status}: {message}", reply
            log.warning("embeddings request to %s failed (%s); attempt %d/%d", url, last, attempt + 1, attempts)
        raise EmbrmError(f"{url} failed after {attempts} attempts ({last}): retry later or raise max_retries")

    def _exchange(self, body: dict, headers: dict, cap: int) -> _Reply:
        """One request, all of it (connect, send, wait, read) within `timeout` seconds; httpx errors propagate."""
        deadline = time.monotonic() + self.timeout
        token = _DEADLINE.set(deadline)  # read by the client's network streams (_bound_by_deadline)
        try:
            with self._http().stream("POST", self.endpoint, json=body, headers=headers) as resp:
                try:
                    raw, cut = _read(resp, cap if resp.status_code == 200 else ERROR_BODY_BYTES, deadline)
                except _BadReply:
                    if resp.status_code == 200:
                        raise
                    raw, cut = b"", False  # an error reply's body is only ever shown: the reason phrase will do
                return _Reply(resp.status_code, resp.reason_phrase, resp.headers, raw, cut)
        finally:
            _DEADLINE.reset(token)

    def _sleep(self, attempt: int, reply) -> None:
        delay = _retry_after(reply) if reply is not None else None
        if delay is None:  # exponential backoff with jitter, so parallel clients do not retry in lockstep
            delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        time.sleep(min(delay, MAX_RETRY_AFTER))

    def _request(self, texts: list[str]) -> np.ndarray:
        """One request: the (len(texts), d) float32 rows in input order, or EmbrmError if the reply is bad."""
        body = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        cap = min(self.max_reply_bytes, 2**20 + len(texts) * REPLY_BYTES_PER_TEXT)
        try:
            vectors = _vectors(self._post(body, cap), len(texts))
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


def _body(raw: bytes):
    try:
        return json.loads(raw)
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


# -- secrets --------------------------------------------------------------------------------------------------

# Credential shapes, each with what replaces it. Over-scrubbing a server's message costs a word; under-scrubbing
# prints a key, so the shapes are generous: anything after Bearer/Basic/Token; the value of a name=value or name:
# value pair whose name says key/token/secret/password/auth; well-known key prefixes (sk-, hf_, gsk_...); JWTs;
# long tokens mixing upper case, lower case and digits; long hex strings.
_TOKEN_PREFIX = r"sk-|sk_|pk_|rk_|hf_|ghp_|gho_|github_pat_|gsk_|glpat-|nvapi-|jina_|xai-|key-|api[-_]?key[-_]"
_SECRET_SHAPES = [
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[^\s\"',;]+"), r"\1\2***"),
    (re.compile(r"(?i)([\w-]*(?:key|token|secret|passw|pwd|signature|auth)[\w-]*[\"']?\s*[=:]\s*[\"']?)"
                r"[^\s\"'&,;}]+"), r"\1***"),
    (re.compile(rf"(?i)(?<![\w-])(?:{_TOKEN_PREFIX})[\w.-]{{6,}}"), "***"),
    (re.compile(r"(?<![\w.-])(?:eyJ[\w-]*|[\w-]{8,})\.[\w-]{8,}\.[\w-]{8,}"), "***"),
    (re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{20,}"
                r"(?![A-Za-z0-9])"), "***"),
    (re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-f]{40,}|[0-9A-F]{40,})(?![0-9A-Za-z])"), "***"),
]


def _scrub(text: str, key: str | None) -> str:
    """The text with the key's value (as is and URL-encoded) and anything shaped like a credential replaced by
    ***: every server text and URL goes through here before it reaches an error line or a log."""
    if key:
        text = text.replace(key, "***").replace(quote(key, safe=""), "***")
    for shape, replacement in _SECRET_SHAPES:
        text = shape.sub(replacement, text)
    return text


def _check_key(key: str | None, env: str) -> None:
    """The key goes in an HTTP header: a space, line break, control or non-ASCII character cannot (httpx would
    raise mid-request, and CR/LF would split the header). Named by its variable, never shown."""
    if key is not None and not _HEADER_SAFE.fullmatch(key):
        raise EmbrmError(f"environment variable {env} holds a key with a space, line break, control or non-ASCII "
                         f"character, which no HTTP header can carry: export the key alone (printable ASCII, no "
                         f"quotes, no trailing newline)", field="api_key_env")


def _check_url(url: str, key: str | None, source: str, env: str) -> None:
    """Refuse a base URL that carries a secret or anything shaped like one: it would reach spec(), so the cache
    fingerprint and manifests, and error lines. Nothing that may hold the secret is echoed."""
    fix = f"pass the key through --api-key-env (the name of the environment variable holding it, now {env})"
    if "?" in url or "#" in url:
        raise EmbrmError(f"{source}: the base URL carries a query string or fragment, where keys hide: remove it "
                         f"and {fix}", field="base_url")
    if "@" in url:  # anywhere: an unencoded '/' in a password hides where userinfo ends
        raise EmbrmError(f"{source} {_scrub(_redact(url), key)} carries credentials (user:password@): remove them "
                         f"and {fix}", field="base_url")
    _refuse_key_in(url, key, env)
    path = url.split("://", 1)[-1].partition("/")[2]
    if any(_scrub(form, None) != form for form in (path, unquote(path))):
        raise EmbrmError(f"{source}: a path segment of the base URL is shaped like a key or token: remove it and "
                         f"{fix}", field="base_url")
    _check_http_url(url, key, source)


def _check_http_url(url: str, key: str | None, source: str) -> None:
    import httpx

    fix = "pass an http(s)://host[:port]/... URL ending in /v1"
    try:
        parsed = httpx.URL(url)
        valid = parsed.scheme in ("http", "https") and parsed.host and 0 < (parsed.port or 80) < 65536
        valid = valid and not re.search(r"\s", url)  # httpx would send a space as %20, in the host too
    except httpx.InvalidURL:  # a control character, a bad port
        valid = False
    if not valid:
        raise EmbrmError(f"{source}={_scrub(url, key)!r} is not valid: {fix}", field="base_url")


def _refuse_key_in(url: str, key: str | None, env: str) -> None:
    """A base URL carrying the key's value (in a path, where no shape gives it away) would put it in spec(), the
    cache and every error. Short values are not checked: local servers take any key ("EMPTY", "1"), which may well
    occur in a URL."""
    if key and len(key) >= 16 and (key in url or quote(key, safe="") in url):
        raise EmbrmError(f"base_url contains the value of ${env} (the API key): remove it from the URL; the key is "
                         f"sent in the Authorization header", field="base_url")


def _redact(url: str) -> str:
    """The scheme and host of a URL with user:password replaced by ***."""
    start = url.find("://") + 3 if "://" in url else 0
    return url[:start] + "***" + url[url.rindex("@"):].partition("/")[0]


def _message(reply: _Reply, key: str | None) -> str:
    """The server's error message (or else its reason phrase) on one line, scrubbed."""
    try:
        doc = json.loads(reply.body)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, RecursionError):
        msg = reply.body.decode("utf-8", "replace")
    msg = _one_line(str(msg)) or _one_line(reply.reason) or "no message"
    return _scrub(msg, key)[:300]  # scrubbed before the cut: a key split at the cut would leak in part


def _one_line(text: str) -> str:
    """Printable characters only (a server's terminal escapes and line breaks stay out of the error line)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


# -- bounded reads: a total deadline and a decompressed-size cap ------------------------------------------------


def _read(resp, cap: int, deadline: float) -> tuple[bytes, bool]:
    """The body, decompressed a network chunk at a time, never more than cap + 1 bytes held: (at most cap bytes,
    whether the body went on past them). _BadReply for an encoding other than gzip/deflate or a corrupt one."""
    import httpx

    inflate = _inflater(resp.headers.get("content-encoding", ""))
    out = bytearray()
    try:
        for chunk in resp.iter_raw():
            if time.monotonic() > deadline:  # the network streams check too (_bound_by_deadline); this covers all
                raise httpx.ReadTimeout("the request's deadline passed")
            while chunk:
                room = cap + 1 - len(out)  # >= 1 here, and 0 would mean "no limit" to zlib
                piece, chunk = (inflate.decompress(chunk, room), inflate.unconsumed_tail) if inflate else (chunk, b"")
                out += piece[:room]
                if len(out) > cap:
                    return bytes(out[:cap]), True
    except zlib.error:
        raise _BadReply("the body is not valid gzip/deflate") from None
    return bytes(out), False


def _inflater(encoding: str):
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
    raise _BadReply("its Content-Encoding is not gzip, deflate or identity (only those are asked for)")


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


def _remaining(timeout: float | None, error: str) -> float | None:
    """The per-operation timeout cut to what is left of the current request's deadline; past it, httpcore's
    `error` (httpx maps it to its own timeout, which _post retries)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        import httpcore

        raise getattr(httpcore, error)("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream:
    """A network stream whose every read, write and TLS handshake stops at the current request's deadline."""

    def __init__(self, inner):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _remaining(timeout, "ReadTimeout"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), 65536):  # pieces: one slow send of a big body cannot outlive the deadline
            self._inner.write(buffer[start : start + 65536], _remaining(timeout, "WriteTimeout"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        timeout = _remaining(timeout, "ConnectTimeout")
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _DeadlineBackend:
    """httpcore network backend that hands out _DeadlineStreams."""

    def __init__(self, inner):
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = _remaining(timeout, "ConnectTimeout")
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = _remaining(timeout, "ConnectTimeout")
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bound_by_deadline(client) -> None:
    """Every socket operation of the client's connection pools (proxies' included) stops at the deadline.

    httpx's timeouts are per operation: a server trickling a byte a second never trips them, in the headers as in
    the body. httpx has no public hook for the network layer, so the pools' backend is wrapped where it is found;
    should a later httpx move it, _read still bounds the body (tests/embedding/test_endpoint_hostile.py notices)."""
    for transport in (client._transport, *client._mounts.values()):
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _DeadlineBackend(pool._network_backend)


# -- retries ----------------------------------------------------------------------------------------------------


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
