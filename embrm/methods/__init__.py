"""The four methods over cached embeddings and candidate pools, behind one protocol:

    laser       LinUCB selection of a reward model per prompt (Nguyen et al., LASeR)
    moe         routed mixture-of-experts reward heads (Quan, DMoERM)
    composite   constrained composite rewards with per-component thresholds (Moskovitz et al.)
    policy      policy-side over-optimisation on candidate pools: KL-regularised optimum, DPO / RPO

Every method is a callable `study(ds, X, *, seed, **params) -> (typed summary, frame)` that takes its split, labels
and fits from embrm.pipeline and its Best-of-n from embrm.evaluation, adding only its own steps; `run_method` drops
the dataset's excluded responses (unless asked to keep them in the evaluated pools; they never label either way),
times it and returns a MethodResult. A summary is a dataclass read by attribute; it renders itself once (markdown:
the study report's section and the command's output) and becomes a dict only at the JSON boundary:

    result = run_method("composite", ds, X, seed=0, components=["bt", "length"])
    result.summary.selections, result.frame, result.markdown(), result.to_dict(), result.write("results/composite")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Stages, fit_threads, write_atomic
from embrm.data import Dataset
from embrm.evaluation import bon_weight_tensor, pick_means  # moved to embrm.evaluation; kept here for one release
from embrm.methods._composite import (
    COMPONENTS,
    Component,
    CompositeSelection,
    CompositeSummary,
    Multipliers,
    ProxyPoints,
    composite_curves,
    composite_study,
    fit_multipliers,
    fit_proxy_reward,
    plot_composite,
    proxy_points,
    selection_scores,
)
from embrm.methods._laser import (
    LaserSummary,
    LinUCBResult,
    Regret,
    Selection,
    arm_reward_matrix,
    default_arms,
    laser_experiment,
    laser_study,
    linucb_select,
    plot_regret,
    prompt_contexts,
    prompt_means,
    train_arms,
)
from embrm.methods._moe import ExpertModel, MoEReward, MoESummary, RewardScore, moe_study
from embrm.methods._policy import (
    CurveSummary,
    KLCurves,
    PolicyRun,
    PolicySummary,
    default_betas,
    fit_gao_rl,
    kl_optimum_curves,
    plot_policy,
    policy_loss,
    policy_study,
    tilted_policy,
    train_policy,
)
from embrm.methods._sections import MethodSummary, rates


@dataclass(frozen=True)
class Method:
    name: str
    study: Callable[..., tuple[MethodSummary, pl.DataFrame]]
    description: str
    plot: Callable | None = None  # plot(summary, frame, path, title) -> Path
    frame_name: str = "curves"


def _plot_laser(summary: LaserSummary, frame, path, title):
    return plot_regret(frame, path, title=title)


def _plot_composite(summary: CompositeSummary, frame, path, title):
    return plot_composite(frame, path, thresholds=summary.thresholds, title=title)


def _plot_policy(summary: PolicySummary, frame, path, title):
    return plot_policy(frame, path, gao_rl=(summary.gao_rl_alpha, summary.gao_rl_beta), title=title)


REGISTRY: dict[str, Method] = {m.name: m for m in [
    Method("laser", laser_experiment,
           "LASeR (Nguyen et al.): LinUCB picks one reward model per held-out prompt from its embedding",
           plot=_plot_laser, frame_name="trace"),
    Method("moe", moe_study,
           "Mixture-of-experts reward (DMoERM, Quan): a router over prompt categories, per-category experts, "
           "a learned combiner, vs one head trained on everything", frame_name="per_category"),
    Method("composite", composite_study,
           "Constrained composite reward (Moskovitz et al.): Best-of-n on a fixed sum vs a clipped sum vs "
           "Lagrangian selection that keeps each component below its proxy point", plot=_plot_composite),
    Method("policy", policy_study,
           "Policy-side over-optimisation: the KL-regularised optimum over each pool, and DPO / RPO linear "
           "softmax policies trained on the preference pairs (gold and KL on held-out prompts)", plot=_plot_policy),
]}


@dataclass
class MethodResult:
    """A method's run: its typed summary, its table, how long it took, and how to show it."""

    method: Method
    dataset: str
    summary: MethodSummary
    frame: pl.DataFrame
    seconds: float

    @property
    def name(self) -> str:
        return self.method.name

    def to_dict(self) -> dict:
        return {**self.summary.to_dict(), "method": self.name, "dataset": self.dataset, "seconds": self.seconds}

    def markdown(self) -> str:
        """The one rendering: the study report's section, and what `embrm <method>` prints."""
        text = (f"### {self.name}\n\n{self.method.description}. Ran in {self.seconds:.1f} s.\n\n"
                f"{self.summary.markdown()}")
        picks = self.summary.excluded_picks()
        if picks:
            text += ("\n\nShare of evaluated prompts whose pick is an excluded response (excluded_pick_rate): "
                     f"{rates(picks)}.")
        return text

    def plot(self, path) -> Path | None:
        if self.method.plot is None:
            return None
        return self.method.plot(self.summary, self.frame, Path(path), f"{self.name} on {self.dataset}")

    def write(self, out_dir, **extra) -> dict[str, Path]:
        """summary.json, <frame>.parquet and the method's PNG (if it has one) under out_dir, each written
        atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"summary": out / "summary.json", "frame": out / f"{self.method.frame_name}.parquet"}
        write_atomic(paths["summary"], json.dumps({**extra, **self.to_dict()}, indent=2, default=str) + "\n")
        write_atomic(paths["frame"], self.frame.write_parquet)
        png = self.plot(out / f"{self.name}.png")
        if png is not None:
            paths["plot"] = png
        return paths


def run_method(name: str, ds: Dataset, X: np.ndarray, *, seed: int = 0, with_excluded: bool = False,
               progress: bool | None = None, **params) -> MethodResult:
    """Run one registered method on a dataset and its aligned embeddings."""
    if name not in REGISTRY:
        raise EmbrmError(f"unknown method {name!r}: use one of {', '.join(REGISTRY)}")
    if not ds.has_gold:
        raise EmbrmError(f"{ds.source}: no gold scores: {name} needs a pool with a gold column (--gold-col)")
    if not with_excluded and ds.excluded.any():
        X = np.asarray(X)[~ds.excluded]
        ds = ds.without_excluded()
    start = time.perf_counter()
    with Stages(f"{name} on {ds.name}", 1, progress) as stage, fit_threads():  # the one thread policy
        summary, frame = REGISTRY[name].study(ds, X, seed=seed, **params)
        stage.done(name)
    return MethodResult(REGISTRY[name], ds.name, replace(summary, with_excluded=with_excluded), frame,
                        time.perf_counter() - start)


def render_methods(results: list[MethodResult]) -> str:
    """The study report's section: one subsection per method."""
    lines = ["## The four methods on the real pool (excluded responses removed, one seed)", ""]
    return "\n".join(lines + [r.markdown() + "\n" for r in results])


__all__ = [
    "arm_reward_matrix", "bon_weight_tensor", "Component", "COMPONENTS", "composite_curves", "composite_study",
    "CompositeSelection", "CompositeSummary", "CurveSummary", "default_arms", "default_betas", "ExpertModel",
    "fit_gao_rl", "fit_multipliers", "fit_proxy_reward", "kl_optimum_curves", "KLCurves", "laser_experiment",
    "laser_study", "LaserSummary", "linucb_select", "LinUCBResult", "Method", "MethodResult", "MethodSummary",
    "moe_study", "MoEReward", "MoESummary", "Multipliers", "pick_means", "plot_composite", "plot_policy",
    "plot_regret", "policy_loss", "policy_study", "PolicyRun", "PolicySummary", "prompt_contexts", "prompt_means",
    "proxy_points", "ProxyPoints", "REGISTRY", "Regret", "render_methods", "RewardScore", "run_method", "Selection",
    "selection_scores", "tilted_policy", "train_arms", "train_policy"
]
