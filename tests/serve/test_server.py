"""`embrm serve` as a trainer meets it: a real uvicorn process, real HTTP clients (httpx, OpenRLHF's own remote
reward client), concurrent requests gathered into batches, bad requests refused in one line, a key, overload and
SIGTERM."""

import asyncio
import json
import signal
import socket
import threading

import httpx
import numpy as np
import polars as pl
import pytest
from realdata import needs_data
from servers import KEY, stop_server

pytestmark = [needs_data, pytest.mark.slow]


def pool_pairs(fitted, n=40):
    df = pl.read_parquet(fitted / "pool.parquet").head(n)
    return df["prompt"].to_list(), df["response"].to_list()


def test_openrlhf_shape_gives_the_in_process_rewards(server, fitted, reward_model):
    prompts, responses = pool_pairs(fitted)
    reply = httpx.post(f"{server.url}/get_reward", timeout=60,
                       json={"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts,
                             "labels": [""] * len(prompts)})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    local = reward_model.rewards(prompts, responses)
    np.testing.assert_allclose(body["rewards"], local.rewards, atol=1e-6)
    # a training response's rank may move by one among its float-rounding twins in the reference
    np.testing.assert_allclose(body["scores"], local.scores, atol=1.0 / len(reward_model.reference.members) + 1e-12)
    logs = body["extra_logs"]
    np.testing.assert_allclose(np.array([logs[f"member_{k}"] for k in range(4)]).T, local.members, atol=1e-6)
    assert set(logs) >= {"reward_std", "reward_mean", "length"} and len(logs["length"]) == len(prompts)


def test_score_route_every_aggregation_and_settings(server, fitted, reward_model):
    prompts, responses = pool_pairs(fitted, 10)
    reply = httpx.post(f"{server.url}/score", timeout=60, json={
        "pairs": [{"prompt": p, "response": r} for p, r in zip(prompts, responses)], "aggregations": "all",
        "settings": {"aggregation": "min", "length_penalty": 0.5}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    local = reward_model.rewards(prompts, responses, {"aggregation": "min", "length_penalty": 0.5},
                                 aggregations=("mean", "min", "median", "uwo", "lcb", "softmin", "single"))
    np.testing.assert_allclose(body["rewards"], local.rewards, atol=1e-6)
    for name, values in local.aggregations.items():
        np.testing.assert_allclose(body["aggregations"][name], values, atol=1e-6)
    assert body["settings"]["aggregation"] == "min"


def test_health_and_info(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    info = httpx.get(f"{server.url}/info").json()
    assert info["embedder"]["backend"] == "st" and len(info["embedder"]["fingerprint"]) == 32
    assert info["settings"]["aggregation"] == "lcb" and info["reference"]["training_responses"] > 0
    assert info["reference"]["aggregation"]["name"] == "lcb" and info["reference"]["aggregation"]["std"] > 0
    assert info["server"]["api_key"] is False


def test_openrlhf_client_code_talks_to_it(server, fitted, reward_model):
    """OpenRLHF's own remote reward client (installed without its GPU dependencies: pip install --no-deps)."""
    agent = pytest.importorskip("openrlhf.utils.agent", reason="openrlhf is not installed (make install adds it)")
    prompts, responses = pool_pairs(fitted, 6)
    queries = [p + r for p, r in zip(prompts, responses)]
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[f"{server.url}/get_reward"] * 2)  # sharded over 2 URLs
    replies = asyncio.run(executor._fetch_rewards_via_http(queries, prompts, [None] * len(queries)))
    rewards = [r for reply in replies for r in reply["rewards"]]
    np.testing.assert_allclose(rewards, reward_model.rewards(prompts, responses).rewards, atol=1e-6)


def test_concurrent_requests_are_batched(server):
    before = httpx.get(f"{server.url}/health").json()

    async def one(client, i):
        reply = await client.post(f"{server.url}/get_reward", json={
            "query": [f"Question {i}? Answer number {i} with some words."], "prompts": [f"Question {i}?"]})
        return reply.status_code, reply.json()["rewards"]

    async def many():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(many())
    assert all(status == 200 and len(r) == 1 and np.isfinite(r[0]) for status, r in results)
    after = httpx.get(f"{server.url}/health").json()
    assert after["requests"] - before["requests"] == 64
    assert after["batches"] - before["batches"] < 32  # many requests per embedder batch


PAIR = {"prompt": "Hi?", "response": "Hello."}
BAD = [  # (path, body bytes or JSON, headers, status, words in the error)
    ("/get_reward", b"{not json", None, 400, "malformed JSON"),
    ("/get_reward", b"", None, 400, "malformed JSON"),
    ("/get_reward", b"\xff\xfe{}", None, 400, "UTF-8"),
    ("/get_reward", b'{"query": ["caf\xe9"]}', None, 400, "UTF-8"),
    ("/get_reward", b"[1, 2]", None, 400, "JSON object"),
    ("/get_reward", b'"text"', None, 400, "JSON object"),
    ("/get_reward", b"null", None, 400, "JSON object"),
    ("/get_reward", b"[" * 100_000, None, 400, "nested"),
    ("/get_reward", {}, None, 422, "'query' must be a list"),
    ("/get_reward", {"query": "Hi? Hello."}, None, 422, "'query' must be a list"),
    ("/get_reward", {"query": []}, None, 422, "empty"),
    ("/get_reward", {"query": [1]}, None, 422, "query[0] must be a string"),
    ("/get_reward", {"query": [None]}, None, 422, "query[0] must be a string"),
    ("/get_reward", {"query": ["a", ["b"]]}, None, 422, "query[1] must be a string"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?", "Bye?"]}, None, 422, "one per query"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": []}, None, 422, "empty"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": "Hi?"}, None, 422, "'prompts' must be a list"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": [3]}, None, 422, "prompts[0] must be a string"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Bye?"]}, None, 422, "does not contain"),
    ("/get_reward", {"query": ["no chat markup here"]}, None, 422, "no assistant turn"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "labels": [1, 2]}, None, 422, "'labels'"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "labels": "x"}, None, 422, "'labels'"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": []}, None, 422, "'settings' must be"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "strip_stop": "no"}, None, 422, "'strip_stop'"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"aggregation": "max"}}, None, 422,
     "aggregation"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"lam": -2}}, None, 422, "lam"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"lam": "big"}}, None, 422, "lam"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"lam": 1e300}}, None, 422, "lam"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"temperature": 0}}, None, 422,
     "temperature"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"member": 99}}, None, 422, "member"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"normalize": 1}}, None, 422,
     "normalize"),
    ("/get_reward", {"query": ["Hi? Yo"], "prompts": ["Hi?"], "settings": {"secret": 1}}, None, 422,
     "unknown setting"),
    ("/get_reward", {"query": ["x"] * 5000}, None, 413, "at most"),
    ("/get_reward", {"query": ["x" * 1_000_001], "prompts": ["x"]}, None, 413, "characters"),
    ("/score", {}, None, 422, "'pairs' must be"),
    ("/score", {"pairs": []}, None, 422, "empty"),
    ("/score", {"pairs": {"prompt": "a", "response": "b"}}, None, 422, "'pairs' must be"),
    ("/score", {"pairs": [{"prompt": "a"}]}, None, 422, "pairs[0]"),
    ("/score", {"pairs": [PAIR, {"prompt": 1, "response": "b"}]}, None, 422, "pairs[1]"),
    ("/score", {"pairs": [PAIR, "text"]}, None, 422, "pairs[1]"),
    ("/score", {"pairs": [PAIR], "aggregations": ["mean", "max"]}, None, 422, "unknown aggregation 'max'"),
    ("/score", {"pairs": [PAIR], "aggregations": "mean"}, None, 422, "'aggregations' must be"),
    ("/score", {"pairs": [PAIR], "aggregations": [1]}, None, 422, "'aggregations' must be"),
    ("/score", {"pairs": [PAIR], "settings": {"aggregation": None}}, None, 422, "aggregation"),
    ("/score", {"pairs": [PAIR] * 5000}, None, 413, "at most"),
    ("/nowhere", {}, None, 404, "Not Found"),
]


@pytest.mark.parametrize("path, body, headers, status, words", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_requests_get_one_line_and_the_server_keeps_serving(server, path, body, headers, status, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=60)
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    assert words in message and "\n" not in message and "Traceback" not in message
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("length", ["99999999999", "-5", "abc"])
def test_a_declared_oversized_or_garbled_length_is_refused(server, length):
    """A body that declares more than the server takes (or a garbled length) is refused before it is read
    (a raw socket: HTTP clients will not send a length that lies)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{}}".encode())
        head = s.recv(65536).decode("latin-1")
    assert head.split()[1] in ("400", "413"), head
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_wrong_methods_and_no_traceback_in_the_log(server):
    assert httpx.get(f"{server.url}/get_reward").status_code == 405
    assert httpx.put(f"{server.url}/score", json={}).status_code == 405
    server.log.flush()
    assert "Traceback" not in (server.log.name and open(server.log.name).read())


def test_api_key(guarded):
    url = guarded.url
    assert httpx.get(f"{url}/health").status_code == 200  # open: for load balancers
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Bearer"}):
        reply = httpx.post(f"{url}/score", json={"pairs": [PAIR]}, headers=headers)
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert KEY not in reply.text
    assert httpx.get(f"{url}/info").status_code == 401
    assert httpx.post(f"{url}/score", json={"pairs": [PAIR]}, headers=guarded.headers).status_code == 200
    info = httpx.get(f"{url}/info", headers=guarded.headers)
    assert info.json()["server"]["api_key"] is True and KEY not in info.text


def test_overload_gets_503_with_retry_after(guarded):
    async def one(client, i):
        return await client.post(f"{guarded.url}/score", headers=guarded.headers, json={
            "pairs": [{"prompt": f"Q{i}?", "response": f"A long new answer number {i} " * 20}] * 2})

    async def many():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(24)))

    replies = asyncio.run(many())
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    refused = next(r for r in replies if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "retry" in refused.json()["error"]
    too_big = httpx.post(f"{guarded.url}/score", headers=guarded.headers, json={"pairs": [PAIR] * 5})
    assert too_big.status_code == 413 and "queues at most 4" in too_big.json()["error"]  # never fits: no retry


def test_sigterm_finishes_the_request_in_flight(guarded):
    pairs = [{"prompt": f"Question {i}?", "response": f"A fresh answer {i} that was never embedded " * 8}
             for i in range(2)]
    result = {}

    def call():
        result["reply"] = httpx.post(f"{guarded.url}/score", headers=guarded.headers, json={"pairs": pairs},
                                     timeout=120)

    caller = threading.Thread(target=call)
    caller.start()
    while httpx.get(f"{guarded.url}/health").json()["in_flight"] == 0:
        assert "reply" not in result  # the request must still be in flight when the signal comes
    guarded.proc.send_signal(signal.SIGTERM)
    caller.join(120)
    assert result["reply"].status_code == 200 and len(result["reply"].json()["rewards"]) == 2
    assert stop_server(guarded) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in guarded.output
    assert KEY not in guarded.output and "Traceback" not in guarded.output
