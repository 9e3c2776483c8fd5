"""How a reward is judged on held-out prompts: pairwise metrics against the gold order (or human labels), and the
exact Best-of-n curves of every proxy (aggregations, WARM, length) with one typed summary per proxy.

Accuracy on pools is measured against the GOLD ORDER of held-out pairs, so label noise in training does not hide
what a model learned. The random baseline is one figure: the expected gold of a uniformly random pick (the pool
mean; gain 0 by definition), never a random draw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, file_stem, staged, write_atomic
from embrm.data import Dataset, pair_indices
from embrm.evaluation import _metrics as M
from embrm.evaluation._aggregate import aggregate_all, standardize
from embrm.evaluation._bon import BonCurves, bon_curves, curves_frame, fit_gao
from embrm.evaluation._calibration import Reliability, cross_fitted_temperature, reliability
from embrm.evaluation._conformal import ConformalResult, conformal_lower_bound
from embrm.evaluation._plots import plot_bon, plot_gao_fit
from embrm.evaluation._sun import SunMetrics

MAX_EVAL_PAIRS = 200_000
# Listing every within-prompt pair (a self-join) costs sum N_p^2 rows: the real pools need ~10^6; pools of thousands
# of candidates would need billions, so beyond this their held-out pairs are sampled instead.
JOIN_LIMIT = 20_000_000


def rows_of(responses: pl.DataFrame, prompt_ids) -> np.ndarray:
    """(n,) bool: rows whose prompt is one of prompt_ids."""
    return responses["prompt_id"].is_in([str(p) for p in prompt_ids]).to_numpy()


# ----------------------------------------------------------------------------- pairwise metrics

@dataclass
class PromptAccuracy:
    """Per held-out prompt: its held-out pairs and the ones the ensemble mean orders as labelled (ties 0.5), lists in
    one prompt order (JSON-able): the findings' intervals over prompts."""

    prompt_id: list[str]
    pairs: list[int]
    correct: list[float]


@dataclass
class FitMetrics:
    """Held-out pairwise metrics of the ensemble mean, its members and the length baseline (random: 0.5)."""

    against: str  # "gold order" | "human labels"
    n_test_pairs: int
    n_test_prompts: int
    accuracy: float
    member_accuracy: list[float]
    log_loss: float
    ece: float
    length_accuracy: float | None  # None: the data has no texts (arrays), so no lengths
    spearman: float | None = None
    length_spearman: float | None = None
    length_correlation: float | None = None  # the ensemble mean's within-prompt Spearman with length (held out)
    # calibration of the ensemble mean's pairwise probability sigmoid(r_a - r_b) on the held-out pairs
    # (_calibration.py): MCE, Brier, and the ECE after temperature scaling cross-fitted over held-out prompts
    mce: float | None = None
    brier: float | None = None
    calibrated_ece: float | None = None
    temperature: float | None = None  # the mean of the folds' fitted temperatures
    reliability: Reliability | None = field(default=None, repr=False)  # the uncalibrated reliability bins
    per_prompt: PromptAccuracy | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitMetrics:
        """The FitMetrics of to_dict() (a job's stored result)."""
        d = dict(d)
        d["reliability"] = d.get("reliability") and Reliability(**d["reliability"])
        d["per_prompt"] = d.get("per_prompt") and PromptAccuracy(**d["per_prompt"])
        return cls(**d)


def gold_order_pairs(responses: pl.DataFrame, prompt_ids, max_pairs: int = MAX_EVAL_PAIRS, seed: int = 0,
                     usable: np.ndarray | None = None) -> np.ndarray:
    """Within-prompt pairs of usable responses with different gold, better first, as row indices (m, 2): all of
    them, or a uniformly random max_pairs of them. Pools too large to list every pair (sum of N_p^2 above
    JOIN_LIMIT, e.g. thousands of candidates per prompt) are sampled directly (see _sampled_pairs)."""
    keep = responses["scored"].to_numpy() if usable is None else usable
    rows = (responses.with_row_index("row").filter(pl.Series(keep) & pl.col("prompt_id").is_in(list(prompt_ids)))
            .select("row", "prompt_id", "gold"))
    sizes = rows.group_by("prompt_id").len()["len"].to_numpy().astype(np.int64)
    if int((sizes * sizes).sum()) > JOIN_LIMIT:
        return _sampled_pairs(rows.sort("prompt_id", maintain_order=True), max_pairs, seed)
    pairs = (rows.join(rows, on="prompt_id", suffix="_b").filter(pl.col("gold") > pl.col("gold_b"))
             .select("row", "row_b").to_numpy().astype(np.int64))
    if len(pairs) > max_pairs:
        pairs = pairs[np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)]
    return pairs


def _sampled_pairs(rows: pl.DataFrame, max_pairs: int, seed: int) -> np.ndarray:
    """Up to max_pairs distinct within-prompt pairs with different gold, drawn uniformly from all such pairs
    without listing them: a prompt with probability proportional to its N_p (N_p - 1) ordered pairs, then two
    distinct members; pairs with equal gold are dropped, the rest oriented better first and deduplicated."""
    prompt = rows["prompt_id"].rank("dense").to_numpy().astype(np.int64) - 1
    sizes = np.bincount(prompt)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    gold, row = rows["gold"].to_numpy(), rows["row"].to_numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    weight = (sizes * (sizes - 1)).astype(np.float64)
    p = rng.choice(len(sizes), 2 * max_pairs, p=weight / weight.sum())
    i = rng.integers(0, sizes[p])
    j = rng.integers(0, sizes[p] - 1)
    a, b = starts[p] + i, starts[p] + j + (j >= i)  # j skips i: two distinct members
    a, b = a[gold[a] != gold[b]], b[gold[a] != gold[b]]
    better = gold[a] > gold[b]
    pairs = np.unique(np.stack([np.where(better, a, b), np.where(better, b, a)], axis=1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))[:max_pairs]]
    return np.stack([row[pairs[:, 0]], row[pairs[:, 1]]], axis=1)


def held_out_pairs(ds: Dataset, test_prompts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """Held-out pairs: gold order on pools (excluded responses left out), the human labels on pairwise data."""
    if ds.has_gold:
        return gold_order_pairs(ds.responses, test_prompts, seed=seed, usable=ds.usable), "gold order"
    held = ds.pairs.filter(pl.col("prompt_id").is_in(test_prompts.tolist()))
    return pair_indices(held, ds.responses), "human labels"


def pairwise_metrics(ds: Dataset, scores: np.ndarray, test_prompts: np.ndarray, seed: int = 0) -> FitMetrics:
    """Held-out metrics per member, for the ensemble mean, and for the length baseline."""
    pairs, against = held_out_pairs(ds, test_prompts, seed)
    if len(pairs) == 0:
        raise EmbrmError(f"{ds.source}: no held-out pairs on the test prompts: use a larger --test-size")
    scores = np.asarray(scores, np.float32).reshape(len(ds.responses), -1)
    mean = scores.mean(axis=1)
    length = M.length_reward(ds.responses) if ds.texts else None
    # each pair's prompt as its position among the sorted prompt ids: sorting ints, not the pairs' id strings
    prompts, code = np.unique(ds.responses["prompt_id"].to_numpy(), return_inverse=True)
    pair_prompt = code.ravel()[pairs[:, 0]]
    out = FitMetrics(against, int(len(pairs)), int(len(test_prompts)), float(M.pairwise_accuracy(mean, pairs)),
                     member_accuracies(scores, pairs),
                     float(M.bt_log_loss(mean, pairs)), float(M.expected_calibration_error(mean, pairs)),
                     None if length is None else float(M.pairwise_accuracy(length, pairs)),
                     per_prompt=_correct_by_prompt(prompts, pair_prompt, mean, pairs))
    _calibration(out, pair_prompt, mean, pairs, seed)
    if ds.has_gold:
        rows = ds.usable & rows_of(ds.responses, test_prompts)
        index = ds.responses["prompt_id"].filter(pl.Series(rows)).rank("dense").to_numpy().astype(np.int64) - 1
        gold = ds.responses["gold"].to_numpy()[rows]
        out.spearman = float(M.per_prompt_spearman(mean[rows], gold, index))
        if length is None:
            return out
        out.length_spearman = float(M.per_prompt_spearman(length[rows], gold, index))
        out.length_correlation = _finite(M.per_prompt_spearman(mean[rows], length[rows].astype(np.float64), index))
    return out


def _calibration(out: FitMetrics, groups: np.ndarray, mean: np.ndarray, pairs: np.ndarray, seed: int) -> None:
    """MCE, Brier and reliability bins of the held-out pairs, and their ECE after temperature scaling fitted on the
    other half of the held-out prompts (cross-fitted: no pair calibrates its own probability). groups: each pair's
    prompt code (in prompt-id order)."""
    margins = mean[pairs[:, 0]].astype(np.float64) - mean[pairs[:, 1]]
    plain = reliability(margins)
    out.mce, out.brier, out.reliability = plain.mce, plain.brier, plain
    if len(np.unique(groups)) >= 2:
        calibrated, temperatures = cross_fitted_temperature(margins, groups, seed=seed)
        out.calibrated_ece, out.temperature = reliability(calibrated).ece, float(np.mean(temperatures))


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _correct_by_prompt(prompts: np.ndarray, pair_prompt: np.ndarray, scores: np.ndarray,
                       pairs: np.ndarray) -> PromptAccuracy:
    """Held-out pairs and the ones the reward orders as labelled (ties 0.5), per prompt (sorted prompt ids
    `prompts`; pair_prompt: each pair's position in them)."""
    margin = scores[pairs[:, 0]].astype(np.float64) - scores[pairs[:, 1]]
    used, index = np.unique(pair_prompt, return_inverse=True)
    correct = np.bincount(index, (margin > 0) + 0.5 * (margin == 0), len(used))
    return PromptAccuracy(prompts[used].tolist(), np.bincount(index, minlength=len(used)).tolist(), correct.tolist())


def member_accuracies(scores: np.ndarray, pairs: np.ndarray) -> list[float]:
    """Pairwise accuracy of every member column at once (ties count 0.5, as metrics.pairwise_accuracy)."""
    margins = scores[pairs[:, 0]].astype(np.float64) - scores[pairs[:, 1]]
    return [float(a) for a in ((margins > 0) + 0.5 * (margins == 0)).mean(axis=0)]


# ----------------------------------------------------------------------------- proxies

def ensemble_proxies(scores: np.ndarray, reference_rows: np.ndarray, aggregations, **params) -> dict:
    """{aggregation: (n,) proxy} from member scores (n, K), standardised on reference_rows (bool mask)."""
    ref = reference_rows if reference_rows.any() else None
    return aggregate_all(standardize(scores, ref), aggregations, **params)


def conformal_proxy(ds: Dataset, scores: np.ndarray, reference_rows: np.ndarray, evaluated: np.ndarray, *,
                    coverage: float, seed: int) -> ConformalResult:
    """The conformal lower bound of standardised member scores (_conformal.py) on the evaluated prompts: calibrated
    on their usable responses' gold, cross-fitted over two halves of the prompts; their excluded responses get the
    bound of their prompt's half (they never calibrate)."""
    ref = reference_rows if reference_rows.any() else None
    gold = np.where(ds.responses["scored"].to_numpy(), ds.responses["gold"].to_numpy(), np.nan).astype(np.float64)
    return conformal_lower_bound(standardize(scores, ref), gold, ds.responses["prompt_id"].to_numpy(),
                                 evaluated & ds.usable, reference_rows, coverage=coverage, seed=seed,
                                 also=evaluated & ds.excluded)


def length_proxy(responses: pl.DataFrame) -> np.ndarray:
    """Longer is better, z-scored so its proxy curve shares the members' scale (Best-of-n picks are unchanged)."""
    length = M.length_reward(responses)
    return (length - length.mean()) / (length.std() or 1.0)


# ----------------------------------------------------------------------------- Best-of-n

@dataclass
class ProxySummary:
    """One proxy's Best-of-n at n = N (the whole pool) and its over-optimisation shape."""

    gold_at_n_max: float
    gain_at_n_max: float
    percentile_at_n_max: float
    proxy_at_n_max: float
    best_n: int
    gold_at_best_n: float
    spearman: float | None
    gao_alpha: float | None
    gao_beta: float | None
    excluded_pick_rate: float | None = None  # share of prompts whose top pick is an excluded response
    length_correlation: float | None = None  # mean within-prompt Spearman of the proxy with response length


@dataclass
class PromptPicks:
    """Best-of-n at n = N per evaluated prompt (prompts sorted; lists, JSON-able): the pool's mean (random) and best
    (oracle) gold, the gold of each proxy's top pick, with excluded responses in the pool each proxy's share of
    excluded top picks, and, where asked, the grid `n` with the ensemble mean's expected gold at each n per prompt."""

    prompt_id: list[str]
    random: list[float]
    oracle: list[float]
    pick: dict[str, list[float]]  # proxy -> gold of its top pick per prompt
    excluded: dict[str, list[float]] | None = None  # proxy -> share of excluded top picks per prompt
    n: list[int] | None = None
    mean_curve: list[list[float]] | None = None  # (prompts, len(n)); NaN (None in JSON) past a prompt's pool

    def to_dict(self) -> dict:
        """JSON-able; the optional parts only when present."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class BonResult:
    """Exact Best-of-n curves of every proxy on one evaluated pool, and a summary per proxy.

    The summary's gold and gain "at n = N" (and the excluded pick rate) are each prompt's whole pool (its top-scored
    response; ties averaged), averaged over the prompts, and `per_prompt` holds them per prompt (for intervals over
    prompts); percentile and proxy at n_max are the curves' values at the largest n (the prompts with full pools).
    random_at_n_max: expected gold of a uniformly random pick (the pool mean): THE random baseline."""

    pool: str  # "pool", "pool-lc" (length-controlled gold) or "pool+<excluded>" (e.g. "pool+probes")
    curves: BonCurves | None  # None when read back from a stored result (its curves are stored apart)
    proxies: dict[str, ProxySummary]
    n_max: int
    n_prompts: int
    n_responses: int
    random_at_n_max: float
    oracle_at_n_max: float
    per_prompt: PromptPicks | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("pool", "n_max", "n_prompts", "n_responses", "random_at_n_max",
                                            "oracle_at_n_max")}
        d["per_prompt"] = self.per_prompt.to_dict() if self.per_prompt is not None else {}
        d["aggregations"] = {name: asdict(s) for name, s in self.proxies.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BonResult:
        """The summaries of to_dict() (a job's stored result), without curves."""
        proxies = {name: ProxySummary(**s) for name, s in d["aggregations"].items()}
        per_prompt = PromptPicks(**d["per_prompt"]) if d.get("per_prompt") else None
        return cls(d["pool"], None, proxies, d["n_max"], d["n_prompts"], d["n_responses"], d["random_at_n_max"],
                   d["oracle_at_n_max"], per_prompt)

    @property
    def grid(self) -> str:
        """The values of n the curves hold, in words: "n = 1..N" or "K values of n in 1..N"."""
        n = self.curves.n
        return f"n = 1..{self.n_max}" if self.curves.all_n else f"{len(n)} values of n in 1..{self.n_max}"

    def frame(self) -> pl.DataFrame:
        """One row per (proxy, n): the curves, with this pool's name."""
        return curves_frame(self.curves).with_columns(variant=pl.lit(self.pool))

    def table(self) -> pl.DataFrame:
        """One row per proxy: its summary at n = N."""
        return pl.DataFrame([{"proxy": k, **asdict(v)} for k, v in self.proxies.items()])

    def plot(self, path, *, title: str | None = None, references: dict | None = None) -> Path:
        return plot_bon(self.curves, path, references=references, title=title)


def best_of_n(responses: pl.DataFrame, proxies: dict, rows: np.ndarray, *, pool: str = "pool",
              n_max: int | None = None, n_grid=None, excluded: np.ndarray | None = None,
              gold: np.ndarray | None = None, mean_curve: bool = False, texts: bool = True) -> BonResult:
    """Exact Best-of-n curves of every proxy on the scored rows where `rows`, judged by `gold` (default: the
    table's; e.g. a length-controlled gold), at the n of `n_grid` (bon_curves: every n for the usual pools, a
    log-spaced grid for very large ones); with `excluded`, each proxy's excluded pick rate at n = N too; with
    `mean_curve`, the ensemble mean's expected gold at every n per prompt (where it peaks: the studies' findings).
    texts=False (arrays without texts): no correlation with length is reported."""
    gold = responses["gold"].to_numpy().astype(np.float64) if gold is None else np.asarray(gold, np.float64)
    rows = rows & responses["scored"].to_numpy() & np.isfinite(gold)
    if not rows.any():
        raise EmbrmError("no scored responses on the evaluation prompts: evaluate on --prompts all, or use a pool "
                         "with gold scores")
    pid = responses["prompt_id"].to_numpy()
    curves = bon_curves(pid, proxies, gold, n_max, mask=rows, n_grid=n_grid,
                        per_prompt=mean_curve and "mean" in proxies)
    _, rho = M.per_prompt_spearman(proxies, gold, pid, mask=rows, by_prompt=True)
    rho = np.asarray(rho).reshape(len(rho), -1)
    length_rho = (M.per_prompt_spearman(proxies, M.length_reward(responses).astype(np.float64), pid, mask=rows)
                  if texts else np.full(len(proxies), np.nan))
    per_prompt = PromptPicks(**top_picks(pid, proxies, gold, rows, excluded))
    if curves.per_prompt_gold is not None:
        order = np.argsort(curves.prompts.astype(str))  # top_picks' prompts are sorted
        per_prompt.n = curves.n.tolist()
        mean = curves.per_prompt_gold[curves.aggregations.index("mean")][order]
        per_prompt.mean_curve = np.round(mean.astype(np.float64), 6).tolist()
    picks, rand, orc = per_prompt.pick, np.mean(per_prompt.random), np.mean(per_prompt.oracle)
    summaries = {}
    for j, name in enumerate(curves.aggregations):
        alpha, beta = fit_gao(curves.d, curves.gold[j] - curves.gold[j, 0]) if len(curves.n) >= 3 else (None, None)
        best = int(np.nanargmax(curves.gold[j]))
        top = float(np.mean(picks[name]))
        summaries[name] = ProxySummary(
            top, (top - rand) / (orc - rand) if orc > rand else float("nan"), float(curves.percentile[j, -1]),
            float(curves.proxy[j, -1]), int(curves.n[best]), float(curves.gold[j, best]),
            float(np.nanmean(rho[:, j])) if np.isfinite(rho[:, j]).any() else None, alpha, beta,
            float(np.mean(per_prompt.excluded[name])) if excluded is not None else None,
            _finite(length_rho[j]))
    return BonResult(pool, curves, summaries, int(curves.n[-1]), int(len(curves.prompts)), int(rows.sum()),
                     float(rand), float(orc), per_prompt)


def pool_curves(responses: pl.DataFrame, proxies, rows: np.ndarray, *, gold: np.ndarray | None = None,
                n_grid=None, dtype=np.float32) -> BonCurves:
    """The exact Best-of-n curves alone (no summaries) of any proxies ((n,) or {name: (n,)}) on the scored rows
    where `rows`, judged by `gold` (default: the table's; e.g. ``excluded_indicator`` for the share of excluded
    picks): for a method that adds its own steps around them. n_grid and dtype as ``bon_curves``."""
    gold = responses["gold"].to_numpy().astype(np.float64) if gold is None else np.asarray(gold, np.float64)
    rows = rows & responses["scored"].to_numpy() & np.isfinite(gold)
    return bon_curves(responses["prompt_id"].to_numpy(), proxies, gold, mask=rows, n_grid=n_grid, dtype=dtype)


def top_picks(prompt_ids: np.ndarray, proxies: dict, gold: np.ndarray, rows: np.ndarray,
              excluded: np.ndarray | None = None) -> dict:
    """Best-of-n at n = N per prompt: each proxy's top-scored response of the prompt's whole pool (ties: their
    mean, as a uniformly random pick among them), with the pool's mean (random) and best (oracle) gold, and with
    `excluded` the share of the top picks that are excluded. Lists, JSON-able, prompts sorted."""
    prompts, group = np.unique(prompt_ids[rows], return_inverse=True)
    P, g = len(prompts), gold[rows]
    count = np.bincount(group, minlength=P)
    oracle = np.full(P, -np.inf)
    np.maximum.at(oracle, group, g)
    out = {"prompt_id": prompts.tolist(), "random": (np.bincount(group, g, P) / count).tolist(),
           "oracle": oracle.tolist(), "pick": {}}
    if excluded is not None:
        out["excluded"] = {}
    for name, score in proxies.items():
        s = np.asarray(score, np.float64)[rows]
        best = np.full(P, -np.inf)
        np.maximum.at(best, group, s)
        top = (s == best[group]).astype(np.float64)
        n_top = np.bincount(group, top, P)
        out["pick"][name] = (np.bincount(group, top * g, P) / n_top).tolist()
        if excluded is not None:
            out["excluded"][name] = (np.bincount(group, top * excluded[rows], P) / n_top).tolist()
    return out


def excluded_indicator(gold: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """1.0 for excluded rows, 0.0 for the others, NaN where gold is missing: evaluated IN PLACE OF gold, any
    expected-gold estimator (Best-of-n, a tilted policy) gives the expected share of excluded picks instead."""
    return np.where(np.isfinite(np.asarray(gold, np.float64)), np.asarray(excluded, np.float64), np.nan)


# ----------------------------------------------------------------------------- published reward models

@dataclass
class PublishedPick:
    """A published reward model's Best-of-N picks, scored where the pick has gold, beside random and oracle."""

    reward_model: str
    n_prompts: int
    gold: float
    random: float
    oracle: float
    gain: float | None


def published_picks(responses: pl.DataFrame, eval_rows: np.ndarray, picks_file: Path) -> list[PublishedPick]:
    """Published reward models' picks (columns prompt_id, pick_<model> = the picked response key) on the evaluated
    prompts, with random (pool mean) and oracle (pool max) of the scored pool on those prompts."""
    picks = pl.read_parquet(picks_file).with_columns(pl.col("prompt_id").cast(pl.Utf8))
    pools = (responses.filter(pl.Series(eval_rows) & pl.col("scored")).group_by("prompt_id")
             .agg(random=pl.col("gold").mean(), oracle=pl.col("gold").max()))
    gold = responses.filter(pl.col("scored")).select("response_id", "gold")
    out = []
    for col in [c for c in picks.columns if c.startswith("pick_")]:
        scored = (picks.select("prompt_id", response_id=pl.col("prompt_id") + ":" + pl.col(col).cast(pl.Utf8))
                  .join(gold, on="response_id").join(pools, on="prompt_id"))
        if scored.height == 0:
            continue
        g, r, o = (float(scored[c].mean()) for c in ("gold", "random", "oracle"))
        gain = (g - r) / (o - r) if o > r else None
        out.append(PublishedPick(col.removeprefix("pick_"), scored.height, g, r, o, gain))
    return out


# ----------------------------------------------------------------------------- all of it

@dataclass
class LengthEffect:
    """The fit behind a pool's length-controlled gold (pool-lc). `gold` says which controlled gold pool-lc uses:
    "alpacaeval" (embrm.rewards.alpacaeval_controlled_gold: AlpacaEval 2's GLM, length term removed) or "loglinear"
    (embrm.rewards.controlled_gold). Both are fitted: effect, stderr and r2_within are the log-linear fit's (gold per
    unit of log(1 + characters) with prompt (and answer-source) effects held, its cluster-robust standard error,
    the within-prompt R²; None where it could not be fitted), n_rows and n_prompts the chosen fit's, `description`
    the chosen fit in one line, phi_shared and baseline the AlpacaEval-style fit's shared length term and where the
    baseline's lengths came from. `ranking`, for pools with named answer sources: how raw, log-linear and
    AlpacaEval-style gold rank the sources by their mean over the fitted rows: {"n_sources", "spearman":
    {"raw~loglinear", "raw~alpacaeval", "loglinear~alpacaeval"}, "top": {"raw", "loglinear", "alpacaeval"}: the
    three best sources under each}."""

    effect: float | None
    stderr: float | None
    n_rows: int
    n_prompts: int
    source: str | None
    r2_within: float | None
    gold: str = "loglinear"  # what results stored before the AlpacaEval-style gold used
    description: str | None = None
    phi_shared: float | None = None
    baseline: str | None = None
    ranking: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evaluation:
    """A model's held-out evaluation: pairwise metrics, Best-of-n per evaluated pool, published picks, the fit behind
    the length-controlled gold and the conformal bound's calibration (each, when it could not be made, None with
    the reason in its `*_error`)."""

    metrics: FitMetrics
    bon: dict[str, BonResult] = field(default_factory=dict)  # "pool", "pool-lc" [, "pool+<excluded>"]
    published: list[PublishedPick] = field(default_factory=list)
    length_effect: LengthEffect | None = None
    length_error: str | None = None  # why the pool has no length-controlled gold
    conformal: ConformalResult | None = None
    conformal_error: str | None = None  # why the conformal bound could not be calibrated
    sun: SunMetrics | None = None  # Sun et al.'s numbers (Protocol.sun_metrics), beside the exact ones

    def to_dict(self) -> dict:
        """JSON-able; a missing length effect or conformal calibration written as {"error": why}."""
        return {"metrics": self.metrics.to_dict(), "bon": {k: v.to_dict() for k, v in self.bon.items()},
                "published_picks": [asdict(p) for p in self.published],
                "length_effect": _or_error(self.length_effect, self.length_error),
                "conformal": _or_error(self.conformal, self.conformal_error),
                **({} if self.sun is None else {"sun": self.sun.to_dict()})}

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        """The Evaluation of to_dict() (a job's stored result), without curves or the conformal per-row bound."""
        length, conformal = d.get("length_effect") or {}, d.get("conformal") or {}
        return cls(FitMetrics.from_dict(d["metrics"]), {k: BonResult.from_dict(v) for k, v in d["bon"].items()},
                   [PublishedPick(**p) for p in d.get("published_picks") or []],
                   LengthEffect(**length) if length and "error" not in length else None, length.get("error"),
                   ConformalResult.from_dict(conformal) if conformal and "error" not in conformal else None,
                   conformal.get("error"), SunMetrics.from_dict(d["sun"]) if d.get("sun") else None)

    def frame(self) -> pl.DataFrame:
        """Every evaluated pool's curves, one row per (pool, proxy, n)."""
        return pl.concat([b.frame() for b in self.bon.values()]) if self.bon else pl.DataFrame()

    def write(self, out_dir, *, title: str | None = None, extra: dict | None = None) -> dict[str, Path]:
        """curves.parquet, curves.csv, summary.json and, per evaluated pool, gold_vs_kl[_<pool>].png + gao_fit.png;
        staged together (embrm.core.staged): a failure leaves none of them."""
        out = Path(out_dir)
        with staged(out) as stage:
            written = self._write_files(stage, title, extra)
        return {name: out / path.relative_to(stage) for name, path in written.items() if path is not None}

    def _write_files(self, out: Path, title: str | None, extra: dict | None) -> dict[str, Path | None]:
        frame = self.frame()
        paths = {"curves": out / "curves.parquet", "csv": out / "curves.csv", "summary": out / "summary.json"}
        write_atomic(paths["curves"], frame.write_parquet)
        write_atomic(paths["csv"], frame.write_csv)
        write_atomic(paths["summary"], json.dumps({**(extra or {}), **self.to_dict()}, indent=2, default=str) + "\n")
        refs = {p.reward_model: p.gold for p in self.published} or None
        for name, result in self.bon.items():
            stem = "gold_vs_kl" if name == "pool" else file_stem(f"gold_vs_kl_{name}".replace("+", "_"))
            paths[stem] = result.plot(out / f"{stem}.png", title=f"{title} ({name})" if title else name,
                                      references=refs if name == "pool" else None)
        if "pool" in self.bon:
            paths["gao"] = plot_gao_fit(self.bon["pool"].curves, out / "gao_fit.png")
        return paths


def _or_error(result, error: str | None) -> dict | None:
    return {"error": error} if error is not None else None if result is None else result.to_dict()
