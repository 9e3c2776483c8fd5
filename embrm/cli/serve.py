"""`embrm serve`: a saved model's reward over HTTP for RL trainers (OpenRLHF's remote reward, /score), embrm.serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from embrm.cli.common import CacheDirOpt, friendly, options_named, out
from embrm.cli.model import ModelDirArg
from embrm.core import EmbrmError
from embrm.serve import RewardSettings, ServeConfig
from embrm.serve import serve as run_server

# the API's field -> the option that sets it
SERVE_OPTION = {"aggregation": "--agg", "lam": "--lambda", "temperature": "--temperature", "member": "--member",
                "length_penalty": "--length-penalty", "max_batch": "--max-batch", "max_queue": "--max-queue",
                "max_wait": "--max-wait-ms"}


@friendly
def serve(
    model_dir: ModelDirArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    agg: Annotated[str, typer.Option(
        "--agg", help="Aggregation of the members: mean | min | median | uwo | lcb | softmin | single.")] = "lcb",
    lam: Annotated[float, typer.Option(
        "--lambda", help="lcb's beta and uwo's lambda: the penalty on the members' disagreement.")] = 1.0,
    temperature: Annotated[float, typer.Option("--temperature", help="softmin's temperature.")] = 1.0,
    member: Annotated[int, typer.Option("--member", help="single: which member.")] = 0,
    length_penalty: Annotated[float, typer.Option(
        "--length-penalty", help="Subtract this times the z-scored log length of the response.")] = 0.0,
    normalize: Annotated[bool, typer.Option(
        "--normalize/--no-normalize", help="Put the reward on the training responses' mean 0, std 1.")] = True,
    workers: Annotated[int, typer.Option(
        "--workers", help="Server processes (each loads the model and embedder).")] = 1,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", help="Pairs per embedder batch, gathered across concurrent requests.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", help="How long the first request of a batch waits for others.")] = 5.0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Pairs waiting at most; beyond, requests get 503 with Retry-After.")] = 4096,
    api_key_env: Annotated[Optional[str], typer.Option(
        "--api-key-env", help="Require `Authorization: Bearer KEY`, KEY read from this environment variable.")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="The model's training data, for its reference statistics (default: the manifest's).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Where named datasets live.")] = None,
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="Imported vectors only: the live backend that makes vectors like them (st, hf, openai).")
    ] = None,
    embed_model: Annotated[Optional[str], typer.Option(
        "--embed-model", help="Imported vectors only: the live embedder's model.")] = None,
    cache_dir: CacheDirOpt = Path("cache"),
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's: info | warning | error.")] = "info",
):
    """Serve a model's reward to RL trainers: POST /get_reward (OpenRLHF), POST /score, GET /health, GET /info.

    Example: embrm serve models/mlp --agg lcb --lambda 1.0 --port 8000
    """
    if not 1 <= port <= 65535:
        raise EmbrmError(f"--port {port}: use 1..65535")
    if not 1 <= workers <= 64:
        raise EmbrmError(f"--workers {workers}: use 1..64")
    if (backend is None) != (embed_model is None):
        raise EmbrmError("--backend and --embed-model go together: the live embedder for imported vectors")
    with options_named(SERVE_OPTION):
        settings = RewardSettings(agg, lam, temperature, member, length_penalty, normalize)
        config = ServeConfig(str(model_dir), str(cache_dir), settings.to_dict(), dataset,
                             None if data_dir is None else str(data_dir),
                             None if backend is None else {"backend": backend, "model": embed_model},
                             max_batch, max_wait_ms / 1000.0, max_queue, api_key_env=api_key_env)
        run_server(config, host, port, workers, log_level, announce=_announce(host, port))


def _announce(host: str, port: int):
    def show(info: dict) -> None:
        if "reference" not in info:
            out.print(f"serving {info['model_dir']} with {info['workers']} workers on http://{host}:{port}")
            return
        s, ref, emb = info["settings"], info["reference"], info["embedder"]
        out.print(f"serving {info['model_dir']} ({info['head']}, K = {info['k']}, {emb['backend']}:{emb['model']}) "
                  f"on http://{host}:{port}: {s['aggregation']} (lambda {s['lam']:g}), "
                  f"{'normalised' if s['normalize'] else 'raw'} on {ref['used']:,} training responses of "
                  f"{ref['dataset']}")
    return show
