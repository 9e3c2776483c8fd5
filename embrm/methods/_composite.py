"""Constrained composite rewards for Best-of-n selection (Moskovitz et al. 2023, "Confronting reward model
overoptimization with constrained RLHF").

Several component rewards (columns of an (n, C) array ``Z``, z-scored on the training rows) are combined with
weights ``w``. Each component has a threshold ("proxy point") ``t_c``: the component value past which gold stops
improving. Best-of-n draws a uniformly random n-subset of a prompt's pool and keeps the candidate with the highest
selection score:

    fixed        sum_c w_c z_c                          (the unconstrained composite)
    clipped      sum_c w_c min(z_c, t_c)                (a simple baseline: no credit past a proxy point)
    lagrangian   sum_c (w_c - lam_c(n)) z_c             lam(n) >= 0 from dual ascent (``fit_multipliers``)

The Lagrangian solves, separately for every n, max E[sum_c w_c z_c at the pick] s.t. E[z_c at the pick] <= t_c
(expectations over training prompts and random subsets). Its dual ascent is projected subgradient ascent
``lam <- max(0, lam + lr_k (E[z at pick | lam] - t))`` with steps ``lr / sqrt(k + 1)``; because the pick (and so
the constraint) is piecewise constant in lam, the returned multipliers are the iterate with the best primal
objective among those within ``tol`` of feasibility (primal recovery; the least-violating iterate if none is).
When no constraint binds the violation is negative from lam = 0 on, so lam stays exactly 0.

Proxy points (``proxy_points``) come from each component's own Best-of-n curve on training prompts: the n* where
that curve's expected gold peaks, and t_c = E[z_c at the pick] at n*. A component whose gold curve never turns
down gets its value at n_max (a threshold that does not bind at any n <= n_max).

All expectations are exact Best-of-n expectations of several value channels at once (``embrm.evaluation.pick_means``:
the weights C(i-1, n-1) / C(N, n) over selection-score ranks, ties sharing the pick), vectorised over prompts,
candidates, n and selection scores over the padded pools of ``embrm.evaluation.group_pools``; a prompt contributes to n
only when n <= its pool size. The grid of n is ``embrm.evaluation.log_grid``; the split, labels and fits come from
embrm.pipeline. The only Python loop here is over dual-ascent iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from embrm.core import EmbrmError
from embrm.evaluation import (
    bon_weight_tensor,
    excluded_indicator,
    group_pools,
    kl_bon,
    length_reward,
    log_grid,
    pick_means,
    pyplot,
    save_figure,
)
from embrm.methods._sections import MethodSummary, rates, table
from embrm.pipeline import LabelConfig, Learner, fit_pairs, split, training_pairs

__all__ = ["proxy_points", "ProxyPoints", "fit_multipliers", "Multipliers", "selection_scores", "composite_curves",
           "composite_study", "fit_proxy_reward", "plot_composite", "COMPONENTS", "CompositeSummary", "Component",
           "CompositeSelection", "GRID_POINTS"]

COMPONENTS = ("bt", "bt_flip", "length")
GRID_POINTS = 16  # points of the log grid of n the multipliers are fitted on (embrm.evaluation.log_grid)


# ----------------------------------------------------------------------------- proxy points and multipliers

@dataclass
class ProxyPoints:
    """Per component: threshold t (C,), the n* where its own BoN gold curve peaks (C,), and the curves
    gold (C, n_max) / value (C, n_max) of that component's own Best-of-n, n = 1..n_max."""

    thresholds: np.ndarray
    n_peak: np.ndarray
    gold: np.ndarray
    value: np.ndarray


def _check_components(Z, n_rows: int | None = None) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2 or Z.shape[1] == 0:
        raise EmbrmError(f"components: expected an (n, C) array of component rewards, got shape {Z.shape}")
    if n_rows is not None and Z.shape[0] != n_rows:
        raise EmbrmError(f"components: {Z.shape[0]} rows but {n_rows} responses: pass one row per response")
    if not np.isfinite(Z).all():
        raise EmbrmError("components: contain NaN/inf: compute finite component rewards for every response")
    return Z


def _gold_mask(gold, mask) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(gold, dtype=np.float64)
    keep = np.isfinite(g)
    if mask is not None:
        keep &= np.asarray(mask, bool)
    return g, keep


def proxy_points(components, gold, prompt_index, *, mask=None, n_max: int | None = None) -> ProxyPoints:
    """Estimate each component's proxy point from its own Best-of-n curve on the rows in ``mask`` (the TRAINING
    prompts): n* = argmax_n E[gold | BoN on z_c], t_c = E[z_c at the pick] at n*."""
    Z = _check_components(components)
    g, keep = _gold_mask(gold, mask)
    pools = group_pools(prompt_index, keep)
    n_max = int(pools.sizes.min()) if n_max is None else int(n_max)
    if not 1 <= n_max <= int(pools.sizes.max()):
        raise EmbrmError(f"n_max = {n_max}: must be between 1 and the largest pool ({int(pools.sizes.max())})")
    ns = np.arange(1, n_max + 1)
    zp = pools.gather(Z)
    values = np.concatenate([pools.gather(g)[..., None], zp], axis=2)
    m = pick_means(np.moveaxis(zp, 2, 0), values, pools, ns)        # (C, n_max, 1 + C)
    C = Z.shape[1]
    gold_c, value_c = m[:, :, 0], m[np.arange(C), :, 1 + np.arange(C)]
    peak = np.argmax(gold_c, axis=1)
    return ProxyPoints(value_c[np.arange(C), peak], peak + 1, gold_c, value_c)


def selection_scores(zp: np.ndarray, weights, thresholds=None, multipliers=None) -> np.ndarray:
    """Selection scores (A, P, N) from components zp (P, N, C): fixed (A = 1), clipped (``thresholds``) or
    Lagrangian (``multipliers`` (G, C): one score per n)."""
    w = np.asarray(weights, np.float64)
    if multipliers is not None:
        return np.einsum("pnc,gc->gpn", zp, w[None] - np.asarray(multipliers, np.float64))
    if thresholds is not None:
        zp = np.minimum(zp, np.asarray(thresholds, np.float64))
    return (zp @ w)[None]


@dataclass
class Multipliers:
    """Lagrange multipliers lam (G, C) per n in ``n``; the constraint values E[z_c at pick] - t_c (G, C) and the
    primal objective E[w . z at pick] (G,) at the returned multipliers (on the fitting prompts)."""

    n: np.ndarray
    lam: np.ndarray
    violation: np.ndarray
    objective: np.ndarray
    steps: int


def _check_weights(weights, C: int) -> np.ndarray:
    w = np.ones(C) if weights is None else np.asarray(weights, np.float64).ravel()
    if w.shape != (C,) or not np.isfinite(w).all():
        raise EmbrmError(f"weights: expected {C} finite numbers (one per component), got {np.shape(weights)}")
    return w


def fit_multipliers(components, prompt_index, thresholds, *, weights=None, ns=None, mask=None, steps: int = 300,
                    lr: float = 1.0, tol: float = 0.01) -> Multipliers:
    """Dual ascent for the Lagrangian composite on the rows in ``mask`` (TRAINING prompts), one multiplier vector
    per n in ``ns`` (default: a log grid up to the smallest pool). See the module docstring."""
    Z = _check_components(components)
    C = Z.shape[1]
    w = _check_weights(weights, C)
    t = np.asarray(thresholds, np.float64).ravel()
    if t.shape != (C,) or np.isnan(t).any():
        raise EmbrmError(f"thresholds: expected {C} numbers (one per component), got shape {np.shape(thresholds)}")
    if steps < 1 or not lr > 0:
        raise EmbrmError(f"dual ascent needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    pools = group_pools(prompt_index, mask)
    ns = log_grid(int(pools.sizes.min()), GRID_POINTS) if ns is None else np.asarray(ns, np.int64)
    zp = pools.gather(Z)
    plan = bon_weight_tensor(pools.sizes, ns)
    lam = np.zeros((len(ns), C))
    hist_lam, hist_e = np.empty((steps, len(ns), C)), np.empty((steps, len(ns), C))
    for k in range(steps):
        e = pick_means(selection_scores(zp, w, multipliers=lam), zp, pools, ns, diagonal=True, weights=plan)
        hist_lam[k], hist_e[k] = lam, e
        lam = np.maximum(0.0, lam + lr / np.sqrt(k + 1.0) * (e - t))
    viol = hist_e - t                                        # (steps, G, C)
    worst = viol.max(axis=2)
    obj = hist_e @ w                                         # (steps, G)
    feasible = worst <= tol
    pick = np.where(feasible.any(axis=0), np.argmax(np.where(feasible, obj, -np.inf), axis=0),
                    np.argmin(worst, axis=0))
    g = np.arange(len(ns))
    return Multipliers(ns, hist_lam[pick, g], viol[pick, g], obj[pick, g], steps)


# ----------------------------------------------------------------------------- curves

def composite_curves(components, gold, prompt_index, *, thresholds, multipliers: Multipliers, weights=None,
                     mask=None, names=None) -> pl.DataFrame:
    """Held-out Best-of-n curves at the n of ``multipliers`` for the fixed, clipped and Lagrangian composites:
    one row per (method, n) with kl, expected gold, random/oracle references and ``z_<name>`` (each component's
    expected standardised value at the pick) and ``lam_<name>`` (Lagrangian rows)."""
    Z = _check_components(components)
    C = Z.shape[1]
    names = [f"c{j}" for j in range(C)] if names is None else list(names)
    w = _check_weights(weights, C)
    g, keep = _gold_mask(gold, mask)
    pools = group_pools(prompt_index, keep)
    ns = multipliers.n
    zp = pools.gather(Z)
    values = np.concatenate([pools.gather(g)[..., None], zp], axis=2)
    fixed = pick_means(selection_scores(zp, w), values, pools, ns)[0]
    clipped = pick_means(selection_scores(zp, w, thresholds=thresholds), values, pools, ns)[0]
    lagr = pick_means(selection_scores(zp, w, multipliers=multipliers.lam), values, pools, ns, diagonal=True)
    W, contrib = bon_weight_tensor(pools.sizes, ns)
    gp = pools.gather(g)
    count = contrib.sum(axis=0)
    rand = (gp.sum(axis=1) / pools.sizes) @ contrib / count
    orac = np.where(pools.valid, gp, -np.inf).max(axis=1) @ contrib / count
    frames = []
    for method, m in (("fixed", fixed), ("clipped", clipped), ("lagrangian", lagr)):
        lam = multipliers.lam if method == "lagrangian" else np.zeros((len(ns), C))
        frames.append(pl.DataFrame({
            "method": [method] * len(ns), "n": ns, "kl": kl_bon(ns), "gold": m[:, 0], "random": rand,
            "oracle": orac, **{f"z_{c}": m[:, 1 + j] for j, c in enumerate(names)},
            **{f"lam_{c}": lam[:, j] for j, c in enumerate(names)}}))
    return pl.concat(frames)


# ----------------------------------------------------------------------------- real-data study

def fit_proxy_reward(ds, X, train_ids, *, n_pairs: int = 10_000, beta: float | None = 10.0,
                     flip: float | None = None, k: int = 5, seed: int = 0) -> tuple[np.ndarray, pl.DataFrame]:
    """A linear Bradley-Terry ensemble's mean reward (n,) trained on simulated pairs from the TRAINING prompts
    (annotator: ``beta`` or ``flip``), and those pairs."""
    pairs = training_pairs(ds, LabelConfig("simulated", beta, flip, n_pairs).resolved(ds), train_ids, seed)
    ens = fit_pairs(ds, X, pairs, Learner("linear"), k=k, seed=seed)
    return ens.predict(X).mean(axis=1).astype(np.float64), pairs


def _component_columns(ds, X, train_ids, names, *, n_pairs: int, k: int, seed: int) -> np.ndarray:
    bad = [c for c in names if c not in COMPONENTS]
    if bad or not names:
        raise EmbrmError(f"unknown component {bad[0] if bad else '(none)'}: use a comma list of "
                         f"{', '.join(COMPONENTS)}")
    cols = []
    for name in names:
        if name == "length":
            cols.append(np.log1p(length_reward(ds.responses).astype(np.float64)))
        elif name == "bt":
            cols.append(fit_proxy_reward(ds, X, train_ids, n_pairs=n_pairs, beta=10.0, k=k, seed=seed)[0])
        else:  # a second learned reward from other (noisier, differently drawn) labels
            cols.append(fit_proxy_reward(ds, X, train_ids, n_pairs=n_pairs, flip=0.25, k=k, seed=seed + 1)[0])
    return np.stack(cols, axis=1)


@dataclass(frozen=True)
class Component:
    """One component: its threshold (proxy point, z), the n* where its own Best-of-n gold peaks on the training
    prompts and that curve's gold there and at n_max, and the Lagrangian's multiplier and constraint value (training
    prompts) at n_max."""

    name: str
    threshold: float
    proxy_point_n: int
    own_gold_at_proxy_point: float
    own_gold_at_n_max: float
    multiplier_at_n_max: float
    train_violation_at_n_max: float


@dataclass(frozen=True)
class CompositeSelection:
    """One selection rule (fixed | clipped | lagrangian) on the held-out prompts: gold at n_max, its peak (and where),
    the drop from it, each component's mean z at the pick at n_max, and the share of excluded picks at n_max when the
    pools keep excluded responses."""

    method: str
    gold_at_n_max: float
    peak_gold: float
    peak_n: int
    drop_from_peak: float
    z_at_n_max: tuple[float, ...]  # one per component, in the summary's component order
    excluded_pick_rate: float | None = None


@dataclass(frozen=True)
class CompositeSummary(MethodSummary):
    """The composite study: the components (thresholds, multipliers) fitted on training prompts and the three
    selection rules compared on held-out prompts at the n of ``n``."""

    dataset: str
    seed: int
    components: tuple[Component, ...]
    n_train_prompts: int
    n_test_prompts: int
    n: tuple[int, ...]
    random: float
    oracle: float
    selections: tuple[CompositeSelection, ...]
    evaluated_on: str
    with_excluded: bool = False

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    @property
    def thresholds(self) -> dict[str, float]:
        return {c.name: c.threshold for c in self.components}

    def excluded_picks(self) -> list[tuple[str, float]]:
        return [(m.method, m.excluded_pick_rate) for m in self.selections if m.excluded_pick_rate is not None]

    def to_dict(self) -> dict:
        cs = self.components
        d = {"dataset": self.dataset, "seed": self.seed, "components": self.names,
             "n_train_prompts": self.n_train_prompts, "n_test_prompts": self.n_test_prompts, "n": list(self.n),
             "thresholds": self.thresholds, "proxy_point_n": {c.name: c.proxy_point_n for c in cs},
             "own_bon_gold_train": {c.name: {"at_proxy_point": c.own_gold_at_proxy_point,
                                             "at_n_max": c.own_gold_at_n_max} for c in cs},
             "multipliers_at_n_max": {c.name: c.multiplier_at_n_max for c in cs},
             "train_violation_at_n_max": {c.name: c.train_violation_at_n_max for c in cs},
             "random": self.random, "oracle": self.oracle,
             "methods": {m.method: {"gold_at_n_max": m.gold_at_n_max, "peak_gold": m.peak_gold, "peak_n": m.peak_n,
                                    "drop_from_peak": m.drop_from_peak,
                                    **{f"z_{c}_at_n_max": z for c, z in zip(self.names, m.z_at_n_max)}}
                         for m in self.selections},
             "evaluated_on": self.evaluated_on}
        if self.excluded_picks():
            d["excluded_pick_rate"] = dict(self.excluded_picks())
        return d | {"with_excluded": self.with_excluded}

    def markdown(self) -> str:
        rows = [[m.method, f"{m.peak_gold:.3f} ({m.peak_n})", m.gold_at_n_max, m.drop_from_peak,
                 *[f"{z:+.2f}" for z in m.z_at_n_max]] for m in self.selections]
        cs = self.components
        return (f"{self.dataset}: held-out Best-of-n at {len(self.n)} values of n in 1..{self.n[-1]} (random "
                f"{self.random:.3f}, oracle {self.oracle:.3f}; {self.evaluated_on}).\n\n"
                + table(["selection", "peak gold (n)", "gold at n_max", "drop from peak",
                         *[f"z {c} at n_max" for c in self.names]], rows)
                + "\n\nThresholds (z): " + ", ".join(f"{c.name} {c.threshold:+.2f} (n* = {c.proxy_point_n})"
                                                      for c in cs)
                + f"; multipliers at n_max: {rates((c.name, c.multiplier_at_n_max) for c in cs)}.")


def composite_study(ds, X, *, seed: int = 0, components=("bt", "length"), n_max: int | None = None,
                    n_pairs: int = 10_000, k: int = 5, test_size: float = 0.2, weights=None,
                    steps: int = 300) -> tuple[CompositeSummary, pl.DataFrame]:
    """Train the components on TRAINING prompts, estimate proxy points and multipliers there, and compare the
    fixed, clipped and Lagrangian composites on HELD-OUT prompts. Returns (CompositeSummary, curves frame).

    Components: ``bt`` (linear BT ensemble mean, BT annotator beta = 10), ``bt_flip`` (the same learner on labels
    with 25 % flips, other seed), ``length`` (log(1 + characters)); each z-scored on the training rows."""
    if not ds.has_gold:
        raise EmbrmError(f"{ds.name}: no gold scores: the composite study needs a pool with a gold column")
    names = list(components)
    if "length" in names and not ds.texts:
        raise EmbrmError(f"{ds.name} is arrays without texts: the length component needs them; use --components "
                         f"bt,bt_flip")
    parts = split(ds, LabelConfig("simulated", n_pairs=n_pairs), test_size, seed)
    train_ids, test_ids = parts.train, parts.test
    pid = ds.responses["prompt_id"].cast(pl.Utf8)
    train = pid.is_in(pl.Series(train_ids).implode()).to_numpy()
    gold = ds.responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    raw = _component_columns(ds, X, train_ids, names, n_pairs=n_pairs, k=k, seed=seed)
    ref = raw[train & np.isfinite(gold)]
    Z = (raw - ref.mean(axis=0)) / np.where(ref.std(axis=0) > 0, ref.std(axis=0), 1.0)
    pp = proxy_points(Z, gold, pid.to_numpy(), mask=train, n_max=n_max)
    test = ~train & np.isfinite(gold)
    n_hi = min(len(pp.gold[0]), int(group_pools(pid.to_numpy(), test).sizes.min()))
    mult = fit_multipliers(Z, pid.to_numpy(), pp.thresholds, weights=weights, ns=log_grid(n_hi, GRID_POINTS),
                           mask=train & np.isfinite(gold), steps=steps)
    frame = composite_curves(Z, gold, pid.to_numpy(), thresholds=pp.thresholds, multipliers=mult,
                             weights=weights, mask=~train, names=names)
    summary = _summary(ds, names, pp, mult, frame, len(train_ids), len(test_ids), seed)
    if ds.excluded.any():  # the same selections, scored by "is the pick excluded" instead of gold
        share = composite_curves(Z, excluded_indicator(gold, ds.excluded), pid.to_numpy(), thresholds=pp.thresholds,
                                 multipliers=mult, weights=weights, mask=~train, names=names)
        last = share.filter(pl.col("n") == share["n"].max())
        rate = dict(zip(last["method"].to_list(), last["gold"].to_list()))
        summary = replace(summary, selections=tuple(replace(m, excluded_pick_rate=rate[m.method])
                                                    for m in summary.selections))
    return summary, frame


def _summary(ds, names, pp: ProxyPoints, mult: Multipliers, frame: pl.DataFrame, n_train: int, n_test: int,
             seed: int) -> CompositeSummary:
    selections = []
    for method in ("fixed", "clipped", "lagrangian"):
        sub = frame.filter(pl.col("method") == method).sort("n")
        g = sub["gold"].to_numpy()
        selections.append(CompositeSelection(method, float(g[-1]), float(g.max()), int(sub["n"][int(np.argmax(g))]),
                                             float(g.max() - g[-1]), tuple(float(sub[f"z_{c}"][-1]) for c in names)))
    components = tuple(Component(c, float(t), int(n), float(g.max()), float(g[-1]), float(lam), float(v))
                       for c, t, n, g, lam, v in zip(names, pp.thresholds, pp.n_peak, pp.gold, mult.lam[-1],
                                                     mult.violation[-1]))
    last = frame.filter(pl.col("method") == "fixed").sort("n")
    return CompositeSummary(ds.name, seed, components, n_train, n_test, tuple(int(v) for v in mult.n),
                            float(last["random"][-1]), float(last["oracle"][-1]), tuple(selections),
                            "held-out prompts (components, thresholds, multipliers: training)")


def plot_composite(frame: pl.DataFrame, path, *, thresholds: dict | None = None, title: str | None = None):
    """PNG: held-out gold vs KL(BoN) per method (random / oracle dashed) and each component's mean standardised
    value at the pick vs n (colour: component, line style: method; ``thresholds`` {name: t} as thin horizontal
    lines). Returns the written path."""
    plt = pyplot()

    comps = [c[2:] for c in frame.columns if c.startswith("z_")]
    fig, (ax_g, ax_z) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    styles = {"fixed": "-", "clipped": ":", "lagrangian": "--"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, ls) in enumerate(styles.items()):
        sub = frame.filter(pl.col("method") == method).sort("n")
        ax_g.plot(sub["kl"], sub["gold"], ls=ls, marker="o", ms=3, color=colors[i], label=method)
        for j, c in enumerate(comps):
            ax_z.plot(sub["n"], sub[f"z_{c}"], ls=ls, color=colors[3 + j], label=f"{c} ({method})")
    for j, c in enumerate(comps):
        if thresholds and c in thresholds:
            ax_z.axhline(thresholds[c], color=colors[3 + j], lw=0.8, alpha=0.6)
    ref = frame.filter(pl.col("method") == "fixed").sort("n")
    ax_g.plot(ref["kl"], ref["random"], ls="--", color="0.6", lw=1, label="random pick")
    ax_g.plot(ref["kl"], ref["oracle"], ls="--", color="0.3", lw=1, label="oracle (pool max)")
    ax_g.set(xlabel="KL(best-of-n || base) = log n - (n-1)/n", ylabel="held-out gold of the pick",
             title="Gold vs KL")
    ax_z.set(xlabel="n (log scale)", ylabel="component at the pick (z-score)", xscale="log",
             title="Components at the pick (thin lines: thresholds)")
    for ax in (ax_g, ax_z):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Constrained composite rewards (Best-of-n)")
    return save_figure(fig, path, dpi=110)
