"""An active labelling campaign with a budget: which pairs to label, round after round, and how fast each selection
rule reaches a good reward model compared with labelling at random.

    result = run_active(ds, X, ActiveConfig(rounds=10, batch=50))
    result.frame        # one row per strategy x seed x round: labels, accuracy, Best-of-n gain, ECE, log det H, seconds
    result.summary      # ActiveSummary: per strategy (summary["bald"]) final accuracy / gain, AUC, labels to target,
                        # effects vs random with intervals (embrm.evaluation.Effect)
    result.markdown(), result.plot("active.png"), result.write("results/active")

Per seed (Settles 2009, "Active learning literature survey", pool-based sampling; the protocol of Shen, Sun et al.
2025, arXiv 2502.04354, on embeddings):
  1. the prompt split of ``embrm.pipeline.split`` (the one ``embrm fit`` uses for that seed);
  2. the candidates: every unordered within-prompt pair of usable responses on the training prompts (plus, with
     across_prompts, as many random cross-prompt pairs of training responses, deduplicated);
  3. the simulated annotator's label of every candidate, decided by ONE uniform draw per candidate from the seed
     (common random numbers: a pair gets the same label under every strategy): ``embrm.pipeline.label_pairs`` with
     the campaign's LabelConfig, BT P(a > b) = sigmoid(beta (g_a - g_b) / s), s the population std of gold over the
     usable training responses, or the better one flipped with probability flip; gold ties are a fair coin;
  4. seed_pairs random candidates, the same for every strategy, labelled and fitted (``LaplaceBT(C)``);
  5. for each strategy, `rounds` rounds: the rule picks `batch` unlabelled candidates (``embrm.active._strategies``),
     the annotator labels them, the posterior is refitted (Newton warm-started from the previous mode), and the
     posterior mean is evaluated on the held-out prompts: pairwise accuracy vs the gold order
     (``embrm.evaluation.gold_order_pairs``, ties 0.5), Best-of-n gain at n = N from ``embrm.evaluation.top_picks``
     ((gold of the top response - the pool's mean) / (the pool's best - its mean), each summed over prompts: 0
     random, 1 oracle), ECE, log det H.
Effects vs random are paired per seed and held-out prompt (``embrm.evaluation.paired_effect``: crossed random effects
of prompts and seeds), with the evaluation's one verdict (``embrm.evaluation.verdict``) in this campaign's words.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from embrm.active._strategies import STRATEGIES, Candidates, State, pair_sq_norms, select
from embrm.core import (
    SEED,
    EmbrmError,
    Integer,
    Number,
    Progress,
    cell,
    check_embeddings,
    check_size,
    check_value,
    md_table,
    write_atomic,
)
from embrm.data import Dataset
from embrm.evaluation import (
    AGGREGATION_RULES,
    Effect,
    Pools,
    Unit,
    expected_calibration_error,
    gold_order_pairs,
    group_pools,
    paired_effect,
    pyplot,
    save_figure,
    top_picks,
    verdict,
)
from embrm.pipeline import LabelConfig, label_pairs, split
from embrm.rewards.heads import LaplaceBT

__all__ = ["ActiveConfig", "ActiveResult", "ActiveSummary", "StrategySummary", "run_active", "build_candidates"]

HEADER = ["strategy", "final accuracy", "final Best-of-n gain", "AUC", "labels to target", "final accuracy vs random",
          "verdict", "AUC vs random", "verdict"]
# the evaluation's verdicts on "the strategy beats random" (embrm.evaluation.verdict), in this campaign's words
VERDICTS = {"reproduced": "beats random", "reversed": "worse than random",
            "not reproduced (inconclusive)": "no difference from random (inconclusive)"}
RULES = {
    "seed_pairs": Integer(1, 100_000_000), "batch": Integer(1, 10_000_000), "rounds": Integer(1, 100_000),
    "samples": Integer(2, 100_000), "C": Number(0, lo_open=True),
    "lcb_beta": Number(0, AGGREGATION_RULES["lcb_beta"].hi),
    "test_size": Number(0, 1, lo_open=True, hi_open=True),
}
OPTIONAL = {"beta": Number(0), "flip": Number(0, 1), "target": Number(0, 1)}
# BLAS threads while a campaign runs (None: leave the library's own count). Its matrices are small (d x d, and
# (n, d) by d), where threads gain little; on a busy 2-core machine OpenBLAS threads made a short real campaign
# 6.8x slower than one thread (45 s vs 6.6 s; benchmarks/bench_active.py, "threads", measures both in one run).
BLAS_THREADS: int | None = 1
STREAMS = {"candidates": 1, "labels": 2, "seed_set": 3, "strategy": 4}  # independent random streams of a seed


# ----------------------------------------------------------------------------- configuration

def _names(value, what: str, allowed: tuple | None = None) -> tuple:
    """value as a non-empty tuple without duplicates (a lone string or int: a 1-tuple)."""
    items = (value,) if isinstance(value, (str, int)) else value
    try:
        items = tuple(items)
    except TypeError:
        raise EmbrmError(f"{what} must be a list, got {value!r}") from None
    if not items:
        raise EmbrmError(f"{what} is empty: give at least one")
    if len(set(items)) != len(items):
        raise EmbrmError(f"{what} lists {value!r} with duplicates: give each once")
    bad = [x for x in items if allowed is not None and x not in allowed]
    if bad:
        raise EmbrmError(f"unknown strategy {bad[0]!r}: use one or more of {', '.join(allowed)}")
    return items


@dataclass(frozen=True)
class ActiveConfig:
    """An active labelling campaign (see the module doc). beta / flip: the simulated annotator, as in
    ``embrm.pipeline.LabelConfig`` (flip wins when both are given; neither: noiseless). target: the held-out
    accuracy whose first budget is reported (None: random's final mean accuracy)."""

    strategies: tuple = STRATEGIES
    seed_pairs: int = 50
    batch: int = 50
    rounds: int = 10
    seeds: tuple = (0, 1, 2)
    samples: int = 16
    C: float = 1.0
    lcb_beta: float = 1.0
    across_prompts: bool = False
    test_size: float = 0.2
    beta: float | None = 10.0
    flip: float | None = None
    target: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "strategies", _names(self.strategies, "strategies", STRATEGIES))
        seeds = _names(self.seeds, "seeds")
        for s in seeds:
            check_value("seeds", s, SEED)
        object.__setattr__(self, "seeds", seeds)
        for name, rule in RULES.items():
            check_value(name, getattr(self, name), rule)
        for name, rule in OPTIONAL.items():
            if getattr(self, name) is not None:
                check_value(name, getattr(self, name), rule)
        if not isinstance(self.across_prompts, bool):
            raise EmbrmError(f"across_prompts must be true or false, got {self.across_prompts!r}")

    @property
    def budget(self) -> int:
        """Labels at the end: the seed set plus every round's batch."""
        return self.seed_pairs + self.rounds * self.batch

    @property
    def labels(self) -> LabelConfig:
        """The simulated annotator as the pipeline's LabelConfig (flip wins when both are given)."""
        return LabelConfig("simulated", self.beta, self.flip)

    @property
    def annotator(self) -> str:
        if self.flip is not None:
            return f"flip {self.flip:g}"
        return "noiseless" if self.beta is None else f"BT beta {self.beta:g}"

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "strategies": list(self.strategies), "seeds": list(self.seeds)}


# ----------------------------------------------------------------------------- candidates and labels

def _within_pairs(pools: Pools) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair (i < j) of every pool: (prompt (M,), cells (M, 2)). Pair k of a pool is the k-th in
    column-major order of its upper triangle (j = 1, 2, ...; i < j), so that a pool of n holds exactly the first
    n (n - 1) / 2 of them: j = floor((1 + sqrt(1 + 8k)) / 2), i = k - j (j - 1) / 2."""
    n = pools.sizes.astype(np.int64)
    count = n * (n - 1) // 2
    prompt = np.repeat(np.arange(len(n)), count)
    k = np.arange(count.sum(), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    j = np.floor((1 + np.sqrt(1 + 8 * k.astype(np.float64))) / 2).astype(np.int64)
    j -= j * (j - 1) // 2 > k  # float rounding at perfect squares, either way
    j += (j + 1) * j // 2 <= k
    return prompt, np.stack([k - j * (j - 1) // 2, j], axis=1)


def _cross_pairs(code: np.ndarray, want: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `want` distinct unordered pairs of rows from different prompts (code: each row's prompt), uniform."""
    n = len(code)
    possible = (n * n - int((np.bincount(code).astype(np.int64) ** 2).sum())) // 2
    want = min(want, possible)
    keys = np.zeros(0, np.int64)
    for _ in range(100):  # redraw rounds for duplicates and same-prompt draws; each round is vectorised
        if len(keys) >= want:
            break
        m = int(1.3 * (want - len(keys))) + 64
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        ok = code[a] != code[b]
        keys = np.unique(np.concatenate([keys, np.minimum(a, b)[ok] * n + np.maximum(a, b)[ok]]))
    keys = np.sort(keys[rng.permutation(len(keys))[:want]])
    return np.stack([keys // n, keys % n], axis=1)


def build_candidates(prompt_index: np.ndarray, across_prompts: bool = False,
                     rng: np.random.Generator | None = None) -> Candidates:
    """The candidate pairs over rows grouped by prompt (prompt_index (n,): each row's prompt key, grouped by
    embrm.evaluation.group_pools): every unordered within-prompt pair, then (across_prompts) as many distinct random
    cross-prompt pairs (fewer when fewer exist). Memory: M pairs and the (P, N_max, N_max) int64 pair_at table, fine
    for pools of tens of responses per prompt (alpaca-eval-models: 458k pairs, 7.5 MB), not for thousands (the M
    within-prompt pairs alone grow as N^2)."""
    pools = group_pools(prompt_index)
    code = pools.locate(len(prompt_index))[0]
    prompt, cells = _within_pairs(pools)
    pairs = pools.rows[prompt[:, None], cells]
    pair_at = np.full((len(pools.sizes), pools.width, pools.width), -1, np.int64)
    pos = np.arange(len(prompt))
    pair_at[prompt, cells[:, 0], cells[:, 1]] = pos
    pair_at[prompt, cells[:, 1], cells[:, 0]] = pos
    if across_prompts:
        cross = _cross_pairs(code, len(pairs), rng if rng is not None else np.random.default_rng(0))
        pairs = np.concatenate([pairs, cross])
        prompt = np.concatenate([prompt, np.full(len(cross), -1)])
        cells = np.concatenate([cells, np.full((len(cross), 2), -1)])
    return Candidates(pairs.astype(np.int64), prompt.astype(np.int64), cells.astype(np.int64), pools, pair_at)


# ----------------------------------------------------------------------------- one seed's data

@dataclass
class HeldOut:
    """The held-out prompts of a seed: their usable rows' embeddings, gold and prompt keys, gold-order pairs (better
    first, rows of X), each pair's prompt (its position in prompt_ids), the prompts' ids (sorted)."""

    X: np.ndarray
    gold: np.ndarray
    prompt: np.ndarray
    pairs: np.ndarray
    pair_prompt: np.ndarray
    prompt_ids: np.ndarray

    @property
    def n_pairs(self) -> np.ndarray:
        return np.bincount(self.pair_prompt, minlength=len(self.prompt_ids)).astype(np.float64)

    def best_of_n(self, scores: np.ndarray) -> float:
        """Best-of-n gain at n = N as the studies report it (embrm.evaluation.top_picks): (pick - random) / (oracle -
        random), each summed over the prompts (0: a random pick, 1: the best response of every pool)."""
        picks = top_picks(self.prompt, {"scores": scores}, self.gold, np.ones(len(self.gold), bool))
        random, pick = np.asarray(picks["random"]), np.asarray(picks["pick"]["scores"])
        return float((pick - random).sum() / (np.asarray(picks["oracle"]) - random).sum())

    def oracle(self) -> float:
        """The oracle's gain: 1 by definition (kept as a column so curves show the scale)."""
        return self.best_of_n(self.gold)

    def evaluate(self, model: LaplaceBT) -> tuple[dict, np.ndarray]:
        """The posterior mean's metrics and its correct pairs per prompt (ties 0.5)."""
        scores = self.X @ model.map_
        m = scores[self.pairs[:, 0]] - scores[self.pairs[:, 1]]
        correct = (m > 0) + 0.5 * (m == 0)
        return ({"accuracy": float(correct.mean()), "gain": self.best_of_n(scores),
                 "ece": expected_calibration_error(scores, self.pairs), "log_det": model.log_det_precision()},
                np.bincount(self.pair_prompt, weights=correct, minlength=len(self.prompt_ids)))


@dataclass
class SeedPool:
    """One seed's campaign inputs: training rows' embeddings X and rows (into the dataset), the candidates, every
    candidate's label (oriented pairs), the shared seed set and the held-out evaluation."""

    seed: int
    X: np.ndarray
    rows: np.ndarray
    candidates: Candidates
    oriented: np.ndarray
    seed_set: np.ndarray
    held: HeldOut
    prior_sq_norms: np.ndarray | None = None


def _rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], *more])


def _held_out(ds: Dataset, X: np.ndarray, usable: np.ndarray, test_ids: np.ndarray, seed: int) -> HeldOut:
    pid = ds.responses["prompt_id"].cast(pl.Utf8).to_numpy().astype(str)
    rows = np.flatnonzero(usable & np.isin(pid, test_ids))
    pairs = gold_order_pairs(ds.responses, test_ids, seed=seed, usable=usable)
    if len(pairs) == 0:
        raise EmbrmError(f"{ds.name}: no held-out pair with different gold on the {len(test_ids)} test prompts of "
                         f"seed {seed}: use a pool with several scored responses per prompt, or a larger test_size")
    local = np.full(len(pid), -1, np.int64)
    local[rows] = np.arange(len(rows))
    pools = group_pools(pid[rows])
    pairs = local[pairs]
    gold = ds.responses["gold"].to_numpy()[rows].astype(np.float64)
    return HeldOut(X[rows].astype(np.float64), gold, pid[rows], pairs, pools.locate(len(rows))[0][pairs[:, 0]],
                   pools.keys)


def _check_budget(config: ActiveConfig, n: int, seed: int, ds: Dataset) -> None:
    if config.budget > n:
        raise EmbrmError(f"the budget seed_pairs + rounds x batch = {config.seed_pairs} + {config.rounds} x "
                         f"{config.batch} = {config.budget} exceeds the {n} candidate pairs of {ds.name}'s training "
                         f"prompts (seed {seed}): lower rounds, batch or seed_pairs")


def _check_draws_fit(n: int, d: int, m: int, config: ActiveConfig) -> None:
    """Each round's posterior draws (d, S), the n training responses' rewards under each (n, S) and the m candidates'
    margins with their probabilities and entropies (~3 x (m, S)), float64: refused before a seed's first fit when
    memory lacks."""
    check_size("active", f"{config.samples} posterior draws over {m:,} candidate pairs", (d + n + 3 * m) *
               config.samples * 8, "lower --samples (16-64 draws estimate disagreement and BALD well)", field="samples")


def prepare_seed(ds: Dataset, X: np.ndarray, config: ActiveConfig, seed: int) -> SeedPool:
    """The split, candidates, labels, seed set and held-out evaluation of one seed."""
    labels = config.labels
    sp = split(ds, labels, config.test_size, seed)
    gold = ds.responses["gold"].to_numpy().astype(np.float64)
    usable = ds.usable & np.isfinite(gold)
    pid = ds.responses["prompt_id"].cast(pl.Utf8).to_numpy().astype(str)
    rows = np.flatnonzero(usable & np.isin(pid, sp.train))
    cand = build_candidates(pid[rows], config.across_prompts, _rng(seed, "candidates"))
    _check_budget(config, len(cand), seed, ds)
    _check_draws_fit(len(rows), X.shape[1], len(cand), config)
    scale = float(np.std(gold[rows]))
    if scale == 0 and config.flip is None and config.beta is not None:
        raise EmbrmError(f"{ds.name}: all {len(rows)} usable training responses of seed {seed} have the same gold "
                         f"score: no preference can be simulated")
    u = _rng(seed, "labels").random(len(cand))
    oriented = label_pairs(cand.pairs, gold[rows], u, labels, scale=scale or 1.0)
    seed_set = _rng(seed, "seed_set").choice(len(cand), config.seed_pairs, replace=False)
    Xtr = np.ascontiguousarray(X[rows])
    pool = SeedPool(seed, Xtr, rows, cand, oriented, seed_set, _held_out(ds, X, usable, sp.test, seed))
    if "dopt" in config.strategies:
        pool.prior_sq_norms = pair_sq_norms(Xtr.astype(np.float64), cand)
    return pool


# ----------------------------------------------------------------------------- the loop

@dataclass
class Trace:
    """One strategy's campaign on one seed: a record per round, the correct pairs per held-out prompt per round
    (rounds + 1, P), and the labelled candidates in order with the round that asked for them."""

    records: list[dict] = field(default_factory=list)
    correct: list[np.ndarray] = field(default_factory=list)
    picks: list[np.ndarray] = field(default_factory=list)


def _record(trace: Trace, pool: SeedPool, model: LaplaceBT, rnd: int, labels: int, select_s: float,
            fit_s: float) -> None:
    metrics, correct = pool.held.evaluate(model)
    trace.records.append({"seed": pool.seed, "round": rnd, "labels": labels, **metrics,
                          "select_seconds": select_s, "fit_seconds": fit_s})
    trace.correct.append(correct)


def _round(pool: SeedPool, config: ActiveConfig, name: str, model: LaplaceBT, available: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One selection: the rule's picks (checked: new and distinct) and the seconds it took."""
    t = time.perf_counter()
    W = model.sample(config.samples, seed=int(rng.integers(0, 2 ** 32)))
    state = State(pool.X, pool.candidates, available, model, W, config.lcb_beta, pool.prior_sq_norms)
    picks = select(name, state, config.batch, rng)
    seconds = time.perf_counter() - t
    if len(np.unique(picks)) != len(picks) or not available[picks].all() or \
            len(picks) != min(config.batch, int(available.sum())):
        raise RuntimeError(f"strategy {name} returned labelled, repeated or too few pairs")  # a bug, not user input
    return picks, seconds


def run_strategy(pool: SeedPool, config: ActiveConfig, name: str, start: tuple[LaplaceBT, float],
                 bar: Progress | None = None) -> Trace:
    """One strategy's rounds from the shared seed-set fit `start` (model, fit seconds)."""
    model, fit_s = start
    rng = _rng(pool.seed, "strategy", zlib.crc32(name.encode()))
    available = np.ones(len(pool.candidates), bool)
    available[pool.seed_set] = False
    trace = Trace(picks=[pool.seed_set])
    _record(trace, pool, model, 0, len(pool.seed_set), 0.0, fit_s)
    for rnd in range(1, config.rounds + 1):
        picks, select_s = _round(pool, config, name, model, available, rng)
        available[picks] = False
        trace.picks.append(picks)
        t = time.perf_counter()
        model = LaplaceBT(config.C).fit(pool.X, pool.oriented[np.concatenate(trace.picks)], init=model.map_)
        _record(trace, pool, model, rnd, int((~available).sum()), select_s, time.perf_counter() - t)
        if bar is not None:
            bar.advance()
    return trace


def _prepared(ds: Dataset, X) -> tuple[Dataset, np.ndarray]:
    """The dataset without its excluded responses and X aligned with it (checked)."""
    if not isinstance(ds, Dataset):
        raise EmbrmError(f"run_active takes an embrm Dataset (embrm.load_dataset), got {type(ds).__name__}")
    if not ds.has_gold:
        raise EmbrmError(f"{ds.source or ds.name}: no gold scores: active labelling simulates the annotator from "
                         f"gold (use a pool with a gold column, --gold-col)")
    X = check_embeddings(X)
    if len(X) != len(ds.responses):
        raise EmbrmError(f"{len(X)} embeddings for {len(ds.responses)} responses of {ds.name}: embed the same "
                         f"dataset (embrm embed) and pass its aligned matrix")
    if ds.excluded.any():
        X, ds = X[~ds.excluded], ds.without_excluded()
    return ds, X


def run_active(ds: Dataset, X, config: ActiveConfig = ActiveConfig(), *, progress: bool | None = None
               ) -> ActiveResult:
    """Run every strategy of `config` on every seed (see the module doc); progress: as embrm.core.Progress."""
    from threadpoolctl import threadpool_limits

    if not isinstance(config, ActiveConfig):
        raise EmbrmError(f"config must be an embrm.active.ActiveConfig, got {type(config).__name__}")
    ds, X = _prepared(ds, X)
    t0 = time.perf_counter()
    traces, pools = {}, {}
    total = len(config.seeds) * len(config.strategies) * config.rounds
    with Progress(total, f"active labelling on {ds.name}", "rounds", progress) as bar, \
            threadpool_limits(BLAS_THREADS, user_api="blas"):
        for seed in config.seeds:
            bar.set_description(f"seed {seed}: candidates")
            pool = pools[seed] = prepare_seed(ds, X, config, seed)
            t = time.perf_counter()
            model = LaplaceBT(config.C).fit(pool.X, pool.oriented[pool.seed_set])
            start = (model, time.perf_counter() - t)  # the seed-set fit, shared by every strategy
            for name in config.strategies:
                bar.set_description(f"seed {seed}: {name}")
                traces[name, seed] = run_strategy(pool, config, name, start, bar)
    return _result(ds, config, pools, traces, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- results

def _frames(ds: Dataset, config: ActiveConfig, pools: dict, traces: dict
            ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(curves, per-prompt counts, labelled pairs) as polars tables."""
    oracle = {s: p.held.oracle() for s, p in pools.items()}
    curves = pl.DataFrame([{"strategy": name, **r, "oracle_gain": oracle[seed]}
                           for (name, seed), tr in traces.items() for r in tr.records])
    curves = curves.select("strategy", "seed", "round", "labels", "accuracy", "gain", "oracle_gain", "ece",
                           "log_det", "select_seconds", "fit_seconds")
    per_prompt, queries = [], []
    rid = ds.responses["response_id"].cast(pl.Utf8).to_numpy()
    for (name, seed), tr in traces.items():
        held, pool = pools[seed].held, pools[seed]
        P, R = len(held.prompt_ids), len(tr.correct)
        per_prompt.append(pl.DataFrame({
            "strategy": [name] * (P * R), "seed": np.full(P * R, seed), "round": np.repeat(np.arange(R), P),
            "prompt_id": np.tile(held.prompt_ids, R), "correct": np.concatenate(tr.correct),
            "pairs": np.tile(held.n_pairs, R)}))
        rounds = np.repeat(np.arange(len(tr.picks)), [len(p) for p in tr.picks])
        rows = pool.rows[pool.oriented[np.concatenate(tr.picks)]]
        queries.append(pl.DataFrame({"strategy": [name] * len(rows), "seed": np.full(len(rows), seed),
                                     "round": rounds, "chosen_id": rid[rows[:, 0]], "rejected_id": rid[rows[:, 1]]}))
    return curves, pl.concat(per_prompt), pl.concat(queries)


def _trapezoid_weights(labels: np.ndarray) -> np.ndarray:
    """w with w . y = trapezoid area under y(labels) / (labels[-1] - labels[0])."""
    dx = np.diff(labels.astype(np.float64))
    w = np.zeros(len(labels))
    w[:-1] += dx / 2
    w[1:] += dx / 2
    return w / dx.sum()


def _effects(name: str, traces: dict, pools: dict, weights: np.ndarray) -> tuple[Effect, Effect]:
    """Effects vs random on final accuracy and on AUC, Units per seed over the held-out prompts with pairs."""
    final, auc = [], []
    for seed, pool in pools.items():
        den = pool.held.n_pairs
        keep = den > 0
        a, b = np.stack(traces[name, seed].correct), np.stack(traces["random", seed].correct)
        ids = pool.held.prompt_ids[keep]
        final.append(Unit(seed, name, ids, a[-1][keep], b[-1][keep], den[keep]))
        auc.append(Unit(seed, name, ids, (weights @ a)[keep], (weights @ b)[keep], den[keep]))
    return paired_effect(final), paired_effect(auc)


def vs_random(effect: Effect | None) -> str:
    """The verdict on "beats random" (embrm.evaluation.verdict) in the campaign's words; "-" without an effect."""
    return "-" if effect is None else VERDICTS[verdict(effect.lo, effect.hi)]


@dataclass(frozen=True)
class StrategySummary:
    """One strategy over the seeds: final accuracy and Best-of-n gain (seed means), the area under its accuracy
    curve, the labels it needed to reach the target (None: not reached), and its effects vs random on final
    accuracy and on AUC (None for random itself, or when random was not run)."""

    name: str
    final_accuracy: float
    final_gain: float
    auc: float
    labels_to_target: int | None
    accuracy_vs_random: Effect | None = None
    auc_vs_random: Effect | None = None

    def to_dict(self) -> dict:
        vs = None if self.accuracy_vs_random is None else {
            "final_accuracy": _effect_dict(self.accuracy_vs_random), "auc": _effect_dict(self.auc_vs_random)}
        return {"final_accuracy": self.final_accuracy, "final_gain": self.final_gain, "auc": self.auc,
                "labels_to_target": self.labels_to_target, "vs_random": vs}

    def row(self) -> list[str]:
        """The strategy's row of the campaign's table."""
        a, b = self.accuracy_vs_random, self.auc_vs_random
        return [self.name, cell(self.final_accuracy, 4), cell(self.final_gain, 4), cell(self.auc, 4),
                "not reached" if self.labels_to_target is None else str(self.labels_to_target),
                "-" if a is None else a.interval(4), vs_random(a), "-" if b is None else b.interval(4), vs_random(b)]


def _effect_dict(e: Effect) -> dict:
    return {"estimate": e.estimate, "lo": e.lo, "hi": e.hi, "verdict": vs_random(e), "method": e.method}


@dataclass(frozen=True)
class ActiveSummary:
    """Every strategy's StrategySummary, in the config's order; read by name (summary["bald"]) or iterated (names)."""

    strategies: tuple[StrategySummary, ...]

    def __getitem__(self, name: str) -> StrategySummary:
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)

    def __iter__(self):
        return iter(s.name for s in self.strategies)

    def __len__(self) -> int:
        return len(self.strategies)

    def to_dict(self) -> dict:
        return {s.name: s.to_dict() for s in self.strategies}


def _summary(curves: pl.DataFrame, config: ActiveConfig, pools: dict, traces: dict,
             target: float | None) -> ActiveSummary:
    """Per strategy: final accuracy and gain (seed means), AUC, labels to target, effects vs random."""
    mean = (curves.group_by("strategy", "round").agg(pl.col("labels").first(), pl.col("accuracy").mean(),
                                                     pl.col("gain").mean()).sort("strategy", "round"))
    out = []
    for name in config.strategies:
        m = mean.filter(pl.col("strategy") == name)
        labels, acc = m["labels"].to_numpy(), m["accuracy"].to_numpy()
        weights = _trapezoid_weights(labels)
        reached = np.flatnonzero(acc >= target - 1e-12) if target is not None else np.zeros(0, np.int64)
        effects = (_effects(name, traces, pools, weights) if name != "random" and "random" in config.strategies
                   else (None, None))
        out.append(StrategySummary(name, float(acc[-1]), float(m["gain"][-1]), float(weights @ acc),
                                   int(labels[reached[0]]) if len(reached) else None, *effects))
    return ActiveSummary(tuple(out))


def _result(ds: Dataset, config: ActiveConfig, pools: dict, traces: dict, seconds: float) -> ActiveResult:
    curves, prompts, queries = _frames(ds, config, pools, traces)
    target = config.target
    if target is None and "random" in config.strategies:
        target = float(curves.filter((pl.col("strategy") == "random") & (pl.col("round") == config.rounds))
                       ["accuracy"].mean())
    return ActiveResult(config, ds.name, curves, _summary(curves, config, pools, traces, target), seconds,
                        target=target, candidates=tuple(len(pools[s].candidates) for s in config.seeds),
                        prompts=prompts, queries=queries)


@dataclass
class ActiveResult:
    """A campaign's results: the config, the dataset's name, the curves (one row per strategy x seed x round),
    the per-strategy summary and the seconds it took; also the accuracy target, the number of candidate pairs per
    seed (in the config's seed order), the correct pairs per held-out prompt per round (prompts) and every labelled
    pair (queries)."""

    config: ActiveConfig
    dataset: str
    frame: pl.DataFrame
    summary: ActiveSummary
    seconds: float
    target: float | None = None
    candidates: tuple[int, ...] = ()
    prompts: pl.DataFrame | None = None
    queries: pl.DataFrame | None = None

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "config": self.config.to_dict(), "target": self.target,
                "candidates": {str(k): v for k, v in zip(self.config.seeds, self.candidates)},
                "summary": self.summary.to_dict(), "seconds": self.seconds}

    def markdown(self) -> str:
        """A table, one row per strategy, and a sentence saying which strategies beat random (or that none does)."""
        c = self.config
        target = "none" if self.target is None else f"{self.target:.4f}" + (
            " (random's final mean accuracy)" if c.target is None else "")
        lines = [f"### Active labelling on {self.dataset}", "",
                 f"LaplaceBT(C={c.C:g}) refitted after each of {c.rounds} rounds of {c.batch} pairs from a seed set "
                 f"of {c.seed_pairs} (budget {c.budget}); annotator {c.annotator}; seeds {list(c.seeds)}; "
                 f"{min(self.candidates, default=0):,} to {max(self.candidates, default=0):,} "
                 f"candidate pairs per seed{' (within and across prompts)' if c.across_prompts else ''}. "
                 f"Target accuracy {target}. Effects vs random: 95 % intervals over seeds and held-out prompts. "
                 f"Ran in {self.seconds:.1f} s.", "", md_table(HEADER, [s.row() for s in self.summary.strategies])]
        return "\n".join(lines + ["", self._conclusion()]) + "\n"

    def _conclusion(self) -> str:
        if "random" not in self.config.strategies:
            return "Random was not run: no comparison with random."
        wins = [s.name for s in self.summary.strategies
                if VERDICTS["reproduced"] in (vs_random(s.accuracy_vs_random), vs_random(s.auc_vs_random))]
        if not wins:
            return "No strategy beats random labelling (on final accuracy or on AUC)."
        return "Beats random (on final accuracy or AUC): " + ", ".join(wins) + "."

    def figure(self):
        """Accuracy vs labels (left) and Best-of-n gain vs labels (right): the mean over seeds, a min-max band."""
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        stats = (self.frame.group_by("strategy", "round")
                 .agg(pl.col("labels").first(), *[getattr(pl.col(m), f)().alias(f"{m}_{f}")
                                                  for m in ("accuracy", "gain") for f in ("mean", "min", "max")])
                 .sort("round"))
        for ax, metric, title in zip(axes, ("accuracy", "gain"), ("held-out pairwise accuracy",
                                                                  "Best-of-n gain (n = pool size)")):
            for name in self.config.strategies:
                s = stats.filter(pl.col("strategy") == name)
                line, = ax.plot(s["labels"], s[f"{metric}_mean"], marker=".", label=name)
                ax.fill_between(s["labels"], s[f"{metric}_min"], s[f"{metric}_max"], color=line.get_color(),
                                alpha=0.15)
            ax.set_xlabel("labelled pairs")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Active labelling on {self.dataset} ({len(self.config.seeds)} seeds: mean, min-max band)")
        fig.tight_layout()
        return fig

    def plot(self, path) -> Path:
        """The figure as a PNG at path."""
        return save_figure(self.figure(), path)

    def write(self, out_dir) -> dict[str, Path]:
        """summary.json, curves.parquet, prompts.parquet, queries.parquet and active.png under out_dir, each
        written atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {k: out / f for k, f in (("summary", "summary.json"), ("curves", "curves.parquet"),
                                         ("prompts", "prompts.parquet"), ("queries", "queries.parquet"),
                                         ("plot", "active.png"))}
        write_atomic(paths["summary"], json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        for key, df in (("curves", self.frame), ("prompts", self.prompts), ("queries", self.queries)):
            write_atomic(paths[key], lambda tmp, df=df: df.write_parquet(tmp))
        fig = self.figure()
        write_atomic(paths["plot"], lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        pyplot().close(fig)
        return paths
