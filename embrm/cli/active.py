"""`embrm active`: an active labelling campaign (embrm.active) on a pool with gold, from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from embrm.active import STRATEGIES, ActiveConfig, run_active
from embrm.cli.common import (
    CacheDirOpt,
    DataOptions,
    DatasetArg,
    EmbedderOptions,
    Format,
    FormatOpt,
    OutDirOpt,
    OverwriteOpt,
    claim_out,
    friendly,
    grouped,
    out,
    parse_numbers,
    print_json,
    split_list,
)
from embrm.core import EmbrmError


@friendly
@grouped(data=DataOptions, embedder=EmbedderOptions)
def active(
    ctx: typer.Context, dataset: DatasetArg, data: DataOptions, embedder: EmbedderOptions,
    strategies: Annotated[Optional[List[str]], typer.Option(
        "--strategies", help=f"Comma-separated: {', '.join(STRATEGIES)} (default: all).")] = None,
    seed_pairs: Annotated[int, typer.Option("--seed-pairs", help="Random labels before the first round.")] = 50,
    batch: Annotated[int, typer.Option("--batch", help="Pairs labelled per round.")] = 50,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds of selection, labelling and refit.")] = 10,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds (prompt split, labels).")] = "0,1,2",
    samples: Annotated[int, typer.Option(
        "--samples", help="Posterior draws for disagreement, BALD and Thompson sampling.")] = 16,
    prior_c: Annotated[float, typer.Option("--C", help="The Bayesian head's inverse prior strength.")] = 1.0,
    lcb_beta: Annotated[float, typer.Option("--lcb-beta", help="MaxMinLCB: mean - beta * std.")] = 1.0,
    beta: Annotated[float, typer.Option("--beta", help="Simulated BT annotator sharpness.")] = 10.0,
    flip: Annotated[Optional[float], typer.Option("--flip", help="Instead of --beta: flip this share.")] = None,
    across_prompts: Annotated[bool, typer.Option(
        "--across-prompts", help="Also offer pairs of two prompts' answers (pair-scoring strategies).")] = False,
    test_size: Annotated[float, typer.Option("--test-size", help="Share of prompts held out.")] = 0.2,
    target: Annotated[Optional[float], typer.Option(
        "--target", help="Held-out accuracy to reach (default: random's final accuracy).")] = None,
    out_dir: OutDirOpt = None, cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    overwrite: OverwriteOpt = False,
):
    """Active labelling: from a random seed set, each round picks a batch of pairs on the training prompts by a
    strategy, labels them with the simulated annotator, refits a Bayesian linear BT head and scores it on held-out
    prompts; label-budget curves, labels to reach a target and effects vs random with intervals.

    Example: embrm active alpaca-eval-models --strategies random,dopt,bald --rounds 10 --batch 50 --out runs/active
    """
    claim_out(ctx, out_dir, overwrite)
    names = split_list(strategies)
    if strategies is not None and not names:
        raise EmbrmError(f"--strategies: give a comma-separated list of {', '.join(STRATEGIES)}")
    seed_list = parse_numbers([seeds], "--seeds", int)
    if not seed_list:
        raise EmbrmError(f"--seeds {seeds!r}: give comma-separated integers, e.g. 0,1,2")
    config = ActiveConfig(tuple(names or STRATEGIES), seed_pairs, batch, rounds, tuple(seed_list), samples, prior_c,
                          lcb_beta, across_prompts, test_size, None if flip is not None else beta, flip, target)
    ds = data.load(dataset)
    ds.require_pool("active labelling")
    X = embedder.embed(ds, cache_dir, format).X
    result = run_active(ds, X, config, progress=None if format == Format.text else False)
    if out_dir is not None:
        result.write(out_dir)
    if format == Format.json:
        return print_json(result.to_dict())
    out.print(result.markdown(), soft_wrap=True, markup=False)
    if out_dir is not None:
        out.print(f"curves, summary.json and active.png -> {out_dir}")
