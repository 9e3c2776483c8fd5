"""OpenAI-compatible backend against a real local HTTP server with injected failures."""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from embrm.embedders import make_embedder
from embrm.embedders.openai import _retry_after
from embrm.errors import EmbrmError

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
        dim = body.get("dimensions", DIM)
        data = [{"object": "embedding", "index": i, "embedding": vector(t, dim)} for i, t in enumerate(texts)]
        self.send(200, {"object": "list", "data": data[::-1], "model": body["model"]})  # reversed on purpose

    def send(self, status, payload, headers=None):
        raw = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


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
