"""Real `embrm serve` processes for the serving tests and where they are reached."""

import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx

KEY_ENV, KEY = "EMBRM_TEST_SERVE_KEY", "sk-test-4f9c2e"  # a made-up key: the server must never print it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(fitted, *options, env_extra=None):
    port = free_port()
    env = {**os.environ, KEY_ENV: KEY, **(env_extra or {})}
    log = open(fitted / f"server-{port}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "embrm", "serve", str(fitted / "model"), "--port", str(port),
                             "--cache-dir", str(fitted / "cache"), *options], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"embrm serve exited {proc.returncode}: {log.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return SimpleNamespace(url=url, proc=proc, log=log, port=port)
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("embrm serve did not answer /health within 180 s")


def stop_server(server) -> int:
    if server.log.closed:
        return server.proc.returncode
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    server.log.seek(0)
    server.output = server.log.read()
    server.log.close()
    return server.proc.returncode
