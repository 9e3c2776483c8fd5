"""`embrm rl`: online policy optimisation (GRPO, RLOO, PPO, REINFORCE) against a saved model's reward on a pool's
held-out prompts, beside Best-of-n at the same exact KL (embrm.rl)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from embrm.cli.common import (
    CacheDirOpt,
    DataOptions,
    DatasetArg,
    Format,
    FormatOpt,
    OutDirOpt,
    OverwriteOpt,
    claim_out,
    command_line,
    friendly,
    grouped,
    options_named,
    out,
    parse_numbers,
    print_json,
    split_list,
)
from embrm.cli.model import _load_model
from embrm.core import EmbrmError
from embrm.pipeline import model_embeddings
from embrm.rl import ALGORITHMS, KL_MODES, TRANSFORMS, RLConfig, run_rl

RL_OPTION = {"algo": "--algo", "policy": "--policy", "steps": "--steps", "group": "--group", "lr": "--lr",
             "kl": "--kl", "kl_mode": "--kl-mode", "clip": "--clip", "epochs": "--epochs", "points": "--points",
             "length_penalty": "--length-penalty", "seed": "--seed", "transform": "--transform",
             "aggregation": "--agg", "baseline_decay": "--baseline-decay"}


def _list(values: list[str] | None, option: str) -> list[str] | None:
    names = split_list(values)
    if values is not None and not names:
        raise EmbrmError(f"{option}: give a comma-separated list, got {','.join(values)!r}")
    return names or None


@friendly
@grouped(data=DataOptions)
def rl(
    ctx: typer.Context, dataset: DatasetArg, data: DataOptions,
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A model directory written by `embrm fit`.")],
    algo: Annotated[str, typer.Option("--algo", help=f"{' | '.join(ALGORITHMS)}.")] = "grpo",
    policy: Annotated[str, typer.Option(
        "--policy", help="pool (a softmax over each prompt's pool) | linear (one theta over embeddings, measured on "
                         "other prompts) | gaussian (new candidates in the embedding space; generated datasets)."
    )] = "pool",
    agg: Annotated[Optional[List[str]], typer.Option(
        "--agg", help="Comma-separated aggregations to train on (default: the model's; also warm).")] = None,
    transform: Annotated[Optional[List[str]], typer.Option(
        "--transform", help=f"Comma-separated reward transforms: {', '.join(TRANSFORMS)} (default: none).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Policy-gradient steps.")] = 500,
    group: Annotated[int, typer.Option("--group", "-G", help="Samples per prompt per step (G).")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 0.05,
    kl: Annotated[Optional[List[str]], typer.Option(
        "--kl", help="KL coefficient(s) to pi_ref, comma-separated: one run each (default: 0).")] = None,
    kl_mode: Annotated[str, typer.Option("--kl-mode", help=f"{' | '.join(KL_MODES)}: where the KL term goes.")
                       ] = "reward",
    std_norm: Annotated[bool, typer.Option("--std-norm/--no-std-norm", help="GRPO: divide by the group's std.")
                        ] = True,
    clip: Annotated[float, typer.Option("--clip", help="PPO / GRPO ratio clip.")] = 0.2,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", help="Updates per sampled batch (default: 4 for ppo, 1 otherwise).")] = None,
    normalize: Annotated[bool, typer.Option(
        "--normalize/--no-normalize", help="z-score the reward by the training responses' statistics.")] = True,
    length_penalty: Annotated[float, typer.Option(
        "--length-penalty", help="Minus this times the z-scored length (text pools).")] = 0.0,
    points: Annotated[int, typer.Option("--points", help="Evaluations along the run (log-spaced steps).")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the sampling.")] = 0,
    out_dir: OutDirOpt = None, cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    overwrite: OverwriteOpt = False,
):
    """Train policies with GRPO / RLOO / PPO / REINFORCE against a model's reward on its held-out prompts: gold,
    proxy and exact KL per step, Best-of-n at the same exact KL, Gao's RL fit.

    Example: embrm rl overopt --model models/overopt-linear --algo grpo --agg mean,min --transform none,cdf --out results/rl
    """
    claim_out(ctx, out_dir, overwrite)
    model = _load_model(model_dir)
    aggregations = _list(agg, "--agg")
    transforms = _list(transform, "--transform") or ["none"]
    kls = parse_numbers(kl, "--kl")
    with options_named(RL_OPTION):
        for t in transforms:
            if t not in TRANSFORMS:
                raise EmbrmError(f"transform {t!r} is not allowed: use one of {', '.join(TRANSFORMS)}",
                                 field="transform")
        config = RLConfig(algo, policy, steps, group, lr, (kls or [0.0])[0], kl_mode, std_norm, clip, epochs,
                          normalize=normalize, length_penalty=length_penalty, points=points, seed=seed)
        for value in kls or []:
            replace(config, kl=value)  # each coefficient checked before any work
        protocol = model.protocol if aggregations is None else replace(
            model.protocol, aggregations=tuple(a for a in aggregations if a != "warm"))
    ds = data.load(dataset)
    ds.require_pool("RL")
    X = model_embeddings(model, ds, cache_dir)
    with options_named(RL_OPTION):
        result = run_rl(ds, X, model.ensemble, model.split, protocol, config, aggregations=aggregations,
                        transforms=transforms, kls=kls, progress=None if format == Format.text else False)
    extra = {"model_dir": str(model_dir), "command": command_line(ctx)}
    if out_dir is not None:
        result.write(out_dir, extra=extra)
    if format == Format.json:
        return print_json({**extra, **result.to_dict()})
    out.print(result.markdown(), soft_wrap=True, markup=False)
    if out_dir is not None:
        out.print(f"curves, summary.json, report.md and gold_vs_kl.png -> {out_dir}")
