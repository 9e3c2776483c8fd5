"""The four methods' commands (`laser`, `moe`, `composite`, `policy`): each assembles its options, embeds through the
shared embedder options, runs its registered method (embrm.methods.run_method: excluded responses dropped unless
--with-excluded), prints the result's one rendering (MethodResult.markdown, the study report's section too) and,
with --out, writes summary.json, its frame as Parquet and its PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from embrm.cli.common import (
    CacheDirOpt,
    DataOptions,
    DatasetArg,
    EmbedderOptions,
    Format,
    FormatOpt,
    OutDirOpt,
    OverwriteOpt,
    SeedOpt,
    WithExcludedOpt,
    claim_out,
    command_line,
    friendly,
    grouped,
    out,
    parse_numbers,
    print_json,
    split_list,
)
from embrm.core import EmbrmError
from embrm.methods import run_method


def _names(values: list[str] | None, option: str) -> list[str] | None:
    """A comma list given but empty (e.g. --arms ,) is a slip, not a request for the default."""
    names = split_list(values)
    if values is not None and not names:
        raise EmbrmError(f"{option}: give a comma-separated list, got {','.join(values)!r}")
    return names or None


def _numbers(values: list[str] | None, option: str) -> list[float] | None:
    _names(values, option)
    return parse_numbers(values, option)


NPairsOpt = Annotated[int, typer.Option("--n-pairs", help="Simulated annotations on the training prompts.")]
BetaOpt = Annotated[float, typer.Option("--beta", help="Simulated BT annotator sharpness.")]


def _run(ctx, name: str, dataset: str, data: DataOptions, embedder: EmbedderOptions, cache_dir: Path, fmt: Format,
         out_dir: Path | None, overwrite: bool, seed: int, with_excluded: bool, **params) -> None:
    """Check --out, load (a pool with gold, before anything is embedded), embed, run the method, write its files,
    print its summary (JSON) or its rendering."""
    claim_out(ctx, out_dir, overwrite)
    ds = data.load(dataset)
    ds.require_pool(name)
    X = embedder.embed(ds, cache_dir, fmt).X
    result = run_method(name, ds, X, seed=seed, with_excluded=with_excluded,
                        progress=None if fmt == Format.text else False, **params)
    if out_dir is not None:
        result.write(out_dir, command=command_line(ctx))
    if fmt == Format.json:
        print_json(result.to_dict())
    else:
        out.print(result.markdown(), soft_wrap=True, markup=False)


@friendly
@grouped(data=DataOptions, embedder=EmbedderOptions)
def laser(
    ctx: typer.Context, dataset: DatasetArg, data: DataOptions, embedder: EmbedderOptions,
    arms: Annotated[Optional[List[str]], typer.Option(
        "--arms", help="Comma-separated arms: bt, length, slice[:VALUE], noisy, moe (default: bt,length,slice).")
    ] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="LinUCB exploration weight (0 = greedy).")] = 0.1,
    n: Annotated[Optional[int], typer.Option("--n", help="Best-of-n size per prompt (default: the full pool).")] = None,
    dim: Annotated[int, typer.Option("--dim", help="PCA dimension of the prompt contexts (0 = raw).")] = 32,
    warmup: Annotated[int, typer.Option("--warmup", help="Rounds per arm played in turn before UCB.")] = 0,
    test_size: Annotated[float, typer.Option("--test-size", help="Share of prompts the bandit runs over.")] = 0.5,
    n_pairs: NPairsOpt = 10_000, beta: BetaOpt = 10.0, seed: SeedOpt = 0, with_excluded: WithExcludedOpt = False,
    out_dir: OutDirOpt = None, cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    overwrite: OverwriteOpt = False,
):
    """LASeR: a LinUCB bandit picks one reward model (arm) per prompt for Best-of-n; regret and gold vs arms.

    Example: embrm laser alpaca-eval-models --arms bt,length,slice:koala --alpha 0.1 --out runs/laser
    """
    if dim < 0:
        raise EmbrmError(f"--dim {dim}: give a PCA dimension >= 1, or 0 for the raw embeddings")
    _run(ctx, "laser", dataset, data, embedder, cache_dir, format, out_dir, overwrite, seed, with_excluded,
         arms=_names(arms, "--arms"), alpha=alpha, n=n, test_size=test_size, n_pairs=n_pairs, beta=beta,
         dim=dim or None, warmup=warmup)


@friendly
@grouped(data=DataOptions, embedder=EmbedderOptions)
def moe(
    ctx: typer.Context, dataset: DatasetArg, data: DataOptions, embedder: EmbedderOptions,
    categories: Annotated[str, typer.Option(
        "--categories", help="Category column (e.g. dataset), kmeans, or auto (dataset when present).")] = "auto",
    n_clusters: Annotated[int, typer.Option("--n-clusters", help="k-means categories without a column.")] = 5,
    routing: Annotated[str, typer.Option("--routing", help="soft (router probabilities) | hard (argmax).")] = "soft",
    shrink: Annotated[float, typer.Option("--shrink", help="Pairs at which an expert gets half weight.")] = 200.0,
    test_size: Annotated[float, typer.Option("--test-size", help="Share of prompts held out.")] = 0.2,
    n_pairs: NPairsOpt = 10_000, beta: BetaOpt = 10.0, seed: SeedOpt = 0, with_excluded: WithExcludedOpt = False,
    out_dir: OutDirOpt = None, cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    overwrite: OverwriteOpt = False,
):
    """DMoERM-style routed expert heads vs one head trained on everything, on held-out prompts.

    Example: embrm moe alpaca-eval-models --categories dataset --out runs/moe
    """
    _run(ctx, "moe", dataset, data, embedder, cache_dir, format, out_dir, overwrite, seed, with_excluded,
         categories=categories, n_clusters=n_clusters, n_pairs=n_pairs, beta=beta, test_size=test_size,
         routing=routing, shrink=shrink)


@friendly
@grouped(data=DataOptions, embedder=EmbedderOptions)
def composite(
    ctx: typer.Context, dataset: DatasetArg, data: DataOptions, embedder: EmbedderOptions,
    components: Annotated[Optional[List[str]], typer.Option(
        "--components", help="Comma list of bt | bt_flip | length (default bt,length).")] = None,
    n_max: Annotated[Optional[int], typer.Option("--n-max", help="Largest n (default: the smallest pool).")] = None,
    k: Annotated[int, typer.Option("--ensemble", "-k", help="Linear BT members per learned component.")] = 5,
    n_pairs: NPairsOpt = 10_000, seed: SeedOpt = 0, with_excluded: WithExcludedOpt = False,
    out_dir: OutDirOpt = None, cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    overwrite: OverwriteOpt = False,
):
    """Best-of-n with a constrained composite reward: fixed sum vs clipped vs Lagrangian (Moskovitz et al.).

    Example: embrm composite alpaca-eval-models --components bt,length --out runs/composite
    """
    _run(ctx, "composite", dataset, data, embedder, cache_dir, format, out_dir, overwrite, seed, with_excluded,
         components=_names(components, "--components") or ["bt", "length"], n_max=n_max, n_pairs=n_pairs, k=k)


@friendly
@grouped(data=DataOptions, embedder=EmbedderOptions)
def policy(
    ctx: typer.Context, dataset: DatasetArg, data: DataOptions, embedder: EmbedderOptions,
    betas: Annotated[Optional[List[str]], typer.Option(
        "--betas", help="Comma list of KL-optimum temperatures (default: 31 log-spaced, 1e-3..1e3).")] = None,
    dpo: Annotated[bool, typer.Option("--dpo/--no-dpo", help="Also train DPO and RPO softmax policies.")] = True,
    rpo_weight: Annotated[float, typer.Option("--rpo-weight", help="Weight of RPO's SFT term.")] = 0.01,
    epochs: Annotated[int, typer.Option("--epochs", help="DPO / RPO epochs.")] = 30,
    dpo_beta: Annotated[float, typer.Option("--dpo-beta", help="DPO's beta (implicit reward scale).")] = 0.1,
    label_beta: Annotated[float, typer.Option("--label-beta", help="Simulated BT annotator sharpness.")] = 1.0,
    n_pairs: NPairsOpt = 10_000, seed: SeedOpt = 0, with_excluded: WithExcludedOpt = False,
    out_dir: OutDirOpt = None, cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    overwrite: OverwriteOpt = False,
):
    """Policy-side over-optimisation on pools: the KL-regularised optimum sweep and DPO / RPO training.

    Example: embrm policy alpaca-eval-models --epochs 30 --rpo-weight 0.01 --out runs/policy
    """
    _run(ctx, "policy", dataset, data, embedder, cache_dir, format, out_dir, overwrite, seed, with_excluded,
         betas=_numbers(betas, "--betas"), dpo=dpo, rpo_weight=rpo_weight, epochs=epochs,
         dpo_beta=dpo_beta, n_pairs=n_pairs, label_beta=label_beta)
