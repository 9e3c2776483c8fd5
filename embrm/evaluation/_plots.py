"""PNG plots of Best-of-n curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, write_atomic
from embrm.evaluation._bon import BonCurves, fit_gao

_X_LABELS = {"kl": "KL(best-of-n || base) = log n - (n-1)/n  [nats]", "d": "d = sqrt(KL)", "n": "n (log scale)"}


def _frame(curves) -> pl.DataFrame:
    df = curves.frame() if isinstance(curves, BonCurves) else curves
    if not isinstance(df, pl.DataFrame):
        raise EmbrmError("plot: pass a BonCurves or its curves_frame() table")
    missing = {"agg", "n", "gold", "proxy"} - set(df.columns)
    if missing:
        raise EmbrmError(f"plot: the curves table lacks columns {sorted(missing)}: pass curves_frame(...) output")
    if "kl" not in df.columns:
        n = df["n"].to_numpy().astype(float)
        df = df.with_columns(pl.Series("kl", np.log(n) - (n - 1) / n))
    if "d" not in df.columns:
        df = df.with_columns(pl.col("kl").sqrt().alias("d"))
    return df


def pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # headless by default; keep a notebook's inline backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Write a figure as PNG (creating the folder; atomically, so a full disk leaves no half image) and close it;
    returns the path."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path


def plot_bon(curves, path, x: str = "kl", *, references: dict[str, float] | None = None,
             show_random_oracle: bool = True, title: str | None = None) -> Path:
    """Over-optimisation picture: gold reward of the Best-of-n pick vs ``x`` (one line per aggregation, left) and
    the proxy score of the pick vs ``x`` (right). ``x``: "kl" (default), "d" or "n".

    references: {label: gold value} drawn as horizontal dotted lines with markers (e.g. a published RM's pick).
    show_random_oracle: dashed grey lines for the random pick (pool mean) and the oracle (pool max), when the table
    has those columns. Returns the written path.
    """
    if x not in _X_LABELS:
        raise EmbrmError(f"plot_bon: x = {x!r}: use one of {', '.join(_X_LABELS)}")
    df = _frame(curves)
    plt = pyplot()
    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    aggs = list(dict.fromkeys(df["agg"].to_list()))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(aggs) > len(colors):  # more lines than the default cycle: 20 distinct colours before any repeats
        colors = [plt.get_cmap("tab20")(i) for i in range(20)]
    for i, agg in enumerate(aggs):
        sub = df.filter(pl.col("agg") == agg).sort("n")
        xs = sub[x].to_numpy()
        c = colors[i % len(colors)]
        ax_g.plot(xs, sub["gold"].to_numpy(), label=agg, color=c, lw=1.8)
        ax_p.plot(xs, sub["proxy"].to_numpy(), label=agg, color=c, lw=1.8)
    first = df.filter(pl.col("agg") == aggs[0]).sort("n")
    xs = first[x].to_numpy()
    if show_random_oracle and {"random", "oracle"} <= set(df.columns):
        ax_g.plot(xs, first["random"].to_numpy(), ls="--", color="0.55", lw=1, label="random pick")
        ax_g.plot(xs, first["oracle"].to_numpy(), ls="--", color="0.25", lw=1, label="oracle (pool max)")
    for j, (label, value) in enumerate((references or {}).items()):
        c = colors[(len(aggs) + j) % len(colors)]
        ax_g.axhline(value, ls=":", color=c, lw=1.2)
        ax_g.plot([xs[-1]], [value], marker="D", color=c, ls="none", label=f"{label} (reference)")
    for ax, what in ((ax_g, "gold reward of the pick"), (ax_p, "proxy score of the pick")):
        ax.set_xlabel(_X_LABELS[x])
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if x == "n":
            ax.set_xscale("log")
    ax_g.set_title("Gold (true) reward vs optimisation")
    ax_p.set_title("Proxy reward vs optimisation")
    ax_g.legend(fontsize=8, loc="best")
    n_max, points = int(df["n"].max()), df["n"].n_unique()
    grid = f"n = 1..{n_max}" if points == n_max else f"{points} values of n in 1..{n_max}"
    fig.suptitle(title or f"Best-of-n, {grid}")
    return save_figure(fig, path)


def plot_gao_fit(curves, path, *, title: str | None = None) -> Path:
    """Gold gain over n = 1 vs d = sqrt(KL) per aggregation, with Gao et al.'s least-squares fit
    R(d) = d (alpha - beta d) dashed; the legend gives alpha and beta. Returns the written path."""
    df = _frame(curves)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, agg in enumerate(dict.fromkeys(df["agg"].to_list())):
        sub = df.filter(pl.col("agg") == agg).sort("n")
        d = sub["d"].to_numpy()
        r = sub["gold"].to_numpy() - sub["gold"][0]
        c = colors[i % len(colors)]
        ax.plot(d, r, color=c, lw=1.6, label=agg)
        if len(d) >= 3:
            alpha, beta = fit_gao(d, r)
            grid = np.linspace(0, d.max(), 200)
            ax.plot(grid, grid * (alpha - beta * grid), ls="--", color=c, lw=1,
                    label=f"{agg} fit: a={alpha:.2f}, b={beta:.2f}")
    ax.set_xlabel(_X_LABELS["d"])
    ax.set_ylabel("gold gain over n = 1")
    ax.set_title(title or "Gao et al. fit  R(d) = d (alpha - beta d)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
