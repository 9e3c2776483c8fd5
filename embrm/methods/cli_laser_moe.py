"""CLI commands `embrm laser` and `embrm moe` (thin wrappers over embrm.methods.laser / .moe).

Wire into the main app with ``register(app)``; the shared option objects and helpers come from embrm.cli (imported
inside ``register`` to avoid an import cycle). No ``from __future__ import annotations`` here: typer resolves the
option annotations (e.g. ``Format``, imported inside ``register``) when the command is defined.
"""

from pathlib import Path
from typing import List, Optional

import typer

from embrm.methods.cli_common import pool_embeddings, write_outputs


def _arms(values: Optional[List[str]]) -> Optional[List[str]]:
    """--arms bt,length --arms slice:koala -> ["bt", "length", "slice:koala"]."""
    if not values:
        return None
    return [a.strip() for v in values for a in v.split(",") if a.strip()]


def register(app: typer.Typer) -> None:
    """Add the `laser` and `moe` commands to ``app``."""
    from rich.table import Table

    from embrm.cli import CacheDir, DataDir, DtypeOpt, Format, FormatOpt, friendly, out, print_json

    @app.command()
    @friendly
    def laser(
        dataset: str = typer.Argument(..., help="A named pool (embrm datasets) or a pool file with gold scores."),
        arms: Optional[List[str]] = typer.Option(None, "--arms", help="Comma-separated arms: bt, length, "
                                                 "slice[:VALUE], noisy, moe (default: bt,length,slice)."),
        alpha: float = typer.Option(0.1, "--alpha", help="LinUCB exploration weight (0 = greedy)."),
        n: Optional[int] = typer.Option(None, "--n", help="Best-of-n size per prompt (default: the full pool)."),
        dim: int = typer.Option(32, "--dim", help="PCA dimension of the prompt contexts (0 = raw embeddings)."),
        warmup: int = typer.Option(0, "--warmup", help="Rounds per arm played in turn before the UCB rule."),
        test_size: float = typer.Option(0.5, "--test-size", help="Share of prompts the bandit runs over (held "
                                        "out from the arms' training)."),
        n_pairs: int = typer.Option(10_000, "--n-pairs", help="Simulated training annotations for the arms."),
        beta: float = typer.Option(10.0, "--beta", help="Simulated BT annotator sharpness."),
        seed: int = typer.Option(0, "--seed"),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Write summary.json, trace.parquet and "
                                               "regret.png here."),
        cache_dir: Path = CacheDir, dtype: str = DtypeOpt, data_dir: Optional[Path] = DataDir,
        format: Format = FormatOpt,
    ):
        """LASeR: a LinUCB bandit picks one reward model (arm) per prompt for Best-of-n; regret and gold vs arms.

        Example: embrm laser alpaca-eval-models --arms bt,length,slice:koala --alpha 0.1 --out runs/laser
        """
        from embrm.methods.laser import laser_experiment, plot_regret

        ds, X = pool_embeddings(dataset, data_dir, cache_dir, dtype, progress=format == Format.text)
        summary, trace = laser_experiment(ds, X, arms=_arms(arms), alpha=alpha, n=n, seed=seed, test_size=test_size,
                                          n_pairs=n_pairs, beta=beta, dim=dim or None, warmup=warmup)
        write_outputs(out_dir, summary, trace, "trace")
        if out_dir is not None:
            plot_regret(trace, out_dir / "regret.png", title=f"LASeR on {ds.name} (alpha={alpha})")
        if format == Format.json:
            return print_json(summary)
        table = Table("pick by", "mean gold (all rounds)", "mean gold (last half)", "rounds played",
                      title=f"LASeR on {ds.name}: {summary['n_rounds']} held-out prompts, Best-of-"
                            f"{n or 'pool'}")
        g, late = summary["mean_gold"], summary["mean_gold_last_half"]
        for key in g:
            played = summary["choices"].get(key[4:], "") if key.startswith("arm:") else ""
            table.add_row(key, f"{g[key]:.4f}", f"{late[key]:.4f}", str(played))
        out.print(table)
        r = summary["regret"]
        out.print(f"cumulative regret: vs best single arm ({summary['best_arm_in_hindsight']}) "
                  f"{r['vs_best_arm']:.3f}, vs per-prompt oracle arm {r['vs_oracle']:.3f}; per round vs oracle "
                  f"{r['per_round_vs_oracle_first_quarter']:.4f} (first quarter) -> "
                  f"{r['per_round_vs_oracle_last_quarter']:.4f} (last quarter)")
        if out_dir is not None:
            out.print(f"wrote {out_dir}/summary.json, trace.parquet, regret.png")

    @app.command()
    @friendly
    def moe(
        dataset: str = typer.Argument(..., help="A named pool (embrm datasets) or a pool file with gold scores."),
        categories: str = typer.Option("auto", "--categories", help="Category column (e.g. dataset), kmeans, or "
                                       "auto (dataset when present, else kmeans)."),
        n_clusters: int = typer.Option(5, "--n-clusters", help="k-means categories when there is no column."),
        routing: str = typer.Option("soft", "--routing", help="soft (router probabilities) | hard (argmax)."),
        shrink: float = typer.Option(200.0, "--shrink", help="Pairs at which an expert gets half weight vs the "
                                     "global head."),
        test_size: float = typer.Option(0.2, "--test-size", help="Share of prompts held out for evaluation."),
        n_pairs: int = typer.Option(10_000, "--n-pairs", help="Simulated training annotations."),
        beta: float = typer.Option(10.0, "--beta", help="Simulated BT annotator sharpness."),
        seed: int = typer.Option(0, "--seed"),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Write summary.json and "
                                               "per_category.parquet here."),
        cache_dir: Path = CacheDir, dtype: str = DtypeOpt, data_dir: Optional[Path] = DataDir,
        format: Format = FormatOpt,
    ):
        """DMoERM-style routed expert heads vs one head trained on everything, on held-out prompts.

        Example: embrm moe alpaca-eval-models --categories dataset --out runs/moe
        """
        from embrm.methods.moe import moe_study

        ds, X = pool_embeddings(dataset, data_dir, cache_dir, dtype, progress=format == Format.text)
        summary, frame = moe_study(ds, X, categories=categories, n_clusters=n_clusters, seed=seed, n_pairs=n_pairs,
                                   beta=beta, test_size=test_size, routing=routing, shrink=shrink)
        write_outputs(out_dir, summary, frame, "per_category")
        if format == Format.json:
            return print_json(summary)
        refs = summary["references"]
        table = Table("reward", "pairwise acc", "spearman", f"BoN-{refs['bon_n']} gold", "BoN gain",
                      title=f"MoE ({summary['categories']}, {len(summary['model']['categories'])} categories) on "
                            f"{ds.name}: {summary['n_test_prompts']} held-out prompts")
        for name, m in summary["held_out"].items():
            table.add_row(name, f"{m['accuracy']:.4f}", f"{m['spearman']:.4f}", f"{m['bon_gold']:.4f}",
                          f"{m['bon_gain']:.3f}")
        table.add_row("random / oracle", "", "", f"{refs['random']:.4f} / {refs['oracle']:.4f}", "")
        out.print(table)
        cat = Table(*frame.columns, title="per category (held out)")
        for row in frame.iter_rows():
            cat.add_row(*("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
        out.print(cat)
        if summary["router_accuracy"] is not None:
            out.print(f"router accuracy on held-out prompts: {summary['router_accuracy']:.3f}")
        if out_dir is not None:
            out.print(f"wrote {out_dir}/summary.json, per_category.parquet")
