"""The openai backend against a hostile endpoint and hostile URLs/keys: secrets by shape (never echoed, never in
the cache), a total deadline per request (trickling servers), a cap on the decompressed reply (gzip bombs).

One real local HTTP server picks its misbehaviour from the first path segment of the request
(`http://127.0.0.1:PORT/<mode>/v1/embeddings`), so a base URL names the fault it gets."""

import json
import re
import threading
import time
import tracemalloc
import zlib
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import polars as pl
import pytest
from badinput import Bad, snapshot
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core import EmbrmError
from embrm.embedding.backends import make_embedder
from embrm.embedding.backends._openai import _scrub

SECRET = "sk-proj-Hostile0123456789abcdefXYZ"
PLAIN = "plainlocalvalue0123456789"  # a key with no shape: only its value gives it away
ENV = "HOSTILE_KEY"
DIM = 4
TRICKLE_S = 0.05  # between trickled bytes: far below any per-read timeout used here
TRICKLE_FOR_S = 6.0  # a trickle ends after this (the old client waited it out, twice: the tests fail on time)


@cache
def gzip_blocks() -> tuple[bytes, bytes]:
    """(gzip header + the first MiB of zeros, one more MiB): a full flush makes each block self-contained, so the
    second repeated makes a bomb of any size from ~1 KB per MiB, with nothing large ever allocated."""
    zeros, c = bytes(2**20), zlib.compressobj(9, zlib.DEFLATED, 31)
    return (c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH), c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH))


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # bodies end when the connection closes: a bomb or a trickle needs no length

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        mode = self.path.split("/")[1].replace("-", "_")
        with self.server.lock:
            self.server.hits[mode] = self.server.hits.get(mode, 0) + 1
            first = self.server.hits[mode] == 1
        try:
            getattr(self, mode, self.unknown)(body, key, first)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what the caps are for
            pass

    def reply(self, status, raw: bytes, headers=(), reason=None):
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def unknown(self, body, key, first):  # a refused URL that reached the server anyway: the test fails on `sends`
        self.reply(404, b"no such mode")

    def ok(self, body, key, first):
        data = [{"object": "embedding", "index": i, "embedding": [0.25] * DIM} for i in range(len(body["input"]))]
        self.reply(200, json.dumps({"object": "list", "data": data}).encode(), [("Content-Type", "application/json")])

    def need_auth(self, body, key, first):
        if key:
            return self.ok(body, key, first)
        self.reply(401, b'{"error": {"message": "no key sent"}}')

    def echo_reason(self, body, key, first):
        self.reply(401, b"", reason=f"Denied for Bearer {key}")

    def echo_json(self, body, key, first):
        self.reply(401, json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())

    def echo_text(self, body, key, first):
        self.reply(403, f"forbidden\nfor Authorization: Bearer {key} (key={key})".encode())

    def echo_quoted(self, body, key, first):
        self.reply(400, f"bad key {quote(key, safe='')}".encode())

    def echo_detail(self, body, key, first):  # FastAPI's shape: no "error", the key under another name
        self.reply(422, json.dumps({"detail": [{"msg": "invalid", "input": {"api_key": key}}]}).encode())

    def echo_ansi(self, body, key, first):
        self.reply(400, f"\x1b[2J\x1b[31mdenied\x1b[0m\r\n{key}".encode())

    def echo_retry(self, body, key, first):  # retried (503), Retry-After 0 keeps the test fast
        self.reply(503, f"overloaded, {key}".encode(), [("Retry-After", "0")], reason=f"Busy {key}")

    def other_token(self, body, key, first):  # someone else's credentials in the message
        self.reply(401, b"expected Bearer sk-other-0123456789abcdef or token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx"
                        b"MjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")

    def gzip_ok(self, body, key, first):
        data = [{"index": i, "embedding": [0.5] * DIM} for i in range(len(body["input"]))]
        self.reply(200, zlib.compress(json.dumps({"data": data}).encode(), wbits=31), [("Content-Encoding", "gzip")])

    def bomb(self, body, key, first, status=200):
        head, block = gzip_blocks()
        self.reply(status, head, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")])
        for _ in range(511):  # 512 MiB inflated from ~0.5 MB sent
            self.wfile.write(block)

    def bomb_error(self, body, key, first):
        self.bomb(body, key, first, status=400)

    def big_plain(self, body, key, first):
        self.reply(200, b"")
        for _ in range(16 * 64):  # 64 MiB of spaces, uncompressed
            self.wfile.write(b" " * 65536)

    def brotli(self, body, key, first):
        self.reply(200, b"\x8b\x03\x80{}\x03", [("Content-Encoding", "br")])

    def trickle_body(self, body, key, first):
        self.reply(200, b"", [("Content-Type", "application/json"), ("Content-Length", "100000")])
        self.trickle()

    def trickle_headers(self, body, key, first):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        self.trickle()

    def trickle_once(self, body, key, first):
        return self.trickle_body(body, key, first) if first else self.ok(body, key, first)

    def trickle(self):
        end = time.monotonic() + TRICKLE_FOR_S
        while time.monotonic() < end:
            self.wfile.write(b"a")
            self.wfile.flush()
            time.sleep(TRICKLE_S)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    srv.daemon_threads = True
    srv.lock, srv.hits = threading.Lock(), {}
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    srv.root = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    pl.DataFrame({"prompt_id": ["q0", "q1"], "prompt": ["p0", "p1"], "response": ["r0", "r1"]}).write_parquet(
        root / "pool.parquet")
    return root


def client(server, mode, **options):
    options = {"api_key_env": ENV, "max_retries": 1, "backoff_base": 0.001, "timeout": 0.5, **options}
    return make_embedder("openai", "m", base_url=f"{server.root}/{mode}/v1", **options)


# -- deadline: a trickle is timed out over the whole request, and still retried -------------------------------


@pytest.mark.parametrize("mode", ["trickle-body", "trickle-headers"])
def test_trickle_hits_the_total_deadline(server, monkeypatch, mode):
    monkeypatch.setenv(ENV, SECRET)
    start = time.monotonic()
    with pytest.raises(EmbrmError, match=r"failed after 2 attempts \(no complete reply within 0.5 s\)"):
        client(server, mode).embed(["x"])
    assert time.monotonic() - start < 2.5  # 2 x 0.5 s and a little; per-read timeouts alone: 2 x 6 s


def test_trickle_then_a_good_reply_is_retried(server, monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    emb = client(server, "trickle-once")
    start = time.monotonic()
    assert emb.embed(["x", "y"]).vectors.tolist() == [[0.25] * DIM] * 2
    assert emb.requests == 2 and time.monotonic() - start < 2  # the trickle was cut at 0.5 s, not waited out


# -- size cap: inflated incrementally, refused past the cap, never allocated whole ----------------------------


def test_gzip_bomb_stops_at_the_cap_without_allocating_it(server, monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    emb = client(server, "bomb", max_reply_bytes=2**20)
    tracemalloc.start()
    try:
        with pytest.raises(EmbrmError) as info:
            emb.embed(["x"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == (f"{server.root}/bomb/v1/embeddings returned a bad reply (the reply is larger than 1 "
                               f"MiB once decompressed): the server is not OpenAI-compatible or is faulty: check "
                               f"--base-url")
    assert peak < 16 * 2**20, peak  # the bomb inflates to 512 MiB
    assert emb.requests == 1  # a faulty server: not retried


def test_gzip_reply_within_the_cap_is_inflated(server, monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    assert client(server, "gzip-ok").embed(["a", "b"]).vectors.tolist() == [[0.5] * DIM] * 2


def test_reply_cap_follows_the_texts_sent(server, monkeypatch):
    """The default cap is 1 MiB + 2 MiB a text (256 MiB at most): 1 text may not send 4 MiB of spaces."""
    monkeypatch.setenv(ENV, SECRET)
    with pytest.raises(EmbrmError, match=r"larger than 3 MiB once decompressed"):
        client(server, "big-plain", timeout=5).embed(["x"])


# -- scrubbing: the configured key and anything shaped like a credential --------------------------------------


@pytest.mark.parametrize("text,want", [
    (f"Denied for Bearer {PLAIN}", "Denied for Bearer ***"),
    (f"Incorrect API key provided: {SECRET}. See docs", "Incorrect API key provided: *** See docs"),
    ('{"api_key": "zz9"}', '{"api_key": "***"}'),
    ("x-api-key: abc def", "x-api-key: *** def"),
    ("got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4fw ok", "got *** ok"),
    ("id AbCdEfGh1234567890XyZwVuTs", "id ***"),
    ("hash " + "0123456789abcdef" * 3, "hash ***"),
    ("hf_AbCdEfGhIjKlMnOpQrSt and gsk_abcdefgh12", "*** and ***"),
    # not credentials: left alone
    ("model text-embedding-3-large not found", "model text-embedding-3-large not found"),
    ("Snowflake-Arctic-Embed-L-v2 on task-abcdefgh", "Snowflake-Arctic-Embed-L-v2 on task-abcdefgh"),
    ("Rate limit reached, retry in 20s", "Rate limit reached, retry in 20s"),
])
def test_scrub_removes_credential_shapes(text, want):
    assert _scrub(text, None) == want


def test_scrub_removes_the_configured_key_raw_and_encoded():
    key = "my key/with+chars"
    assert _scrub(f"a {key} b {quote(key, safe='')} c", key) == "a *** b *** c"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/v1",
    "https://api.cloudflare.com/client/v4/accounts/0123456789abcdef0123456789abcdef/ai/v1",  # an id, not a key
    "https://router.huggingface.co/hf-inference/v1",
    "https://api.runpod.ai/v2/abc123xyz456/openai/v1",
    "https://host.example/v1/models/BAAI/bge-small-en-v1.5/v1",
])
def test_ordinary_base_urls_are_kept(url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert make_embedder("openai", "m", base_url=url).spec()["base_url"] == url


# -- hostile URLs, keys and replies through the CLI: exit 2, one line, the secret nowhere -----------------------

URL_FIX = "--api-key-env"
QUERY = r"query string or fragment.*" + URL_FIX
USERINFO = r"\*\*\*@127\.0\.0\.1:\d+ carries credentials.*" + URL_FIX
SHAPED = r"path segment of the base URL is shaped like a key or token.*" + URL_FIX
NOT_VALID = r"is not valid: pass an http\(s\)://"
BAD_KEY = rf"environment variable {ENV} holds a key with a space, line break, control or non-ASCII character"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
HOST = "http://127.0.0.1:{port}"
OK = HOST + "/ok/v1"


def case(id, url, match, key=None, secrets=(SECRET,), sends=False, env=None, key_env=ENV):
    """One CLI run of `embrm embed` against the hostile server. `url` None: the base URL comes from env only;
    `key`: the value of $HOSTILE_KEY (None: unset); `sends`: whether the server may be contacted at all."""
    args = ("embed", "{root}/pool.parquet", "--backend", "openai", "--model", "m", "--api-key-env", key_env,
            "--cache-dir", "{root}/cache-" + id.replace("/", "-"), "--batch-size", "64")
    args += ("--base-url", url) if url is not None else ()
    env = {ENV: key, "OPENAI_BASE_URL": None, "OPENAI_API_KEY": None, **(env or {})}
    return pytest.param(Bad(id, args, match, ("pool.parquet",), env), secrets, sends, id=id)


CASES = [
    # a key in the query string or fragment: refused whole, nothing of it echoed
    case("query/plain", OK + f"?api_key={SECRET}", QUERY),
    case("query/encoded", OK + f"?api_key={quote(SECRET, safe='')}", QUERY, secrets=(SECRET, quote(SECRET, safe=""))),
    case("query/bare", OK + f"?{SECRET}", QUERY),
    case("query/second-param", OK + f"?x=1&token={SECRET}", QUERY),
    case("query/empty", OK + "?", QUERY, secrets=()),
    case("fragment/bare", OK + f"#{SECRET}", QUERY),
    case("fragment/param", OK + f"#access_token={SECRET}", QUERY),
    case("query/key-set-too", OK + f"?api_key={SECRET}", QUERY, key=SECRET),
    case("query/from-env", None, r"\$OPENAI_BASE_URL: the base URL carries a query",
         env={"OPENAI_BASE_URL": OK + f"?key={SECRET}"}),
    # credentials in userinfo
    case("userinfo/password", f"http://user:{SECRET}@127.0.0.1:{{port}}/ok/v1", USERINFO),
    case("userinfo/key-only", f"http://{SECRET}@127.0.0.1:{{port}}/ok/v1", USERINFO),
    case("userinfo/encoded", f"http://user:{quote(SECRET)}%40x@127.0.0.1:{{port}}/ok/v1", USERINFO),
    case("userinfo/slash", f"http://user:{SECRET}/x@127.0.0.1:{{port}}/ok/v1", USERINFO),
    case("userinfo/no-scheme", f"user:{SECRET}@127.0.0.1:{{port}}/ok/v1", USERINFO),
    # credential-shaped path segments
    case("path/sk", OK + f"/{SECRET}/", SHAPED),
    case("path/sk-encoded", OK + "/" + SECRET.replace("-", "%2D"), SHAPED, secrets=(SECRET, SECRET[8:])),
    case("path/key-prefix", OK + "/key-a1b2c3d4e5f6g7h8", SHAPED, secrets=("key-a1b2c3d4e5f6g7h8",)),
    case("path/jwt", HOST + f"/{JWT}/v1", SHAPED, secrets=(JWT,)),
    case("path/mixed-token", HOST + "/AbCdEfGh1234567890XyZwVuTs/v1", SHAPED, secrets=("AbCdEfGh1234567890XyZwVuTs",)),
    case("path/hex40", OK + "/" + "0123456789abcdef" * 3, SHAPED, secrets=("0123456789abcdef" * 3,)),
    case("path/hf-token", OK + "/hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", SHAPED, secrets=("AbCdEfGhIjKlMnOpQrStUv",)),
    case("path/encoded-query", OK + f"%3Fapi_key%3D{SECRET}", SHAPED),
    case("path/bearer-crlf", OK + f"\r\nAuthorization: Bearer {SECRET}", SHAPED),
    case("path/key-value", OK + f"/{PLAIN}", rf"contains the value of \${ENV}", key=PLAIN, secrets=(PLAIN,)),
    # not a URL at all: echoed, scrubbed
    case("url/is-the-key", SECRET, r"option base_url='\*\*\*' is not valid", key=None),
    case("url/ftp", f"ftp://{SECRET}.example/v1", NOT_VALID),
    case("url/space-in-host", "http://127.0.0.1 :{port}/ok/v1", NOT_VALID, secrets=()),
    case("url/bad-port", "http://127.0.0.1:99999/ok/v1", NOT_VALID, secrets=()),
    # keys no HTTP header can carry: named by their variable, never shown
    case("key/non-ascii", OK, BAD_KEY, key="sk-tést-0123456789abcdef", secrets=("sk-tést-0123456789abcdef", "tést")),
    case("key/emoji", OK, BAD_KEY, key="sk-\U0001f511-0123456789abcdef", secrets=("0123456789abcdef",)),
    case("key/crlf-injection", OK, BAD_KEY, key=f"{SECRET}\r\nX-Evil: 1"),
    case("key/trailing-newline", OK, BAD_KEY, key=f"{SECRET}\n"),
    case("key/leading-space", OK, BAD_KEY, key=f" {SECRET}"),
    case("key/inner-space", OK, BAD_KEY, key="sk-proj abc 0123456789", secrets=("0123456789",)),
    case("key/tab", OK, BAD_KEY, key=f"{SECRET}\t"),
    case("key/del", OK, BAD_KEY, key=f"{SECRET}\x7f"),
    case("key/nbsp", OK, BAD_KEY, key=f"{SECRET}\u00a0"),
    case("key/in-api-key-env", OK, r"option api_key_env is not an environment variable name", key_env=SECRET),
    # hostile replies: the key echoed back, someone else's tokens, terminal escapes, bombs, odd encodings
    case("reply/reason-phrase", HOST + "/echo-reason/v1", rf"HTTP 401: Denied for Bearer \*\*\*: check {ENV}$",
         key=SECRET, sends=True),
    case("reply/json-message", HOST + "/echo-json/v1", r"HTTP 401: Incorrect API key provided: \*\*\*: check",
         key=SECRET, sends=True),
    case("reply/text-body", HOST + "/echo-text/v1", r"HTTP 403: forbidden for Authorization: \*\*\*", key=SECRET,
         sends=True),
    case("reply/url-encoded", HOST + "/echo-quoted/v1", r"HTTP 400: bad key \*\*\*$", key="local/key+x=y",
         secrets=("local/key+x=y", quote("local/key+x=y", safe="")), sends=True),
    case("reply/unshaped-key", HOST + "/echo-json/v1", r"HTTP 401: Incorrect API key provided: \*\*\*", key=PLAIN,
         secrets=(PLAIN,), sends=True),
    case("reply/detail", HOST + "/echo-detail/v1", r"HTTP 422: .*'api_key': '\*\*\*'", key=PLAIN, secrets=(PLAIN,),
         sends=True),
    case("reply/ansi", HOST + "/echo-ansi/v1", r"HTTP 400: \[2J \[31mdenied \[0m \*\*\*$", key=SECRET,
         secrets=(SECRET, "\x1b"), sends=True),
    case("reply/retried-5xx", HOST + "/echo-retry/v1", r"failed after 7 attempts \(HTTP 503: overloaded, \*\*\*\)",
         key=SECRET, sends=True),
    case("reply/other-tokens", HOST + "/other-token/v1", r"HTTP 401: expected Bearer \*\*\* or token \*\*\*: check",
         key=SECRET, secrets=("sk-other-0123456789abcdef", JWT), sends=True),
    case("reply/empty-key-401", HOST + "/need-auth/v1", rf"HTTP 401: no key sent: check {ENV}", key="", secrets=(),
         sends=True),
    case("reply/gzip-bomb", HOST + "/bomb/v1", r"/bomb/v1/embeddings returned a bad reply \(the reply is larger than "
         r"5 MiB once decompressed\): .*check --base-url", key=SECRET, sends=True),
    case("reply/gzip-bomb-error", HOST + "/bomb-error/v1", r"HTTP 400: Bad Request$", key=SECRET, sends=True),
    case("reply/brotli", HOST + "/brotli/v1", r"Content-Encoding is not gzip, deflate or identity", key=SECRET,
         sends=True),
]


def secret_free(text: str | bytes, secrets) -> bool:
    return not any((s.encode() if isinstance(text, bytes) else s) in text for s in secrets)


@pytest.mark.parametrize("bad,secrets,sends", CASES)
def test_hostile_cli_fails_in_one_line_and_leaks_nothing(server, root, caplog, bad, secrets, sends):
    """Bad/snapshot from tests/badinput.py; the run is made here rather than by assert_clean_failure, which does
    not return stdout, and stdout must be checked for the secret too."""
    port = str(server.server_address[1])
    bad = Bad(bad.id, tuple(a.replace("{port}", port) for a in bad.args), bad.match, bad.watch,
              {k: v.replace("{port}", port) if v else v for k, v in bad.env.items()})
    hits = sum(server.hits.values())
    before = snapshot([root / w for w in bad.watch])
    res = CliRunner().invoke(app, bad.argv(root), env=bad.env)
    lines = res.stderr.strip().splitlines()
    context = f"{bad.id}: exit {res.exit_code}, stderr={res.stderr!r}, exception={res.exception!r}"
    assert res.exit_code == 2 and "Traceback" not in res.output, context
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(bad.match, lines[0]), context
    assert snapshot([root / w for w in bad.watch]) == before, f"{bad.id}: a watched file changed"
    assert secret_free(res.stdout + res.stderr + res.output + caplog.text, secrets), context
    files = [f for f in Path(root).rglob("*") if f.is_file()]
    leaked = [f for f in files if not secret_free(f.read_bytes(), secrets)]
    assert not leaked, f"{bad.id}: the secret is in {leaked}"
    assert sends or sum(server.hits.values()) == hits, f"{bad.id}: refused too late, the server was contacted"
