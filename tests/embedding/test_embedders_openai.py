"""OpenAI-compatible backend against a real local HTTP server with injected failures."""

import base64
import hashlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import polars as pl
import pytest

from embrm.core._errors import EmbrmError
from embrm.embedding._cache import EmbeddingCache
from embrm.embedding._embed import DEFAULT_TEMPLATE, EmbedderConfig, cache_spec, embed_dataset
from embrm.embedding.backends import make_embedder
from embrm.embedding.backends._openai import _retry_after

KEY = "sk-test-SECRET-0123456789"
DIM = 8


def vector(text: str, dim: int = DIM) -> list[float]:
    """Deterministic embedding: bytes of a hash of the text."""
    raw = hashlib.blake2b(text.encode(), digest_size=dim).digest()
    return [b / 255 - 0.5 for b in raw]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            action = server.script.pop(0) if server.script else "ok"
        try:
            self.respond(action, body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
            pass

    def respond(self, action, body):
        if action == "slow":
            time.sleep(0.5)
        if action in ("429", "500", "401", "400"):
            status = int(action)
            echo = f" for key {KEY}" if action == "401" else ""  # real servers echo (masked) keys
            payload = {"error": {"message": f"injected {action}{echo}"}}
            headers = {"Retry-After": "0"} if action == "429" else {}
            return self.send(status, payload, headers)
        texts = body["input"]
        dim = body.get("dimensions", DIM) + (action == "wrong-dim")
        data = [{"object": "embedding", "index": i, "embedding": vector(t, dim)} for i, t in enumerate(texts)]
        payload = {"object": "list", "data": data[::-1], "model": body["model"]}  # reversed on purpose
        self.send(200, REPLIES[action](payload) if action in REPLIES else payload)

    def send(self, status, payload, headers=None):
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()  # NaN/Infinity literals too
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def edit(change):
    """A reply action: change(data) edits the good reply's items in place (data[0] is the last text)."""
    def apply(payload):
        change(payload["data"])
        return payload
    return apply


def set_all(field, value):
    return edit(lambda data: [item.update({field: value(item)}) for item in data])


def set_first(field, value):
    return edit(lambda data: data[0].update({field: value(data[0])}))


def b64(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


# Scripted 200 replies: valid variants first, then the malformed ones a faulty or non-compatible server sends.
REPLIES = {
    "base64": set_all("embedding", lambda item: b64(item["embedding"])),
    "int-values": set_all("embedding", lambda item: [0, *item["embedding"][1:]]),
    "index-all-0": set_all("index", lambda item: 0),
    "short-vector": set_first("embedding", lambda item: item["embedding"][:-1]),
    "null-embedding": set_first("embedding", lambda item: None),
    "string-values": set_first("embedding", lambda item: [str(v) for v in item["embedding"]]),
    "bad-base64": set_first("embedding", lambda item: "not*base64!"),
    "base64-odd-length": set_first("embedding", lambda item: base64.b64encode(b"\0" * 6).decode()),
    "list-body": lambda payload: payload["data"],
    "missing-index": edit(lambda data: data[1].pop("index")),
    "missing-embedding": edit(lambda data: data[0].pop("embedding")),
    "non-json": lambda payload: b"<html>sign in</html>",
    "no-data": lambda payload: {"object": "list"},
    "data-not-list": lambda payload: {"data": {str(item["index"]): item for item in payload["data"]}},
    "item-not-object": edit(lambda data: data.__setitem__(0, data[0]["embedding"])),
    "nan": set_first("embedding", lambda item: [math.nan, *item["embedding"][1:]]),
    "infinity": set_first("embedding", lambda item: [-math.inf, *item["embedding"][1:]]),
    "float32-overflow": set_first("embedding", lambda item: [1e39, *item["embedding"][1:]]),
    "huge-int": set_first("embedding", lambda item: [10**400, *item["embedding"][1:]]),
    "empty-vectors": set_all("embedding", lambda item: []),
    "bool-values": set_first("embedding", lambda item: [True, *item["embedding"][1:]]),
    "nested": set_first("embedding", lambda item: [item["embedding"]]),
    "too-many": edit(lambda data: data.append({**data[0], "index": len(data)})),
    "too-few": edit(lambda data: data.pop()),
    "duplicate-index": edit(lambda data: data[0].update(index=data[1]["index"])),
    "out-of-range-index": set_first("index", lambda item: 3),
    "negative-index": set_first("index", lambda item: -1),
    "float-index": set_all("index", lambda item: float(item["index"])),
    "bool-index": set_first("index", lambda item: True),
    "string-index": set_first("index", lambda item: str(item["index"])),
}


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.lock, srv.requests, srv.script = threading.Lock(), [], []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("EMBRM_TEST_KEY", KEY)
    return "EMBRM_TEST_KEY"


def client(server, key, **options):
    options = {"base_url": server.url, "api_key_env": key, "backoff_base": 0.001, "timeout": 0.2, **options}
    return make_embedder("openai", "test-embed", **options)


def test_order_batching_and_auth(server, key):
    texts = [f"text number {i}" for i in range(5)]
    emb = client(server, key, batch_size=2)
    batch = emb.embed(texts)
    np.testing.assert_array_equal(batch.vectors, np.array([vector(t) for t in texts], dtype=np.float32))
    assert batch.vectors.dtype == np.float32 and batch.vectors.flags.c_contiguous
    assert batch.n_tokens.tolist() == [-1] * 5 and batch.n_tokens.dtype == np.int32 and not batch.truncated.any()
    assert [r["body"]["input"] for r in server.requests] == [texts[0:2], texts[2:4], texts[4:5]]
    assert {r["path"] for r in server.requests} == {"/v1/embeddings"}
    assert {r["auth"] for r in server.requests} == {f"Bearer {KEY}"}
    assert emb.dim == DIM and len(server.requests) == 3  # dim known from the answer: no extra request
    emb.close()


def test_retries_on_429_500_and_timeout(server, key):
    server.script = ["429", "500", "slow"]
    emb = client(server, key)
    batch = emb.embed(["a", "b"])
    np.testing.assert_array_equal(batch.vectors, np.array([vector("a"), vector("b")], dtype=np.float32))
    assert len(server.requests) == 4 and emb.requests == 4


def test_connection_errors_are_retried_then_reported(key):
    emb = make_embedder("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env=key, max_retries=2,
                        backoff_base=0.001, timeout=0.5)
    with pytest.raises(EmbrmError, match="failed after 3 attempts") as info:
        emb.embed(["x"])
    assert emb.requests == 3 and KEY not in str(info.value)


def test_gives_up_after_max_retries(server, key):
    server.script = ["500"] * 10
    with pytest.raises(EmbrmError, match=r"failed after 3 attempts \(HTTP 500: injected 500\)"):
        client(server, key, max_retries=2).embed(["x"])
    assert len(server.requests) == 3


def test_401_is_one_line_without_the_key(server, key):
    server.script = ["401"]
    emb = client(server, key)
    with pytest.raises(EmbrmError, match="HTTP 401") as info:
        emb.embed(["x"])
    message = str(info.value)
    assert KEY not in message and "\n" not in message and "EMBRM_TEST_KEY" in message
    assert len(server.requests) == 1  # not retried
    assert KEY not in json.dumps(emb.spec()) and KEY not in repr(emb)


def test_400_carries_server_message(server, key):
    server.script = ["400"]
    with pytest.raises(EmbrmError, match="HTTP 400: injected 400"):
        client(server, key).embed(["x"])


def test_dimensions_sent_and_in_spec(server, key):
    emb = client(server, key, dimensions=4)
    assert emb.spec()["dimensions"] == 4 and emb.dim == 4 and not server.requests  # known without a request
    assert emb.embed(["x"]).vectors.shape == (1, 4)
    assert server.requests[0]["body"]["dimensions"] == 4


def test_spec_and_options(server, key, monkeypatch):
    emb = client(server, key)
    assert emb.spec()["base_url"] == server.url and emb.spec()["model"] == "test-embed"
    assert emb.dim == DIM and len(server.requests) == 1  # probed once when unknown
    monkeypatch.setenv("OPENAI_BASE_URL", "http://example.invalid/v1/")
    assert make_embedder("openai").spec()["base_url"] == "http://example.invalid/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EmbrmError, match="OPENAI_API_KEY is not set"):
        make_embedder("openai").embed(["x"])
    with pytest.raises(EmbrmError, match="max_retries"):
        make_embedder("openai", max_retries=-1)
    with pytest.raises(EmbrmError, match="base_url"):
        make_embedder("openai", base_url="localhost:8000")


def test_retry_after_forms():
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "2"})) == 2.0
    assert _retry_after(httpx.Response(429, headers={"retry-after-ms": "250", "Retry-After": "9"})) == 0.25
    date = _retry_after(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert date == 0.0  # a date in the past: retry now
    assert _retry_after(httpx.Response(500)) is None


# -- reply integrity: every malformed 200 reply is one line naming the endpoint, never retried -----------------

FIX = "the server is not OpenAI-compatible or is faulty: check --base-url"
TEXTS = ["a", "b", "c"]
NON_FINITE = "item 0: 'embedding' has non-finite values (NaN, infinity or beyond float32)"
MALFORMED = {  # action -> what the error must say (reply items are reversed: item 0 is text "c")
    "index-all-0": "indexes are not a permutation of 0..2 (index 0 appears 3 times)",
    "short-vector": "item 0 has 7 values where the others have 8",
    "null-embedding": "item 0: 'embedding' is null, not a list of numbers or a base64 string",
    "string-values": "item 0: 'embedding' contains a string",
    "bad-base64": "item 0: 'embedding' is a string but not base64",
    "base64-odd-length": "item 0: base64 'embedding' has 6 bytes, not a multiple of 4 (float32)",
    "list-body": "the body is an array, not a JSON object",
    "missing-index": "item 1 has no integer 'index' (it is missing)",
    "missing-embedding": "item 0 has no 'embedding'",
    "non-json": "the body is not JSON",
    "no-data": "the body has no 'data' list",
    "data-not-list": "'data' is an object, not a list",
    "item-not-object": "item 0 is an array, not an object",
    "nan": NON_FINITE,
    "infinity": NON_FINITE,
    "float32-overflow": NON_FINITE,
    "huge-int": NON_FINITE,
    "empty-vectors": "item 0: 'embedding' is empty",
    "bool-values": "item 0: 'embedding' contains a bool",
    "nested": "item 0: 'embedding' contains an array",
    "too-many": "'data' has 4 items for 3 texts sent",
    "too-few": "'data' has 2 items for 3 texts sent",
    "duplicate-index": "indexes are not a permutation of 0..2 (index 1 appears 2 times)",
    "out-of-range-index": "item 0 has index 3, outside 0..2",
    "negative-index": "item 0 has index -1, outside 0..2",
    "float-index": "item 0 has no integer 'index' (it is a float)",  # 1.0 is refused on purpose
    "bool-index": "item 0 has no integer 'index' (it is a bool)",
    "string-index": "item 0 has no integer 'index' (it is a string)",
    "wrong-dim": "vectors have 9 values, not 8 as in earlier replies",
}


def table(n: int) -> pl.DataFrame:
    """A responses table of n answers to one prompt "p"."""
    return pl.DataFrame({"prompt_id": ["q"] * n, "response_id": [f"a{i}" for i in range(n)], "prompt": ["p"] * n,
                         "response": [f"r{i}" for i in range(n)]})


def assert_one_line_bad_reply(server, message: str, what: str) -> None:
    assert message == f"{server.url}/embeddings returned a bad reply ({what}): {FIX}"
    assert "\n" not in message and KEY not in message and "Traceback" not in message


@pytest.mark.parametrize("action", list(MALFORMED))
def test_malformed_reply_is_one_line_error_and_not_retried(server, key, action):
    server.script = ["ok", action] if action == "wrong-dim" else [action]  # an earlier batch fixes the dim
    emb = client(server, key)
    if action == "wrong-dim":
        emb.embed(["first batch"])
    with pytest.raises(EmbrmError) as info:
        emb.embed(TEXTS)
    assert_one_line_bad_reply(server, str(info.value), MALFORMED[action])
    assert len(server.requests) == (2 if action == "wrong-dim" else 1)  # the bad reply was not retried
    assert emb.requests == len(server.requests)


def test_all_index_zero_files_nothing_for_40_texts(server, key):
    """The measured defect: every item said index 0 and the wrong vector went under 40 of 40 texts."""
    server.script = ["index-all-0"]
    with pytest.raises(EmbrmError) as info:
        client(server, key).embed([f"text {i}" for i in range(40)])
    assert_one_line_bad_reply(server, str(info.value),
                              "indexes are not a permutation of 0..39 (index 0 appears 40 times)")


def test_requested_dimensions_are_checked(server, key):
    server.script = ["wrong-dim"]
    with pytest.raises(EmbrmError) as info:
        client(server, key, dimensions=4).embed(TEXTS)
    assert_one_line_bad_reply(server, str(info.value), "vectors have 5 values, not 4 as dimensions=4 requested")
    assert len(server.requests) == 1


@pytest.mark.parametrize("action", ["base64", "int-values"])
def test_valid_variants_are_bit_exact(server, key, action):
    server.script = [action]
    batch = client(server, key).embed(TEXTS)
    want = np.array([vector(t) for t in TEXTS], dtype=np.float32)
    if action == "int-values":
        want[:, 0] = 0
    np.testing.assert_array_equal(batch.vectors, want)
    assert batch.vectors.dtype == np.float32 and batch.vectors.flags.c_contiguous


def test_one_bad_request_of_many_returns_nothing(server, key):
    server.script = ["ok", "ok", "null-embedding"]
    emb = client(server, key, batch_size=2)
    with pytest.raises(EmbrmError, match="item 0: 'embedding' is null"):
        emb.embed([f"t{i}" for i in range(6)])
    assert len(server.requests) == 3


def test_bad_batch_is_never_cached_and_resume_is_exact(server, key, tmp_path):
    """embed_dataset writes a part per embed() call: a call whose second request is bad writes nothing."""
    responses = table(8)
    emb = client(server, key, batch_size=2)
    server.script = ["ok", "ok", "ok", "index-all-0"]  # embed() call 1 = requests 1-2, call 2 = requests 3-4
    with pytest.raises(EmbrmError, match="not a permutation"):
        embed_dataset(responses, emb, cache_dir=tmp_path, batch_size=4, progress=False)
    cache = EmbeddingCache(tmp_path, cache_spec(emb, DEFAULT_TEMPLATE))
    assert cache.index().height == 4  # the first call only; the good half of the bad call is not cached
    result = embed_dataset(responses, emb, cache_dir=tmp_path, batch_size=4, progress=False)
    assert result.n_cached == 4 and result.n_embedded == 4
    sent = [text for r in server.requests for text in r["body"]["input"]]
    assert sorted(set(sent)) == sorted(f"p\n\n{r}" for r in responses["response"])  # as rendered and sent
    text_of = {f"p\n\nr{i}": i for i in range(8)}
    want = np.array([vector(t) for t in sorted(text_of, key=text_of.get)], dtype=np.float32)
    np.testing.assert_array_equal(result.X, want)


# -- credentials in the base URL ------------------------------------------------------------------------------

SECRET = "hunter2-SECRET-pw"


@pytest.mark.parametrize("url", [
    "http://user:{secret}@127.0.0.1:{port}/v1",
    "http://{secret}@127.0.0.1:{port}/v1",
    "http://user:{secret}/x@127.0.0.1:{port}/v1",  # an unencoded '/' in the password
    "user:{secret}@127.0.0.1:{port}/v1",  # no scheme either
])
def test_credentials_in_base_url_are_refused_without_echo(server, key, url, tmp_path, monkeypatch, caplog):
    url = url.format(secret=SECRET, port=server.server_address[1])
    with pytest.raises(EmbrmError) as info:
        make_embedder("openai", "m", base_url=url, api_key_env=key)
    message = str(info.value)
    assert SECRET not in message and "***@127.0.0.1" in message and "\n" not in message
    assert "--api-key-env" in message and key in message
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # the same from the environment
    with pytest.raises(EmbrmError, match=r"\$OPENAI_BASE_URL") as info:
        make_embedder("openai", "m", api_key_env=key)
    assert SECRET not in str(info.value)
    monkeypatch.delenv("OPENAI_BASE_URL")
    config = EmbedderConfig(backend="openai", model="m", base_url=url, api_key_env=key)
    with pytest.raises(EmbrmError) as info:
        config.embed(table(1), cache_dir=tmp_path, progress=False)
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    written = [f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()]
    assert not any(SECRET.encode() in raw for raw in written)
    assert not server.requests  # nothing sent: httpx would have sent the userinfo as Basic auth


def test_api_key_env_must_be_a_name_not_the_key(key):
    with pytest.raises(EmbrmError, match="api_key_env") as info:
        make_embedder("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY)
    assert KEY not in str(info.value)


@pytest.mark.parametrize("url", [KEY, f"http://127.0.0.1:9/v1?api_key={KEY}"])
def test_key_in_base_url_is_refused_without_echo(key, url):
    with pytest.raises(EmbrmError, match="base_url") as info:
        make_embedder("openai", "m", base_url=url, api_key_env=key)
    assert KEY not in str(info.value)


def test_key_set_after_construction_is_checked_against_base_url(key, monkeypatch):
    plain = "plainlocalvalue0123456789"  # no key shape: only its value gives it away (a query is refused up front)
    monkeypatch.delenv(key)
    emb = make_embedder("openai", "m", base_url=f"http://127.0.0.1:9/v1/{plain}", api_key_env=key)
    monkeypatch.setenv(key, plain)
    with pytest.raises(EmbrmError, match="contains the value of") as info:
        emb.embed(["x"])
    assert plain not in str(info.value) and emb.requests == 0


def test_key_never_in_errors_logs_spec_or_cache(server, key, tmp_path, caplog):
    """A server echoing the key in error bodies: the key stays out of messages, logs and every file written."""
    server.script = ["401"]
    responses = table(1)
    emb = client(server, key)
    with pytest.raises(EmbrmError) as info:
        embed_dataset(responses, emb, cache_dir=tmp_path, progress=False)
    server.script = ["500", "ok"]
    embed_dataset(responses, emb, cache_dir=tmp_path, progress=False)
    assert "injected 500" in caplog.text  # the retry was logged...
    assert KEY not in str(info.value) and KEY not in caplog.text and KEY not in json.dumps(emb.spec())
    written = [f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()]
    assert written and not any(KEY.encode() in raw for raw in written)
