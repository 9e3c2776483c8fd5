"""RL against a fitted reward on held-out prompts, beside Best-of-n at the same exact KL.

    result = run_rl(ds, X, fitted.ensemble, fitted.split, fitted.protocol, RLConfig(algo="grpo"),
                    aggregations=("mean", "min"), transforms=("none", "cdf"))
    result.markdown(); result.plot("rl.png"); result.frame()

The RL prompts are the split's HELD-OUT prompts (the reward never saw them, as in Best-of-n evaluation); every
candidate pool is their usable responses (excluded ones never enter). One run per (aggregation, transform, KL
coefficient); each is measured at log-spaced steps: expected gold, proxy (the normalised aggregation before the
transform), trained reward and KL(pi || pi_ref), per prompt and averaged. The linear policy trains on half of the
held-out prompts and is measured on the other half. Best-of-n of each aggregation's proxy on the measured prompts is
computed exactly (embrm.evaluation.pool_curves) with its exact KL over each finite pool (kl_bon_exact), so both
curves share one x-axis. Gao et al.'s RL form R(d) = d (alpha - beta log d), d = sqrt(KL), is fitted to each run's
gold gain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Progress, on_fit_threads, take_rows, write_atomic
from embrm.evaluation import (
    fit_gao_rl,
    group_pools,
    kl_bon,
    kl_bon_exact,
    length_proxy,
    pool_curves,
    pyplot,
    rows_of,
    save_figure,
)
from embrm.pipeline import CALIBRATED, Protocol, fit, proxies
from embrm.rewards import length_feature
from embrm.rl._config import TRANSFORMS, RLConfig, RLPlan
from embrm.rl._policies import GaussianPolicy, PoolPolicy, PoolSet
from embrm.rl._rewards import REFERENCE_SAMPLES, PromptReward, SampleReward, normalised, transform_rewards
from embrm.rl._train import train

__all__ = ["RLRun", "RLResult", "run_rl", "run_plan", "rl_experiment", "plot_rl", "frame_gold_axes"]


@dataclass
class RLRun:
    """One RL run's curve at ``steps`` (prompt means: gold, proxy, reward, kl; a continuous policy adds gold_se,
    kl_mc, kl_mc_se) and its per-prompt gold (steps x prompts) with each prompt's random (pi_ref) and oracle (pool
    best) gold: what the study's findings resample."""

    name: str
    aggregation: str
    transform: str
    kl_coef: float
    steps: np.ndarray
    curve: dict
    prompt_ids: np.ndarray
    gold_prompt: np.ndarray
    random: np.ndarray
    oracle: np.ndarray
    seconds: float = 0.0

    @property
    def peak(self) -> int:
        return int(np.nanargmax(self.curve["gold"]))

    def summary(self) -> dict:
        """Peak (gold, step, KL), end (gold, KL), the drop from the peak, Gao's RL fit (NaN when it cannot fit)."""
        g, kl, p = self.curve["gold"], self.curve["kl"], self.peak
        try:
            alpha, beta = fit_gao_rl(np.sqrt(kl), g - g[0])
        except EmbrmError:
            alpha = beta = float("nan")
        return {"run": self.name, "aggregation": self.aggregation, "transform": self.transform, "kl_coef": self.kl_coef,
                "start_gold": float(g[0]), "peak_gold": float(g[p]), "peak_step": int(self.steps[p]),
                "peak_kl": float(kl[p]), "end_gold": float(g[-1]), "end_kl": float(kl[-1]),
                "drop_from_peak": float(g[p] - g[-1]), "gao_rl_alpha": alpha, "gao_rl_beta": beta,
                "seconds": self.seconds}

    def to_dict(self) -> dict:
        """JSON-able, with the per-prompt gold (the study's job files keep it for the findings)."""
        return {"name": self.name, "aggregation": self.aggregation, "transform": self.transform,
                "kl_coef": self.kl_coef, "steps": self.steps.tolist(),
                "curve": {k: np.asarray(v).tolist() for k, v in self.curve.items()},
                "prompt_id": self.prompt_ids.tolist(), "gold_prompt": self.gold_prompt.tolist(),
                "random": self.random.tolist(), "oracle": self.oracle.tolist(), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> RLRun:
        return cls(d["name"], d["aggregation"], d["transform"], float(d["kl_coef"]), np.asarray(d["steps"]),
                   {k: np.asarray(v, np.float64) for k, v in d["curve"].items()}, np.asarray(d["prompt_id"], str),
                   np.asarray(d["gold_prompt"], np.float64), np.asarray(d["random"], np.float64),
                   np.asarray(d["oracle"], np.float64), float(d.get("seconds", 0.0)))


@dataclass
class RLResult:
    """Every run of one RL experiment, Best-of-n of each aggregation on the same prompts (n, exact KL, gold), and
    the settings."""

    dataset: str
    config: RLConfig
    runs: list[RLRun]
    bon: dict = field(default_factory=dict)  # aggregation -> {"n", "kl", "kl_bound", "gold"}
    n_prompts: int = 0
    measured_on: str = ""

    @property
    def random(self) -> float:
        return float(self.runs[0].random.mean())

    @property
    def oracle(self) -> float:
        return float(self.runs[0].oracle.mean())

    def run(self, name: str) -> RLRun:
        return next(r for r in self.runs if r.name == name)

    def summary(self) -> pl.DataFrame:
        return pl.DataFrame([r.summary() for r in self.runs])

    def frame(self) -> pl.DataFrame:
        """Tidy curves: one row per (run, step) with curve = "rl", and per (aggregation, n) with curve = "bon"."""
        rows = [pl.DataFrame({"curve": "rl", "run": r.name, "aggregation": r.aggregation, "transform": r.transform,
                              "kl_coef": r.kl_coef, "step": r.steps.astype(np.int64), **r.curve})
                for r in self.runs]
        rows += [pl.DataFrame({"curve": "bon", "run": f"bon:{agg}", "aggregation": agg, "n": b["n"].astype(np.int64),
                               "kl": b["kl"], "kl_bound": b["kl_bound"], "gold": b["gold"]})
                 for agg, b in self.bon.items()]
        return pl.concat(rows, how="diagonal_relaxed").with_columns(d=pl.col("kl").sqrt())

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "config": self.config.to_dict(), "n_prompts": self.n_prompts,
                "measured_on": self.measured_on, "random": self.random, "oracle": self.oracle,
                "runs": self.summary().to_dicts(),
                "bon": {agg: {"peak_gold": float(np.nanmax(b["gold"])), "end_gold": float(b["gold"][-1]),
                              "end_kl": float(b["kl"][-1])} for agg, b in self.bon.items()}}

    def markdown(self) -> str:
        c = self.config
        head = (f"{self.dataset}: {c.algo} ({c.policy} policy), {c.steps} steps, G = {c.group}, lr {c.lr:g}, "
                f"KL to pi_ref in the {c.kl_mode}; {self.n_prompts} prompts ({self.measured_on}); random "
                f"{self.random:.3f}, oracle {self.oracle:.3f} (expected gold).")
        rows = ["| run | gold at start | peak gold | at step | KL at peak | gold at end | KL at end | drop from peak | "
                "Gao RL fit a, b |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in self.summary().to_dicts():
            rows.append(f"| {s['run']} | {s['start_gold']:.3f} | {s['peak_gold']:.3f} | {s['peak_step']} | "
                        f"{s['peak_kl']:.3f} | {s['end_gold']:.3f} | {s['end_kl']:.3f} | {s['drop_from_peak']:+.3f} | "
                        f"{s['gao_rl_alpha']:.2f}, {s['gao_rl_beta']:.2f} |")
        bon = [f"Best-of-n {agg}: peak gold {np.nanmax(b['gold']):.3f}, gold at n = N {b['gold'][-1]:.3f} "
               f"(exact KL {b['kl'][-1]:.3f}; log n - (n-1)/n would say {b['kl_bound'][-1]:.3f})"
               for agg, b in self.bon.items()]
        fit = ("Gao et al.'s RL form R(d) = d (a - b log d), d = sqrt(KL), fitted to each run's gold gain over "
               "step 0; its peak is at d = exp(a / b - 1) when b > 0.")
        return "\n".join([head, "", *rows, "", fit, "", *(f"- {line}" for line in bon)])

    def plot(self, path, title: str | None = None):
        return plot_rl(self, path, title=title)

    def write(self, out_dir, *, extra: dict | None = None) -> dict[str, Path]:
        """curves.parquet, curves.csv, summary.json, report.md (each written atomically) and gold_vs_kl.png."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame = self.frame()
        paths = {"curves": out / "curves.parquet", "csv": out / "curves.csv", "summary": out / "summary.json",
                 "report": out / "report.md"}
        write_atomic(paths["curves"], frame.write_parquet)
        write_atomic(paths["csv"], frame.write_csv)
        write_atomic(paths["summary"], json.dumps({**(extra or {}), **self.to_dict()}, indent=2, default=str) + "\n")
        write_atomic(paths["report"], self.markdown() + "\n\n![gold vs KL](gold_vs_kl.png)\n")
        paths["plot"] = self.plot(out / "gold_vs_kl.png")
        return paths


# ----------------------------------------------------------------------------- building the runs

def _gold(ds) -> np.ndarray:
    g = ds.responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return np.where(ds.responses["scored"].to_numpy(), g, np.nan)


def _halves(prompts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(prompts))
    cut = len(prompts) // 2
    if cut < 1:
        raise EmbrmError("the linear policy trains on half of the held-out prompts and is measured on the other "
                         "half: it needs at least 2 held-out prompts")
    return np.sort(prompts[order[cut:]]), np.sort(prompts[order[:cut]])


def _pool_set(pid, rows: np.ndarray, reward: np.ndarray, proxy: np.ndarray, gold: np.ndarray, transform: str,
              X=None) -> PoolSet:
    """The padded pools of the prompts whose rows are True, uniform pi_ref, the reward transformed over them."""
    pools = group_pools(pid, rows)
    valid = pools.valid
    ref = np.where(valid, -np.log(pools.sizes)[:, None], -np.inf)
    r = pools.gather(reward)
    r = np.where(valid, transform_rewards(transform, r, r, np.where(valid, np.exp(ref), 0.0)), 0.0)
    features = None if X is None else take_rows(X, pools.rows.ravel()).reshape(*pools.rows.shape, -1)
    return PoolSet(pools.keys, ref, r, pools.gather(proxy), pools.gather(gold, np.nan), features)


def _random_oracle(s: PoolSet) -> tuple[np.ndarray, np.ndarray]:
    valid = s.valid
    return (np.where(valid, s.gold, 0.0).sum(1) / valid.sum(1), np.where(valid, s.gold, -np.inf).max(1))


def _curve(history: list[dict]) -> tuple[dict, np.ndarray]:
    """Prompt means per evaluated step (standard errors of the mean for a continuous policy's estimates)."""
    keys = history[0].keys()
    curve = {}
    for k in keys:
        v = np.stack([h[k] for h in history])  # (points, P)
        curve[k] = (np.sqrt((v * v).sum(axis=1)) / v.shape[1]) if k.endswith("_se") else v.mean(axis=1)
    return curve, np.stack([h["gold"] for h in history])


def _proxy_and_reference(ds, X, ensemble, split_, protocol: Protocol, aggregations, scores, evaluated):
    plain = tuple(a for a in aggregations if a != "warm")
    out, conformal = proxies(ds, X, ensemble, scores, split_, replace(protocol, aggregations=plain), evaluated)
    if "conformal" in aggregations and "conformal" not in out:
        raise EmbrmError(f"aggregation conformal could not be calibrated: {conformal.get('error')}")
    if "warm" in aggregations and "warm" not in out:
        raise EmbrmError("aggregation warm needs an MLP ensemble with WARM weights (head mlp, warm = true)")
    return out


def _check(ds, config: RLConfig, aggregations, transforms) -> None:
    if not ds.has_gold:
        raise EmbrmError(f"{ds.name}: no gold scores: RL is measured by the gold of what the policy samples")
    for t in transforms:
        if t not in TRANSFORMS:
            raise EmbrmError(f"transform {t!r} is not allowed: use one of {', '.join(TRANSFORMS)}", field="transform")
    if config.policy == "gaussian" and ds.truth is None:
        raise EmbrmError(f"{ds.name}: the gaussian policy samples NEW embeddings and needs their gold: use a generated "
                         f"dataset (generate = \"overopt\"), or policy pool / linear")
    if config.length_penalty and (not ds.texts or config.policy == "gaussian"):
        raise EmbrmError(f"{ds.name}: length_penalty needs the responses' texts (a pool with texts, policy pool or "
                         f"linear)", field="length_penalty")


@on_fit_threads
def run_rl(ds, X, ensemble, split_, protocol: Protocol, config: RLConfig = RLConfig(), *, aggregations=None,
           transforms=("none",), kls=None, scores=None, progress: bool | None = None,
           threads: int | None = None) -> RLResult:
    """Every (aggregation, transform, KL coefficient) RL run of ``config`` on the held-out prompts of ``split_``
    (the reward: ``ensemble`` fitted under ``protocol``), with Best-of-n of each aggregation beside it."""
    import time

    aggregations = tuple(aggregations or protocol.aggregations)
    transforms, kls = tuple(transforms), tuple(kls if kls is not None else (config.kl,))
    _check(ds, config, aggregations, transforms)
    gold, pid = _gold(ds), ds.responses["prompt_id"].cast(pl.Utf8).to_numpy()
    evaluated = rows_of(ds.responses, split_.test) & ds.usable & np.isfinite(gold)
    reference = rows_of(ds.responses, split_.train) & ds.usable
    if not evaluated.any():
        raise EmbrmError(f"{ds.name}: no held-out prompt with scored responses: RL needs held-out pools with gold")
    if scores is None:
        scores = ensemble.predict(X, length_feature(ds.responses) if ds.texts else None)
    proxy = _proxy_and_reference(ds, X, ensemble, split_, protocol, aggregations, scores, evaluated)
    measured = evaluated
    if config.policy == "linear":
        train_p, measure_p = _halves(np.unique(pid[evaluated]), config.seed)
        trained, measured = evaluated & rows_of(ds.responses, train_p), evaluated & rows_of(ds.responses, measure_p)
    runs = []
    combos = [(a, t, k) for a in aggregations for t in transforms for k in kls]
    with Progress(config.steps * len(combos), f"RL {config.algo} on {ds.name}", "steps", enabled=progress) as bar:
        for agg, transform, kl in combos:
            start = time.perf_counter()
            reward = _reward(proxy[agg], reference, evaluated, config, ds)
            run_config = replace(config, kl=float(kl))
            if config.policy == "gaussian":
                policy, sets = _gaussian(ds, X, ensemble, scores, reference, agg, transform, protocol, run_config,
                                         pid, evaluated, proxy[agg], gold)
            else:
                sets = _pool_set(pid, measured, reward, proxy[agg], gold, transform,
                                 X if config.policy == "linear" else None)
                train_set = (_pool_set(pid, trained, reward, proxy[agg], gold, transform, X)
                             if config.policy == "linear" else sets)
                policy = PoolPolicy(train_set, sets, linear=config.policy == "linear")
            steps, history = train(policy, run_config, bar)
            curve, per_prompt = _curve(history)
            random, oracle = _random_oracle(sets)
            name = _run_name(agg, transform, kl, len(transforms) > 1, len(kls) > 1)
            runs.append(RLRun(name, agg, transform, float(kl), steps, curve, np.asarray(sets.prompt_ids, str),
                              per_prompt, random, oracle, time.perf_counter() - start))
    where = {"pool": "held-out prompts", "linear": "held-out prompts; trained on the other half",
             "gaussian": "held-out prompts; new candidates from the policy"}[config.policy]
    return RLResult(ds.name, config, runs, _bon(ds, proxy, aggregations, measured, gold, pid),
                    len(runs[0].prompt_ids), where)


def _run_name(agg: str, transform: str, kl: float, with_transform: bool, with_kl: bool) -> str:
    return agg + (f"/{transform}" if with_transform else "") + (f"/kl{kl:g}" if with_kl else "")


def _reward(proxy: np.ndarray, reference: np.ndarray, evaluated: np.ndarray, config: RLConfig, ds) -> np.ndarray:
    """The aggregation normalised (training responses' statistics; where it is undefined on them, as a calibrated
    aggregation, the evaluated responses') and length-penalised; transforms act per prompt later."""
    r = np.asarray(proxy, np.float64)
    if config.normalize:
        rows = reference & np.isfinite(r)
        r = normalised(r, rows if rows.any() else evaluated & np.isfinite(r))
    if config.length_penalty:
        r = r - config.length_penalty * length_proxy(ds.responses)
    return r


def _gaussian(ds, X, ensemble, scores, reference, agg, transform, protocol, config, pid, evaluated, proxy, gold):
    """A Gaussian policy per held-out prompt around the generator's base-policy mean, its reward on new samples, and
    the prompts' pools (for the random / oracle references: the pools are pi_ref's samples)."""
    import torch

    sets = _pool_set(pid, evaluated, np.zeros(len(pid)), proxy, gold, "none")
    mu = ds.truth.means_of(sets.prompt_ids)
    params = protocol.aggregation_params()
    ref_rows = np.flatnonzero(reference)
    sample_reward = SampleReward(ensemble, scores, reference, take_rows(X, ref_rows), agg,
                                 normalize=config.normalize, params=params)
    gen = torch.Generator().manual_seed(int(config.seed) + 2)
    ref_x = (torch.from_numpy(mu)[:, None, :] + torch.randn((len(mu), REFERENCE_SAMPLES, mu.shape[1]),
                                                              generator=gen)).numpy()
    return GaussianPolicy(mu, PromptReward(sample_reward, transform, ref_x), ds.truth.gold), sets


def _bon(ds, proxy: dict, aggregations, measured: np.ndarray, gold: np.ndarray, pid) -> dict:
    """Best-of-n of each aggregation on the measured prompts, with its exact KL over the finite pools."""
    names = [a for a in aggregations if a not in CALIBRATED or np.isfinite(proxy[a][measured]).all()]
    curves = pool_curves(ds.responses, {a: proxy[a] for a in names}, measured, gold=gold, dtype=np.float64)
    sizes = group_pools(pid, measured).sizes
    kl = kl_bon_exact(sizes, curves.n)
    return {a: {"n": curves.n, "kl": kl, "kl_bound": kl_bon(curves.n), "gold": curves.gold[j]}
            for j, a in enumerate(names)}


def run_plan(plan: RLPlan, ds, X, ensemble, split_, protocol: Protocol, *, scores=None,
             progress: bool | None = False, threads: int | None = None) -> dict[str, RLResult | str]:
    """Each policy of ``plan`` (a study's [rl] table) on one fitted reward: {policy: RLResult}, or the reason a
    policy does not apply to this dataset (a gaussian policy on data without a known gold for new embeddings)."""
    out = {}
    for policy in plan.policies:
        if policy == "gaussian" and ds.truth is None:
            out[policy] = "needs a generated dataset (the gold of new embeddings): skipped"
            continue
        out[policy] = run_rl(ds, X, ensemble, split_, protocol, plan.config_of(policy),
                             aggregations=plan.aggregations, transforms=plan.transforms, kls=plan.kls, scores=scores,
                             progress=progress, threads=threads)
    return out


@on_fit_threads
def rl_experiment(ds, X, protocol: Protocol = Protocol(), config: RLConfig = RLConfig(), *, aggregations=None,
                  transforms=("none",), kls=None, progress: bool | None = None,
                  threads: int | None = None) -> RLResult:
    """Fit the reward (embrm.pipeline.fit under ``protocol``), then ``run_rl`` on its held-out prompts."""
    fitted = fit(ds, X, protocol, progress=progress)
    return run_rl(ds, X, fitted.ensemble, fitted.split, fitted.protocol, config, aggregations=aggregations,
                  transforms=transforms, kls=kls, scores=fitted.scores, progress=progress)


# ----------------------------------------------------------------------------- the plot

def plot_rl(result: RLResult, path, *, title: str | None = None):
    """PNG: held-out gold vs sqrt(KL) for every RL run and Best-of-n of each aggregation (exact KL), with the random
    and oracle references; and gold per step (log scale)."""
    plt = pyplot()
    fig, (ax_d, ax_s) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    colours = {}
    for r in result.runs:
        line, = ax_d.plot(np.sqrt(r.curve["kl"]), r.curve["gold"], marker="o", ms=2.5, lw=1.5, label=f"RL {r.name}")
        colours.setdefault(r.aggregation, line.get_color())
        ax_s.plot(np.maximum(r.steps, 0.8), r.curve["gold"], lw=1.5, color=line.get_color(), label=r.name)
    for agg, b in result.bon.items():
        ax_d.plot(np.sqrt(b["kl"]), b["gold"], ls="--", lw=1.2, color=colours.get(agg), label=f"Best-of-n {agg}")
    for ax in (ax_d, ax_s):
        ax.axhline(result.random, color="0.6", lw=0.8, ls=":")
        ax.axhline(result.oracle, color="0.3", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    frame_gold_axes(ax_d, ax_s, result.random, result.oracle)
    ax_d.set(xlabel="sqrt KL(pi || pi_ref)  [exact; Best-of-n over each finite pool]", ylabel="expected gold",
             title="Gold vs KL: RL and Best-of-n")
    ax_s.set(xscale="log", xlabel="RL step", ylabel="expected gold", title="Gold per step (step 0 = pi_ref)")
    c = result.config
    fig.suptitle(title or f"{result.dataset}: {c.algo}, {c.policy} policy ({result.measured_on})")
    return save_figure(fig, path, dpi=110)


# A run without a bound (a continuous policy without a KL penalty) can end thousands of gold units below pi_ref;
# the axes stop this many (oracle - random) spans below random so that the other runs stay readable.
GOLD_AXIS_SPANS = 2.0


def frame_gold_axes(ax_kl, ax_step, random: float, oracle: float) -> None:
    """Cut the gold axis of a gold-vs-sqrt(KL) plot (and of its gold-per-step twin, if any) at GOLD_AXIS_SPANS
    below random when a run falls further, the KL axis where the visible points end, and say so on the plot."""
    span = (oracle - random) if oracle > random else 1.0
    floor = random - GOLD_AXIS_SPANS * span
    lines = ax_kl.get_lines()
    lows = [np.min(line.get_ydata()) for line in lines if len(line.get_ydata())]
    if not lows or min(lows) >= floor:
        return
    top = max(oracle, max(np.max(line.get_ydata()) for line in lines if len(line.get_ydata()))) + 0.1 * span
    for ax in (a for a in (ax_kl, ax_step) if a is not None):
        ax.set_ylim(floor - 0.05 * span, top)
    seen = [np.asarray(line.get_xdata(), np.float64)[np.asarray(line.get_ydata(), np.float64) >= floor]
            for line in lines]
    right = max((x.max() for x in seen if x.size), default=1.0)
    ax_kl.set_xlim(0.0, 1.15 * right)
    ax_kl.annotate(f"gold axis cut at {floor:.3g}: runs that fall further leave the plot (see the table)",
                   xy=(0.01, 0.01), xycoords="axes fraction", fontsize=7, color="0.35")
