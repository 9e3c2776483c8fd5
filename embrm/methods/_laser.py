"""LASeR (Nguyen et al. 2024): a LinUCB bandit picks, per prompt, which of M reward models (arms) drives Best-of-n.

    result = linucb_select(contexts, arm_rewards, alpha=0.1, seed=0)         # the bandit alone (pure, testable)
    summary, trace = laser_study(responses, X, scores, ["bt", "length"], alpha=0.1, n=None, seed=0)
    summary.selection("laser").mean_gold, summary.regret.vs_oracle, summary.to_dict()

The bandit (LinUCB, Li et al. 2010, as LASeR uses it). Prompts arrive one per round in a seeded random order.
Round t sees the prompt's context c (d,), scores every arm at once,
``ucb_k = c . theta_k + alpha * sqrt(c^T A_k^-1 c)``, plays the argmax (exact ties broken uniformly at random, seeded), observes the reward r of that arm only, and updates that arm's ridge
statistics ``A_k += c c^T``, ``b_k += r c`` (A_k starts at lam * I). Optionally the first ``warmup`` rounds per arm
play the arms in turn (default 0: pure LinUCB; with one noisy warm-up sample an arm can also be written off).
``A_k^-1`` is kept directly with the Sherman-Morrison update ``A^-1 -= (A^-1 c)(A^-1 c)^T / (1 + c^T A^-1 c)``,
so a round costs O(M d^2) and ``theta_k = A_k^-1 b_k`` is exactly the ridge least-squares fit of the arm's
observed rewards on its contexts.

Rewards in the Best-of-n simulation (``laser_study``): an arm's reward for a prompt is the exact expected gold of
its Best-of-n pick (embrm.evaluation.per_prompt_bon; n = the prompt's full scored pool by default, else min(n, pool
size)) minus the pool's mean gold, i.e. the gold GAIN over a random pick. The full (P, M) reward matrix is known to the
simulation (for regret), never to the bandit, which only sees the chosen arm's entry.

Contexts (``prompt_contexts``): one vector per prompt, the mean of its responses' embeddings (or a given prompt
embedding), reduced by PCA (fitted on the given prompts' contexts: unsupervised, no reward is used) to ``dim``
whitened components scaled by 1/sqrt(dim) (so ||c|| is about 1 and lam = 1 is a mild prior), plus a constant bias
feature (lets an arm's mean reward be learned without any embedding direction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import polars as pl

from embrm.core import EmbrmError, check_embeddings
from embrm.data import pair_indices
from embrm.evaluation import excluded_indicator, length_reward, per_prompt_bon, pyplot, save_figure, standardize
from embrm.methods._moe import MoEReward, prompt_means
from embrm.methods._sections import MethodSummary, table
from embrm.pipeline import LabelConfig, Learner, check_aligned, fit_pairs, split, training_pairs
from embrm.rewards.heads import LinearBT

__all__ = ["LinUCBResult", "linucb_select", "prompt_contexts", "prompt_means", "arm_reward_matrix", "laser_study",
           "laser_experiment", "train_arms", "default_arms", "plot_regret", "LaserSummary", "Selection", "Regret"]


# ----------------------------------------------------------------------------- the bandit

@dataclass
class LinUCBResult:
    """One LinUCB run over T = P rounds (all arrays in ROUND order).

    order: (T,) row of contexts/arm_rewards played at each round. choices: (T,) arm played. rewards: (T,) observed
    reward. oracle_arm: (T,) the round's best arm. best_arm: the best single arm in hindsight (largest total
    reward over all rounds). regret_vs_best_arm / regret_vs_oracle: (T,) cumulative regret (vs best_arm can go
    negative: per-prompt switching can beat every single arm). A_inv (M, d, d), b (M, d), theta (M, d): final
    per-arm ridge statistics. counts: (M,) rounds each arm was played.
    """

    order: np.ndarray
    choices: np.ndarray
    rewards: np.ndarray
    oracle_arm: np.ndarray
    best_arm: int
    regret_vs_best_arm: np.ndarray
    regret_vs_oracle: np.ndarray
    A_inv: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    counts: np.ndarray
    alpha: float
    lam: float
    warmup: int = 0

    def quarter_regret(self) -> tuple[float, float]:
        """Mean per-round regret vs the oracle arm in the first and in the last quarter of the rounds."""
        inst = np.diff(np.concatenate([[0.0], self.regret_vs_oracle]))
        q = max(len(inst) // 4, 1)
        return float(inst[:q].mean()), float(inst[-q:].mean())


def _check_bandit_inputs(contexts, arm_rewards, alpha, lam) -> tuple[np.ndarray, np.ndarray]:
    C = np.asarray(contexts, dtype=np.float64)
    R = np.asarray(arm_rewards, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] == 0 or C.shape[1] == 0:
        raise EmbrmError(f"contexts must be a non-empty (P, d) array (one row per prompt), got shape {C.shape}")
    if R.ndim != 2 or R.shape[0] != C.shape[0] or R.shape[1] == 0:
        raise EmbrmError(f"arm_rewards must be (P, M) with one row per context ({C.shape[0]}), got shape {R.shape}")
    if not (np.isfinite(C).all() and np.isfinite(R).all()):
        raise EmbrmError("contexts / arm_rewards contain NaN or inf: drop prompts without scored responses first")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise EmbrmError(f"alpha (exploration strength) must be a finite number >= 0, got {alpha}")
    if not (np.isfinite(lam) and lam > 0):
        raise EmbrmError(f"lam (ridge strength) must be a positive number, got {lam}")
    return C, R


def linucb_select(contexts, arm_rewards, alpha: float = 0.1, seed: int = 0, *, lam: float = 1.0,
                  warmup: int = 0, shuffle: bool = True) -> LinUCBResult:
    """Run disjoint LinUCB (one ridge model per arm) over the P prompts, one round each.

    contexts: (P, d) one context per prompt; arm_rewards: (P, M) the reward each arm WOULD get on each prompt (the
    bandit sees only the played entry). alpha: exploration bonus weight (0 = greedy). seed: fixes the round order
    (a random permutation when shuffle) and tie-breaking. warmup: the first warmup * M rounds play the arms in
    turn (0, 1, ..., M-1, 0, ...) before the UCB rule takes over; without it a small alpha can lock onto the first
    arm tried whenever every arm's reward is positive (its estimate then beats the others' bare bonus). The
    statistics are updated in warm-up rounds too. Per round every arm is scored in one batched matmul.
    """
    C, R = _check_bandit_inputs(contexts, arm_rewards, alpha, lam)
    (P, d), M = C.shape, R.shape[1]
    if int(warmup) != warmup or warmup < 0:
        raise EmbrmError(f"warmup must be an integer >= 0 (rounds per arm), got {warmup}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(P) if shuffle else np.arange(P)
    A_inv = np.broadcast_to(np.eye(d) / lam, (M, d, d)).copy()
    b = np.zeros((M, d))
    theta = np.zeros((M, d))
    choices = np.empty(P, np.int64)
    for t, p in enumerate(order):
        c = C[p]
        Ac = A_inv @ c                                             # (M, d): A_k^-1 c for every arm
        ucb = theta @ c + alpha * np.sqrt(np.maximum(Ac @ c, 0.0))
        top = np.flatnonzero(ucb == ucb.max())
        k = int(top[0] if len(top) == 1 else top[rng.integers(len(top))])
        if t < warmup * M:
            k = t % M
        v = Ac[k]
        A_inv[k] -= np.outer(v, v) / (1.0 + v @ c)                 # Sherman-Morrison: (A + c c^T)^-1
        b[k] += R[p, k] * c
        theta[k] = A_inv[k] @ b[k]
        choices[t] = k
    Ro = R[order]
    rewards = Ro[np.arange(P), choices]
    best_arm = int(np.argmax(R.sum(axis=0)))
    return LinUCBResult(
        order=order, choices=choices, rewards=rewards, oracle_arm=Ro.argmax(axis=1), best_arm=best_arm,
        regret_vs_best_arm=np.cumsum(Ro[:, best_arm] - rewards), regret_vs_oracle=np.cumsum(Ro.max(axis=1) - rewards),
        A_inv=A_inv, b=b, theta=theta, counts=np.bincount(choices, minlength=M), alpha=float(alpha), lam=float(lam),
        warmup=int(warmup))


# ----------------------------------------------------------------------------- contexts and arm rewards

def prompt_contexts(prompt_index, X, *, dim: int | None = 32, bias: bool = True, prompt_X=None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One bandit context per prompt: ``(keys (P,) str sorted, contexts (P, d'))``.

    X: (n, d) response embeddings (rows of prompt_index's prompts). prompt_X: optional (n, d_p) per-row prompt
    embedding (e.g. of the prompt text, repeated on its rows) used instead of the mean response embedding.
    dim: PCA components (whitened, scaled by 1/sqrt(dim)); None or 0 keeps the raw mean vectors. bias: append 1.
    """
    X = check_embeddings(X if prompt_X is None else prompt_X, "prompt_X" if prompt_X is not None else "embeddings")
    if len(np.asarray(prompt_index)) != len(X):
        raise EmbrmError(f"prompt_index has {len(np.asarray(prompt_index))} entries for {len(X)} embedding rows: "
                         f"pass one prompt key per row")
    keys, Z = prompt_means(prompt_index, X)
    if dim:
        from sklearn.decomposition import PCA

        k = int(min(dim, len(keys) - 1, Z.shape[1]))
        if k < 1:
            raise EmbrmError(f"only {len(keys)} prompt(s): PCA contexts need at least 2 (or pass dim=None)")
        Z = PCA(n_components=k, whiten=True, random_state=seed).fit_transform(Z) / np.sqrt(k)
    if bias:
        Z = np.concatenate([Z, np.ones((len(Z), 1))], axis=1)
    return keys, Z


def arm_reward_matrix(prompt_index, scores, gold, n: int | None = None, *, extra: dict | None = None) -> dict:
    """Exact expected gold of each arm's Best-of-n pick, per prompt (embrm.evaluation.per_prompt_bon, ties averaged).

    scores: (rows, M) arm scores; gold: (rows,) (NaN = unscored, dropped). n: Best-of-n size per prompt, capped at
    the prompt's scored pool size (None = the full pool). extra: further {name: (rows,)} proxies evaluated the same
    way (e.g. an ensemble). Returns dict: prompts (P,) str, bon (P, M) expected gold, extra {name: (P,)},
    mean (P,) pool mean gold (random pick), max (P,) pool max gold (oracle response), pool_size (P,).
    """
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim != 2:
        raise EmbrmError(f"scores must be (n_responses, M) arm scores, got shape {S.shape}")
    extra = dict(extra or {})
    proxies = {f"arm{j}": S[:, j] for j in range(S.shape[1])} | {f"x:{k}": np.asarray(v) for k, v in extra.items()}
    bon = per_prompt_bon(prompt_index, proxies, gold, n)
    M = S.shape[1]
    return {"prompts": bon.prompts, "bon": bon.gold[:M].T, "extra": {k: bon.gold[M + j] for j, k in enumerate(extra)},
            "mean": bon.random, "max": bon.oracle, "pool_size": bon.pool_size}


# ----------------------------------------------------------------------------- the study

@dataclass(frozen=True)
class Selection:
    """One way of picking a response per held-out prompt and the mean gold of its picks: "laser", "arm:<arm>", the
    average-score "ensemble", "random" (the pool mean), "oracle_arm" (the best arm per prompt), "oracle_response"."""

    name: str
    mean_gold: float  # over all rounds
    mean_gold_last_half: float  # over the last half of the rounds (after learning)
    rounds_played: int | None = None  # arms: rounds LASeR played it
    oracle_arm_share: float | None = None  # arms: share of rounds where it is the best arm
    excluded_pick_rate: float | None = None  # laser and the arms, when the pools keep excluded responses


@dataclass(frozen=True)
class Regret:
    """Cumulative regret of LASeR's choices, and its mean per round in the first and the last quarter."""

    vs_best_arm: float
    vs_oracle: float
    per_round_vs_oracle_first_quarter: float
    per_round_vs_oracle_last_quarter: float


@dataclass(frozen=True)
class LaserSummary(MethodSummary):
    """LASeR's run: the bandit's settings, every selection's mean gold, the regret; with the experiment's settings
    when it came from laser_experiment."""

    alpha: float
    n: int | None
    dim: int | None
    lam: float
    warmup: int
    seed: int
    ctx_dim: int
    n_rounds: int
    arms: tuple[str, ...]
    best_arm_in_hindsight: str
    selections: tuple[Selection, ...]
    regret: Regret
    dataset: str | None = None
    test_size: float | None = None
    n_pairs: int | None = None
    beta: float | None = None
    n_train_prompts: int | None = None
    setting: str | None = None
    with_excluded: bool = False

    def selection(self, name: str) -> Selection:
        return next(s for s in self.selections if s.name == name)

    def excluded_picks(self) -> list[tuple[str, float]]:
        return [(s.name, s.excluded_pick_rate) for s in self.selections if s.excluded_pick_rate is not None]

    def to_dict(self) -> dict:
        arms = [self.selection(f"arm:{a}") for a in self.arms]
        d = {"method": "laser-linucb", "alpha": self.alpha, "n": self.n, "dim": self.dim, "lam": self.lam,
             "warmup": self.warmup, "seed": self.seed, "ctx_dim": self.ctx_dim, "n_rounds": self.n_rounds,
             "arms": list(self.arms), "best_arm_in_hindsight": self.best_arm_in_hindsight,
             "mean_gold": {s.name: s.mean_gold for s in self.selections},
             "mean_gold_last_half": {s.name: s.mean_gold_last_half for s in self.selections},
             "regret": asdict(self.regret), "choices": {a: s.rounds_played for a, s in zip(self.arms, arms)},
             "oracle_arm_share": {a: s.oracle_arm_share for a, s in zip(self.arms, arms)}}
        if self.excluded_picks():
            d["excluded_pick_rate"] = dict(self.excluded_picks())
        if self.dataset is not None:
            d.update(dataset=self.dataset, test_size=self.test_size, n_pairs=self.n_pairs, beta=self.beta,
                     n_train_prompts=self.n_train_prompts, setting=self.setting)
        return d | {"with_excluded": self.with_excluded}

    def markdown(self) -> str:
        r = self.regret
        rows = [[s.name, s.mean_gold, s.mean_gold_last_half, s.rounds_played, s.oracle_arm_share]
                for s in self.selections]
        where = f" ({self.setting})" if self.setting else ""
        return (f"LASeR on {self.dataset or 'the given pools'}: {self.n_rounds} held-out prompts, Best-of-"
                f"{self.n or 'pool'}, arms {', '.join(self.arms)}{where}.\n\n"
                + table(["pick by", "mean gold (all rounds)", "mean gold (last half)", "rounds played",
                         "oracle arm share"], rows, 4)
                + f"\n\nCumulative regret: vs the best single arm in hindsight ({self.best_arm_in_hindsight}) "
                  f"{r.vs_best_arm:.3f}, vs the per-prompt oracle arm {r.vs_oracle:.3f}; per round vs the oracle "
                  f"{r.per_round_vs_oracle_first_quarter:.4f} (first quarter) -> "
                  f"{r.per_round_vs_oracle_last_quarter:.4f} (last quarter).")


def _ensemble_proxy(S: np.ndarray) -> np.ndarray:
    """Average-score ensemble: the mean of the arms' scores, each z-scored over the given rows."""
    return standardize(S.astype(np.float64)).mean(axis=1)


def laser_study(responses: pl.DataFrame, X, scores, arm_names, *, alpha: float = 0.1, n: int | None = None,
                seed: int = 0, dim: int | None = 32, lam: float = 1.0, warmup: int = 0,
                prompt_X=None) -> tuple[LaserSummary, pl.DataFrame]:
    """Run LASeR over the prompts of ``responses`` (pass HELD-OUT prompts: the arms must not have trained on them).

    responses: table with prompt_id and gold (null/NaN = unscored); X: (rows, d) embeddings aligned with it;
    scores: (rows, M) arm scores; arm_names: M names. Returns (LaserSummary, per-round trace frame).
    The summary compares the mean gold of LASeR's picks with each single arm, the average-score ensemble, a random
    pick, the per-prompt oracle arm and the oracle response, over all rounds and over the last half (after
    learning), plus cumulative regret and how often each arm was played.
    """
    for col in ("prompt_id", "gold"):
        if col not in responses.columns:
            raise EmbrmError(f"responses table lacks column {col!r}: laser needs a pool with gold scores")
    S = np.asarray(scores, dtype=np.float64)
    names = [str(a) for a in arm_names]
    if S.ndim != 2 or S.shape != (len(responses), len(names)):
        raise EmbrmError(f"scores must be (rows, arms) = ({len(responses)}, {len(names)}), got shape {S.shape}")
    if len(set(names)) != len(names):
        raise EmbrmError(f"arm names must be distinct, got {names}")
    pidx = responses["prompt_id"].cast(pl.Utf8).to_numpy().astype(str)
    gold = responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    arms = arm_reward_matrix(pidx, S, gold, n, extra={"ensemble": _ensemble_proxy(S)})
    keys, ctx = prompt_contexts(pidx, X, dim=dim, prompt_X=prompt_X, seed=seed)
    ctx = ctx[np.searchsorted(keys, arms["prompts"])]              # align contexts with the scored prompts
    R = arms["bon"] - arms["mean"][:, None]                        # gold gain of each arm's pick
    res = linucb_select(ctx, R, alpha=alpha, seed=seed, lam=lam, warmup=warmup)
    summary = _summary(res, arms, names, alpha=alpha, n=n, dim=dim, lam=lam, warmup=warmup, seed=seed,
                       ctx_dim=ctx.shape[1])
    return summary, _trace(res, arms, names)


def _trace(res: LinUCBResult, arms: dict, names: list[str]) -> pl.DataFrame:
    o = res.order
    return pl.DataFrame({
        "round": np.arange(len(o), dtype=np.int64), "prompt_id": arms["prompts"][o],
        "arm": np.asarray(names, dtype=object)[res.choices].astype(str), "arm_index": res.choices,
        "reward": res.rewards, "gold": arms["mean"][o] + res.rewards, "pool_mean": arms["mean"][o],
        "oracle_arm": np.asarray(names, dtype=object)[res.oracle_arm].astype(str),
        "cum_regret_vs_best_arm": res.regret_vs_best_arm, "cum_regret_vs_oracle": res.regret_vs_oracle,
    })


def _summary(res: LinUCBResult, arms: dict, names: list[str], **params) -> LaserSummary:
    o = res.order
    T = len(o)
    late = o[T // 2:]                                              # prompts of the last half of the rounds
    laser_gold = arms["mean"][o] + res.rewards

    def gold_of(rows) -> dict[str, float]:
        cols = {f"arm:{a}": arms["bon"][rows, j] for j, a in enumerate(names)}
        return {**{k: float(v.mean()) for k, v in cols.items()},
                "ensemble": float(arms["extra"]["ensemble"][rows].mean()), "random": float(arms["mean"][rows].mean()),
                "oracle_arm": float(arms["bon"][rows].max(axis=1).mean()),
                "oracle_response": float(arms["max"][rows].mean())}

    every = {"laser": float(laser_gold.mean()), **gold_of(o)}
    last = {"laser": float(laser_gold[T // 2:].mean()), **gold_of(late)}
    played = {f"arm:{a}": (int(c), float(np.mean(res.oracle_arm == j)))
              for j, (a, c) in enumerate(zip(names, res.counts))}
    selections = tuple(Selection(k, every[k], last[k], *played.get(k, (None, None))) for k in every)
    regret = Regret(float(res.regret_vs_best_arm[-1]), float(res.regret_vs_oracle[-1]), *res.quarter_regret())
    return LaserSummary(**params, n_rounds=T, arms=tuple(names), best_arm_in_hindsight=names[res.best_arm],
                        selections=selections, regret=regret)


def plot_regret(trace: pl.DataFrame, path, *, title: str | None = None):
    """PNG: cumulative regret of LASeR vs the best single arm and vs the per-prompt oracle arm, by round."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    t = trace["round"].to_numpy() + 1
    ax.plot(t, trace["cum_regret_vs_oracle"].to_numpy(), label="vs per-prompt oracle arm", lw=1.8)
    ax.plot(t, trace["cum_regret_vs_best_arm"].to_numpy(), label="vs best single arm (hindsight)", lw=1.8)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("round (prompt)")
    ax.set_ylabel("cumulative regret (gold gain)")
    ax.set_title(title or "LASeR (LinUCB) cumulative regret")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- arms for a real pool

ARM_KINDS = ("bt", "length", "slice", "noisy", "moe")


def default_arms(responses: pl.DataFrame) -> list[str]:
    """bt, length and a one-category slice model when the pool has a `dataset` column, else a noisy-label model."""
    return ["bt", "length", "slice" if "dataset" in responses.columns else "noisy"]


def _slice_value(spec: str, responses: pl.DataFrame, train_ids: np.ndarray, col: str) -> str:
    """The category named by "slice:VALUE", or for a bare "slice" the most frequent one among training prompts."""
    if col not in responses.columns:
        raise EmbrmError(f"arm {spec!r} needs a category column {col!r}, which this pool lacks: drop it from --arms")
    train = responses.filter(pl.col("prompt_id").is_in(train_ids.tolist())).unique("prompt_id")
    values = train[col].cast(pl.Utf8).value_counts(sort=True)
    if ":" in spec:
        value = spec.split(":", 1)[1]
        if value not in values[col].to_list():
            raise EmbrmError(f"arm {spec!r}: no training prompt has {col} = {value!r}: use one of "
                             f"{', '.join(values[col].to_list())}")
        return value
    return str(values[col][0])


def train_arms(ds, X, arms, train_ids, *, seed: int = 0, n_pairs: int = 10_000, beta: float = 10.0, k: int = 5,
               slice_col: str = "dataset") -> tuple[list[str], np.ndarray]:
    """Train the arms named in ``arms`` on the TRAINING prompts of the Dataset ``ds`` and score every row: (names,
    (rows, M) float64). Labels and ensemble fits come from embrm.pipeline (training_pairs, fit_pairs).

    bt          mean of a K-member linear-BT ensemble (independent members) on simulated pairs (beta)
    length      response length in characters (no training)
    slice[:V]   one linear BT head on only the pairs of training prompts whose ``slice_col`` is V (default: the
                most frequent value): a model trained on a different data slice
    noisy       one linear BT head on a different label set: the same prompts, labels flipped with prob. 0.25
    moe         embrm.methods.MoEReward (routed experts) on the bt pairs
    """
    bad = [a for a in arms if a.split(":", 1)[0] not in ARM_KINDS]
    if bad:
        raise EmbrmError(f"unknown arm {bad[0]!r}: use {', '.join(ARM_KINDS)} (slice:VALUE for one category)")
    if len(set(arms)) < 2 or len(set(arms)) != len(arms):
        raise EmbrmError(f"LASeR needs at least 2 distinct arms to choose between, got {list(arms)}: e.g. "
                         f"--arms bt,length")
    responses = ds.responses
    train_ids = np.asarray(train_ids).astype(str)
    df = training_pairs(ds, LabelConfig("simulated", beta, None, n_pairs), train_ids, seed)
    pairs = pair_indices(df, responses)
    cols, names = [], []
    for spec in arms:
        kind = spec.split(":", 1)[0]
        if kind == "bt":
            col = fit_pairs(ds, X, df, Learner("linear"), k=k, seed=seed).predict(X).mean(axis=1)
        elif kind == "length":
            col = length_reward(responses)
        elif kind == "slice":
            value = _slice_value(spec, responses, train_ids, slice_col)
            ids = responses.filter(pl.col(slice_col).cast(pl.Utf8) == value)["prompt_id"].unique()
            keep = df["prompt_id"].is_in(ids.implode()).to_numpy()
            if keep.sum() < 2:
                raise EmbrmError(f"arm {spec!r}: only {int(keep.sum())} training pair(s) have {slice_col} = "
                                 f"{value!r}: raise --n-pairs or pick a larger slice")
            col = LinearBT().fit(X, pairs[keep]).predict(X)
            spec = f"slice:{value}"
        elif kind == "noisy":
            noisy = training_pairs(ds, LabelConfig("simulated", None, 0.25, n_pairs), train_ids, seed + 1)
            col = LinearBT().fit(X, pair_indices(noisy, responses)).predict(X)
        else:  # moe
            pidx = responses["prompt_id"].cast(pl.Utf8).to_numpy()
            cats = responses[slice_col].cast(pl.Utf8).to_numpy() if slice_col in responses.columns else None
            col = MoEReward(random_state=seed).fit(X, pairs, pidx, categories=cats).predict(X, pidx)
        names.append(spec)
        cols.append(np.asarray(col, np.float64))
    return names, np.stack(cols, axis=1)


def _excluded_picks(responses: pl.DataFrame, S: np.ndarray, names: list[str], excluded: np.ndarray,
                    trace: pl.DataFrame, n: int | None) -> dict[str, float]:
    """Expected share of prompts whose Best-of-n pick is an excluded response: per arm, and for LASeR's choices."""
    gold = responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    flag = excluded_indicator(gold, excluded)
    share = arm_reward_matrix(responses["prompt_id"].cast(pl.Utf8).to_numpy(), S, flag, n)
    order = np.argsort(share["prompts"])  # the pools' order is not sorted: look the rounds' prompts up through it
    rows = order[np.searchsorted(share["prompts"][order], trace["prompt_id"].to_numpy().astype(str))]
    picked = share["bon"][rows, trace["arm_index"].to_numpy()]
    per_arm = share["bon"].mean(axis=0)
    return {"laser": float(picked.mean()), **{f"arm:{a}": float(per_arm[j]) for j, a in enumerate(names)}}


def laser_experiment(ds, X, *, arms=None, alpha: float = 0.1, n: int | None = None, seed: int = 0,
                     test_size: float = 0.5, n_pairs: int = 10_000, beta: float = 10.0, dim: int | None = 32,
                     warmup: int = 0, slice_col: str = "dataset") -> tuple[LaserSummary, pl.DataFrame]:
    """End to end on a pool: the pipeline's prompt split (seeded), the arms trained on the training prompts
    (``train_arms``), LASeR over the held-out prompts (``laser_study``). ds: a Dataset; X: aligned embeddings."""
    check_aligned(ds, np.asarray(X))
    responses = ds.responses
    parts = split(ds, LabelConfig("simulated", beta, None, n_pairs), test_size, seed)
    train_ids, test_ids = parts.train, parts.test
    names, S = train_arms(ds, X, arms or default_arms(responses), train_ids, seed=seed, n_pairs=n_pairs, beta=beta,
                          slice_col=slice_col)
    test = responses["prompt_id"].cast(pl.Utf8).is_in(test_ids.tolist()).to_numpy()
    summary, trace = laser_study(responses.filter(pl.Series(test)), np.asarray(X)[test], S[test], names,
                                 alpha=alpha, n=n, seed=seed, dim=dim, warmup=warmup)
    if ds.excluded[test].any():
        shares = _excluded_picks(responses.filter(pl.Series(test)), S[test], names, ds.excluded[test], trace, n)
        summary = replace(summary, selections=tuple(replace(s, excluded_pick_rate=shares.get(s.name))
                                                    for s in summary.selections))
    summary = replace(summary, dataset=ds.name, test_size=test_size, n_pairs=n_pairs, beta=beta,
                      n_train_prompts=int(len(train_ids)), setting="arms trained on the other prompts of this pool; "
                      "the bandit runs over held-out prompts")
    return summary, trace
