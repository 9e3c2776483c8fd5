"""The HTTP server: Starlette routes on uvicorn over one RewardModel and its MicroBatcher.

    POST /get_reward   OpenRLHF's remote reward: {"query", "prompts", "labels"} -> {"rewards", "scores", "extra_logs"}
    POST /score        {"pairs": [{"prompt", "response"}], "aggregations": [...] | "all", "settings": {...}}
    GET  /health       {"status": "ok", ...}              (no key needed: for load balancers)
    GET  /info         the model, its embedder fingerprint, the settings, the reference statistics

Every error is a JSON object {"error": "one line"} with a 4xx status (503 + Retry-After when the queue is full);
nothing a client sends stops the server. With an API key (read from an environment variable at start, never
logged or echoed), every route but /health needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
from dataclasses import asdict, dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embrm.core import EmbrmError
from embrm.embedding import DEFAULT_CACHE_DIR, EmbedderConfig
from embrm.pipeline import load_model
from embrm.serve._batcher import MicroBatcher, Overloaded
from embrm.serve._requests import BadRequest, parse_json, reward_request, score_request
from embrm.serve._reward import RewardModel, Rewards, RewardSettings

__all__ = ["app_from_env", "CONFIG_ENV", "create_app", "serve", "ServeConfig"]

CONFIG_ENV = "EMBRM_SERVE_CONFIG"  # how `embrm serve --workers N` hands its settings to each worker process
MAX_BODY = 64 << 20  # bytes
log = logging.getLogger("embrm.serve")


@dataclass
class ServeConfig:
    """Everything a server process needs to build its app (JSON-able: worker processes read it from CONFIG_ENV;
    the API key itself never is in it, only the name of the variable that holds it)."""

    model_dir: str
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    settings: dict = field(default_factory=dict)
    dataset: str | None = None
    data_dir: str | None = None
    embedder: dict | None = None  # EmbedderConfig fields of a live embedder for imported vectors
    max_batch: int = 64
    max_wait: float = 0.005
    max_queue: int = 4096
    max_body: int = MAX_BODY
    api_key_env: str | None = None
    memory: int | None = None

    def __post_init__(self):
        for name, value, low in (("max_batch", self.max_batch, 1), ("max_queue", self.max_queue, 1),
                                 ("max_body", self.max_body, 1024)):
            if not isinstance(value, int) or value < low:
                raise EmbrmError(f"{name} = {value!r}: give a whole number >= {low}", field=name)
        if not (isinstance(self.max_wait, (int, float)) and 0 <= self.max_wait <= 60):
            raise EmbrmError(f"max_wait = {self.max_wait!r}: give 0 to 60 seconds", field="max_wait")

    def load(self) -> RewardModel:
        return RewardModel.load(self.model_dir, cache_dir=self.cache_dir, settings=RewardSettings(**self.settings),
                                dataset=self.dataset, data_dir=self.data_dir,
                                embedder=EmbedderConfig(**self.embedder) if self.embedder else None,
                                memory=self.memory)

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EmbrmError(f"--api-key-env {self.api_key_env}: the variable is unset or empty: export the key "
                             f"in it (or leave the option out to serve without a key)")
        return key


def error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status, headers=headers)


def create_app(model: RewardModel, config: ServeConfig) -> Starlette:
    batcher = MicroBatcher(model, max_batch=config.max_batch, max_wait=config.max_wait, max_queue=config.max_queue)
    key = config.api_key()

    async def body_of(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > config.max_body):
            raise BadRequest(f"the body is over {config.max_body} bytes: send fewer pairs per request", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body:
                raise BadRequest(f"the body is over {config.max_body} bytes: send fewer pairs per request", 413)
        return parse_json(bytes(body))

    def authorised(request: Request) -> bool:
        if key is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def refused() -> JSONResponse:
        return error("missing or wrong API key: send Authorization: Bearer KEY", 401, {"WWW-Authenticate": "Bearer"})

    def handler(parse, answer):
        async def endpoint(request: Request) -> JSONResponse:
            if not authorised(request):
                return refused()
            try:
                scoring = parse(await body_of(request), model.settings)
                return JSONResponse(answer(await batcher.submit(scoring)))
            except BadRequest as e:
                return error(str(e), e.status)
            except Overloaded as e:
                return error(str(e), 503, {"Retry-After": "1"})
            except ClientDisconnect:
                return error("the client went away", 400)
            except EmbrmError as e:  # settings the model cannot honour, or the embedder failed
                return error(str(e), 422 if e.field else 503, None if e.field else {"Retry-After": "5"})
        return endpoint

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "queued": batcher.queued, "in_flight": batcher.in_flight,
                             **batcher.stats})

    async def info(request: Request) -> JSONResponse:
        if not authorised(request):
            return refused()
        server = {k: v for k, v in asdict(config).items() if k in ("max_batch", "max_wait", "max_queue", "max_body")}
        return JSONResponse({**model.info(), "server": {**server, "api_key": key is not None}, **batcher.stats})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.detail or "error", exc.status_code)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return error(f"internal error ({type(exc).__name__}): the server keeps serving; see its log", 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()  # uvicorn has finished the in-flight requests (SIGTERM: graceful)
        model.close()

    routes = [Route("/get_reward", handler(reward_request, openrlhf_answer), methods=["POST"]),
              Route("/score", handler(score_request, score_answer), methods=["POST"]),
              Route("/health", health, methods=["GET"]), Route("/info", info, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


def openrlhf_answer(r: Rewards) -> dict:
    """OpenRLHF's reply: rewards (what the policy trains on), scores (0..1, the calibrated rank) and extra_logs,
    lists aligned with the queries, that it logs per sample."""
    logs = {"reward_std": r.std.tolist(), "reward_mean": r.mean.tolist(), "length": r.length.tolist(),
            **{f"member_{k}": r.members[:, k].tolist() for k in range(r.members.shape[1])}}
    return {"rewards": r.rewards.tolist(), "scores": r.scores.tolist(), "extra_logs": logs}


def score_answer(r: Rewards) -> dict:
    return r.to_dict()


def app_from_env() -> Starlette:
    """uvicorn's app factory in each worker process (`embrm serve --workers N`)."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    return create_app(config.load(), config)


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info", announce=None) -> None:
    """Run the server until SIGINT/SIGTERM (in-flight requests finish first). One worker loads the model here;
    several are separate processes (uvicorn's), each loading it (memory x workers), sharing the port.
    `announce(info)`: called with the model's /info before the port opens (the CLI prints it)."""
    config.api_key()  # the one-line errors before anything loads
    if workers == 1:
        model = config.load()
        app = create_app(model, config)
        if announce:
            announce(model.info())
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    if announce:
        announce({"model_dir": config.model_dir, "workers": workers})
    load_model(config.model_dir)
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    # each worker's embedder on its share of the cores (torch reads this when it loads), not all of them each
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    uvicorn.run("embrm.serve._app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
