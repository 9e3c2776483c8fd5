"""CLI commands `embrm composite` and `embrm policy` (thin wrappers over embrm.methods.composite / .policy).

Wire them in with ``register(app)``. Each command loads a pool with gold, embeds it through the cache (packaged
MiniLM by default; a warm cache never loads the model), runs the study, prints a table and, with --out, writes
summary.json, curves.parquet and a PNG (gold vs KL).
"""


from pathlib import Path
from typing import List, Optional

import typer

from embrm.methods.cli_common import pool_embeddings, write_outputs


def _split(values: list[str] | None) -> list[str]:
    """Comma lists and repeated options alike: ["a,b", "c"] -> ["a", "b", "c"]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _floats(values: list[str] | None, what: str) -> list[float] | None:
    from embrm.errors import EmbrmError

    items = _split(values)
    if not items:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise EmbrmError(f"{what}: expected numbers like 0.01,0.1,1,10, got {','.join(items)!r}") from None


def register(app: typer.Typer) -> None:
    """Add the `composite` and `policy` commands to ``app``."""
    from rich.table import Table

    from embrm.cli import CacheDir, DataDir, Format, FormatOpt, friendly, out, print_json

    @app.command("composite")
    @friendly
    def composite(
        dataset: str = typer.Argument(..., help="A named pool with gold (e.g. alpaca-eval-models) or a pool file."),
        components: Optional[List[str]] = typer.Option(None, "--components", help="Comma list of bt | bt_flip | length (default bt,length)."),
        n_max: Optional[int] = typer.Option(None, "--n-max", help="Largest n (default: the smallest pool)."),
        n_pairs: int = typer.Option(10_000, "--n-pairs", help="Simulated pairs per learned component (training prompts)."),
        k: int = typer.Option(5, "--ensemble", "-k", help="Linear BT members per learned component."),
        seed: int = typer.Option(0, "--seed"),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Write summary.json, curves.parquet, gold_vs_kl.png here."),
        cache_dir: Path = CacheDir, data_dir: Optional[Path] = DataDir, format: Format = FormatOpt,
    ):
        """Best-of-n with a constrained composite reward: fixed sum vs clipped vs Lagrangian (Moskovitz et al.).

        Example: embrm composite alpaca-eval-models --components bt,length --out runs/composite
        """
        from embrm.methods.composite import composite_study, plot_composite

        ds, X = pool_embeddings(dataset, data_dir, cache_dir, progress=format != Format.json)
        summary, frame = composite_study(ds, X, seed=seed, components=_split(components) or ["bt", "length"],
                                         n_max=n_max, n_pairs=n_pairs, k=k)
        write_outputs(out_dir, summary, frame, "curves", lambda p: plot_composite(frame, p, thresholds=summary["thresholds"],
                                                                 title=f"{ds.name}: composite BoN"))
        if format == Format.json:
            return print_json(summary)
        names = summary["components"]
        table = Table("selection", "peak gold (n)", "gold at n_max", "drop", *[f"z {c} at n_max" for c in names],
                      title=f"{ds.name}: held-out Best-of-n, n = 1..{summary['n'][-1]} "
                            f"(random {summary['random']:.3f}, oracle {summary['oracle']:.3f})")
        for method, m in summary["methods"].items():
            table.add_row(method, f"{m['peak_gold']:.3f} ({m['peak_n']})", f"{m['gold_at_n_max']:.3f}",
                          f"{m['drop_from_peak']:.3f}", *[f"{m[f'z_{c}_at_n_max']:+.2f}" for c in names])
        out.print(table)
        out.print("thresholds (z): " + ", ".join(f"{c} {t:+.2f} (n* = {summary['proxy_point_n'][c]})"
                                                 for c, t in summary["thresholds"].items())
                  + "; multipliers at n_max: " + ", ".join(f"{c} {v:.3f}"
                                                          for c, v in summary["multipliers_at_n_max"].items()))

    @app.command("policy")
    @friendly
    def policy(
        dataset: str = typer.Argument(..., help="A named pool with gold (e.g. alpaca-eval-models) or a pool file."),
        betas: Optional[List[str]] = typer.Option(None, "--betas", help="Comma list of KL-optimum temperatures (default: 31 log-spaced, 1e-3..1e3)."),
        dpo: bool = typer.Option(True, "--dpo/--no-dpo", help="Also train DPO and RPO linear softmax policies."),
        rpo_weight: float = typer.Option(0.01, "--rpo-weight", help="Weight of RPO's SFT (chosen-response NLL) term."),
        epochs: int = typer.Option(30, "--epochs", help="DPO / RPO epochs."),
        dpo_beta: float = typer.Option(0.1, "--dpo-beta", help="DPO's beta (implicit reward scale)."),
        n_pairs: int = typer.Option(10_000, "--n-pairs", help="Simulated pairs on the training prompts."),
        label_beta: float = typer.Option(1.0, "--label-beta", help="Simulated BT annotator sharpness (10: <5 % errors)."),
        seed: int = typer.Option(0, "--seed"),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Write summary.json, curves.parquet, gold_vs_kl.png here."),
        cache_dir: Path = CacheDir, data_dir: Optional[Path] = DataDir, format: Format = FormatOpt,
    ):
        """Policy-side over-optimisation on pools: the KL-regularised optimum sweep and DPO / RPO training.

        Example: embrm policy alpaca-eval-models --epochs 30 --rpo-weight 0.01 --out runs/policy
        """
        from embrm.methods.policy import plot_policy, policy_study

        ds, X = pool_embeddings(dataset, data_dir, cache_dir, progress=format != Format.json)
        summary, frame = policy_study(ds, X, seed=seed, betas=_floats(betas, "--betas"), dpo=dpo,
                                      rpo_weight=rpo_weight, epochs=epochs, dpo_beta=dpo_beta, n_pairs=n_pairs,
                                      label_beta=label_beta)
        ko = summary["kl_optimum"]
        write_outputs(out_dir, summary, frame, "curves", lambda p: plot_policy(
            frame, p, gao_rl=(ko["gao_rl_alpha"], ko["gao_rl_beta"]), title=f"{ds.name}: policy over pools"))
        if format == Format.json:
            return print_json(summary)
        table = Table("curve", "peak gold", "at (beta | n | epoch)", "KL at peak", "gold at end", "KL at end",
                      title=f"{ds.name}: held-out expected gold (random {summary['random']:.3f}, "
                            f"oracle {summary['oracle']:.3f})")
        for name in ("kl_optimum", "bon", "dpo", "rpo"):
            if name in summary:
                c = summary[name]
                table.add_row(name, f"{c['peak_gold']:.3f}", f"{c['peak_at']:g}", f"{c['peak_kl']:.2f}",
                              f"{c['end_gold']:.3f}", f"{c['end_kl']:.2f}")
        out.print(table)
        out.print(f"Gao RL fit R(d) = d (a - b log d): a = {ko['gao_rl_alpha']:.3f}, b = {ko['gao_rl_beta']:.3f}")
