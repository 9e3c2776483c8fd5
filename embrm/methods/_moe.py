"""Routed mixture-of-experts reward heads over embeddings (DMoERM, Quan 2024), and a study against one head.

    moe = MoEReward(n_clusters=5).fit(X, pairs, prompt_index, categories=responses["dataset"])
    rewards = moe.predict(X_new, prompt_index_new)          # (n,) one reward per response
    summary, per_category = moe_study(ds, X, categories="dataset", seed=0)   # a MoESummary and a frame

The model (all parts fitted on the training pairs only):
    router     a prompt's category from its PROMPT-LEVEL embedding (the mean of its responses' embeddings, or a
               given per-row prompt embedding): multinomial logistic regression on standardised features, trained on
               the given category labels (e.g. AlpacaEval's `dataset` column) or, without labels, on k-means
               clusters (sklearn) of the training prompts. It is a classifier, so it routes prompts it never saw.
    experts    one reward head per category (linear BT by default; any embrm head), fitted on the pairs of that
               category's prompts, shrunk towards one global head fitted on every pair:
               e_c(x) = w_c raw_c(x) + (1 - w_c) global(x),  w_c = m_c / (m_c + shrink),  m_c = the category's pairs
               (w_c = 0, i.e. the global head, when m_c < min_pairs).
    combiner   a small linear Bradley-Terry model over the features [pi_1 e_1, ..., pi_C e_C, global], pi = the
               router's probabilities for the response's prompt (soft routing; hard = one-hot argmax). It is fitted
               on pairs of held-out TRAINING prompts (val_fraction, split by prompt) scored by experts fitted on
               the rest, so it learns how far to trust each expert out of sample; the experts are then refitted on
               all pairs (stacking). combiner="mixture" skips it: reward = sum_c pi_c e_c.
Pairs belong to the category of their preferred response's prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from embrm.core import EmbrmError
from embrm.data import pair_indices, split_pairs
from embrm.evaluation import (
    gold_order_pairs,
    group_pools,
    length_reward,
    pairwise_accuracy,
    per_prompt_spearman,
    pool_curves,
    rows_of,
    top_picks,
)
from embrm.methods._sections import MethodSummary, rates, table
from embrm.pipeline import LabelConfig, check_aligned, split, training_pairs
from embrm.rewards.heads import HEADS, LinearBT, check_embeddings, check_pairs

__all__ = ["MoEReward", "moe_study", "MoESummary", "RewardScore", "ExpertModel"]


def _prompt_groups(prompt_index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct prompt keys (as str), each row's prompt position and each prompt's row count (the pools of
    embrm.evaluation.group_pools)."""
    pidx = np.asarray(prompt_index).astype(str)
    pools = group_pools(pidx)
    return pools.keys, pools.locate(len(pidx))[0], pools.sizes


def _group_means(inv: np.ndarray, counts: np.ndarray, X) -> np.ndarray:
    """(P, d) mean of X's rows per group (inv: each row's group), one sparse matmul."""
    from scipy import sparse

    G = sparse.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(counts), len(inv)))
    return np.asarray(G @ np.asarray(X, np.float64)) / counts.astype(np.float64)[:, None]


def prompt_means(prompt_index, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct prompt keys (as str) and the (P, d) mean of X's rows per prompt."""
    keys, inv, counts = _prompt_groups(prompt_index)
    return keys, _group_means(inv, counts, X)


def _prompt_level(prompt_index, X, prompt_X=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys (P,) str, row -> prompt position (n,), prompt embeddings (P, d))."""
    pidx = np.asarray(prompt_index).astype(str)
    E = check_embeddings(X if prompt_X is None else prompt_X, "embeddings" if prompt_X is None else "prompt_X")
    if pidx.shape != (len(E),):
        raise EmbrmError(f"prompt_index must hold one prompt key per embedding row ({len(E)}), got shape "
                         f"{pidx.shape}")
    keys, inv, counts = _prompt_groups(pidx)
    return keys, inv, _group_means(inv, counts, E)


def _prompt_labels(keys, row_prompt, categories) -> np.ndarray:
    """One category label per prompt from per-row labels; a prompt whose rows disagree -> EmbrmError."""
    cat = np.asarray(categories).astype(str)
    if cat.shape != row_prompt.shape:
        raise EmbrmError(f"categories must hold one label per response row ({len(row_prompt)}), got shape "
                         f"{cat.shape}")
    labels = np.empty(len(keys), dtype=object)
    labels[row_prompt] = cat
    if np.any(labels[row_prompt] != cat):
        bad = int(np.flatnonzero(labels[row_prompt] != cat)[0])
        raise EmbrmError(f"prompt {keys[row_prompt[bad]]!r} has rows in different categories: a category column "
                         f"must be constant within a prompt (e.g. AlpacaEval's `dataset`)")
    return labels.astype(str)


class MoEReward:
    """Router + per-category expert heads + learned combiner (see the module doc). scikit-learn style.

    Parameters: n_clusters (k-means categories when fit gets no labels), head / head_params (expert head type),
    shrink (pairs at which an expert gets weight 1/2 against the global head), min_pairs, routing ("soft" |
    "hard"), combiner ("linear" | "mixture"), val_fraction (training prompts held out to fit the combiner),
    router_C / combiner_C (inverse L2 strengths), random_state.
    Learned: categories_ (C,), router_ (sklearn pipeline or None when C = 1), kmeans_ (or None), experts_ (C raw
    heads; None where m_c < min_pairs), global_ (head), pairs_per_category_ (C,), expert_weight_ (C,) = w_c,
    combiner_ (C + 1,) weights, train_category_ (per training prompt).
    """

    def __init__(self, n_clusters: int = 5, *, head: str = "linear", head_params: dict | None = None,
                 shrink: float = 200.0, min_pairs: int = 20, routing: str = "soft", combiner: str = "linear",
                 val_fraction: float = 0.2, router_C: float = 1.0, combiner_C: float = 1.0,
                 random_state: int = 0):
        self.n_clusters = n_clusters
        self.head = head
        self.head_params = head_params
        self.shrink = shrink
        self.min_pairs = min_pairs
        self.routing = routing
        self.combiner = combiner
        self.val_fraction = val_fraction
        self.router_C = router_C
        self.combiner_C = combiner_C
        self.random_state = random_state

    # ------------------------------------------------------------------------- fitting

    def _check_params(self) -> None:
        if self.head not in HEADS:
            raise EmbrmError(f"unknown expert head {self.head!r}: use one of {', '.join(HEADS)}")
        if self.routing not in ("soft", "hard"):
            raise EmbrmError(f"routing must be 'soft' or 'hard', got {self.routing!r}")
        if self.combiner not in ("linear", "mixture"):
            raise EmbrmError(f"combiner must be 'linear' or 'mixture', got {self.combiner!r}")
        if not (np.isfinite(self.shrink) and self.shrink >= 0):
            raise EmbrmError(f"shrink must be a number >= 0 (pairs), got {self.shrink}")
        if int(self.n_clusters) < 1:
            raise EmbrmError(f"n_clusters must be >= 1, got {self.n_clusters}")

    def _new_head(self):
        params = dict(self.head_params or {})
        if self.head != "linear":
            params.setdefault("random_state", self.random_state)
        return HEADS[self.head](**params)

    def _fit_router(self, Z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Category of each training prompt (given or k-means), and the router classifier on top of it."""
        from sklearn.cluster import KMeans
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.kmeans_ = None
        if labels is None:
            k = int(min(self.n_clusters, len(Z)))
            self.kmeans_ = KMeans(n_clusters=k, n_init=10, random_state=self.random_state).fit(Z)
            labels = np.array([f"cluster{c}" for c in self.kmeans_.labels_])
        self.categories_, cat = np.unique(labels, return_inverse=True)
        self.router_ = None
        if len(self.categories_) > 1:
            self.router_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.router_C, max_iter=2000))
            self.router_.fit(Z, cat)
        return cat

    def _fit_experts(self, X: np.ndarray, pairs: np.ndarray, pair_cat: np.ndarray) -> None:
        C = len(self.categories_)
        self.pairs_per_category_ = np.bincount(pair_cat, minlength=C)
        self.global_ = self._new_head().fit(X, pairs)
        self.experts_ = [self._new_head().fit(X, pairs[pair_cat == c]) if m >= self.min_pairs else None
                         for c, m in enumerate(self.pairs_per_category_)]
        m = self.pairs_per_category_.astype(np.float64)
        w = m / (m + self.shrink) if self.shrink > 0 else np.ones(C)
        self.expert_weight_ = np.where(m >= self.min_pairs, w, 0.0)

    def fit(self, X, pairs, prompt_index, categories=None, prompt_X=None) -> "MoEReward":
        """Fit on pairs (m, 2) of row indices into X (column 0 preferred). prompt_index: (n,) prompt key per row;
        categories: optional (n,) category per row (constant within a prompt; None = k-means); prompt_X:
        optional (n, d_p) prompt embedding per row (default: the mean response embedding of the row's prompt)."""
        self._check_params()
        X = check_embeddings(X)
        pairs = check_pairs(pairs, len(X))
        keys, row_prompt, Z = _prompt_level(prompt_index, X, prompt_X)
        used = np.unique(row_prompt[pairs.ravel()])                  # prompts with training pairs
        labels = None if categories is None else _prompt_labels(keys, row_prompt, categories)[used]
        cat = np.full(len(keys), -1)
        cat[used] = self._fit_router(Z[used], labels)
        self.train_category_ = dict(zip(keys[used], self.categories_[cat[used]]))
        pair_cat = cat[row_prompt[pairs[:, 0]]]
        self.combiner_ = np.r_[np.ones(len(self.categories_)), 0.0]
        if self.combiner == "linear" and len(self.categories_) > 1:
            tr, va = split_pairs(len(pairs), self.val_fraction, seed=self.random_state,
                                 prompt_ids=row_prompt[pairs[:, 0]], where="the MoE's training prompts")
            self._fit_experts(X, pairs[tr], pair_cat[tr])
            F = self._features(X, row_prompt, Z)
            self.combiner_ = LinearBT(C=self.combiner_C).fit(F, pairs[va]).coef_.astype(np.float64)
        self._fit_experts(X, pairs, pair_cat)
        return self

    # ------------------------------------------------------------------------- scoring

    def _route_prompts(self, Z: np.ndarray) -> np.ndarray:
        if self.router_ is None:
            return np.ones((len(Z), 1))
        p = self.router_.predict_proba(Z)
        if self.routing == "hard":
            p = np.eye(p.shape[1])[p.argmax(axis=1)]
        return p

    def expert_scores(self, X) -> np.ndarray:
        """(n, C + 1) float64: each category's shrunk expert score e_c(x), then the global head's score."""
        X = check_embeddings(X)
        g = self.global_.predict(X).astype(np.float64)
        raw = np.stack([g if e is None else e.predict(X).astype(np.float64) for e in self.experts_], axis=1)
        w = self.expert_weight_
        return np.concatenate([w * raw + (1.0 - w) * g[:, None], g[:, None]], axis=1)

    def _features(self, X, row_prompt, Z) -> np.ndarray:
        pi = self._route_prompts(Z)[row_prompt]
        E = self.expert_scores(X)
        return np.concatenate([pi * E[:, :-1], E[:, -1:]], axis=1)

    def route(self, X, prompt_index, prompt_X=None) -> np.ndarray:
        """(n, C) router probabilities of each row's prompt (one-hot with routing="hard")."""
        self._check_fitted()
        _, row_prompt, Z = _prompt_level(prompt_index, X, prompt_X)
        return self._route_prompts(Z)[row_prompt]

    def predict_category(self, X, prompt_index, prompt_X=None) -> np.ndarray:
        """(n,) the router's most likely category name for each row's prompt."""
        return self.categories_[self.route(X, prompt_index, prompt_X).argmax(axis=1)]

    def predict(self, X, prompt_index, prompt_X=None) -> np.ndarray:
        """(n,) float32 rewards: the combiner over router-weighted expert scores."""
        self._check_fitted()
        _, row_prompt, Z = _prompt_level(prompt_index, X, prompt_X)
        return (self._features(X, row_prompt, Z) @ self.combiner_).astype(np.float32)

    def _check_fitted(self) -> None:
        if getattr(self, "combiner_", None) is None:
            raise EmbrmError("this MoEReward is not fitted yet: call fit(X, pairs, prompt_index) first")

    def summary(self) -> dict:
        """JSON-able description of the fitted model."""
        self._check_fitted()
        return {"categories": self.categories_.tolist(), "pairs_per_category": self.pairs_per_category_.tolist(),
                "expert_weight": self.expert_weight_.round(4).tolist(), "combiner": self.combiner_.round(4).tolist(),
                "routing": self.routing, "combiner_kind": self.combiner, "head": self.head,
                "category_source": "kmeans" if self.kmeans_ is not None else "labels"}

    def __repr__(self) -> str:
        return (f"MoEReward(head={self.head!r}, n_clusters={self.n_clusters}, shrink={self.shrink}, "
                f"routing={self.routing!r}, combiner={self.combiner!r})")


# ----------------------------------------------------------------------------- the study

def resolve_categories(responses: pl.DataFrame, categories: str | None) -> str | None:
    """The category column to use: "auto" -> `dataset` when present else k-means (None); "kmeans" -> None."""
    if categories in (None, "kmeans"):
        return None
    if categories == "auto":
        return "dataset" if "dataset" in responses.columns else None
    if categories not in responses.columns:
        raise EmbrmError(f"no column {categories!r} in the pool (columns: {', '.join(responses.columns)}): pass "
                         f"--categories COLUMN with one of them, or kmeans")
    return categories


@dataclass(frozen=True)
class RewardScore:
    """One reward on the held-out prompts: pairwise accuracy against the gold order, per-prompt Spearman, the
    Best-of-n gold and normalised gain at the largest n (the evaluation's curves), and the share of excluded picks
    at n = N when the pools keep excluded responses."""

    name: str
    accuracy: float
    spearman: float
    bon_gold: float
    bon_gain: float
    excluded_pick_rate: float | None = None


@dataclass(frozen=True)
class ExpertModel:
    """The fitted MoEReward, described (MoEReward.summary())."""

    categories: tuple[str, ...]
    pairs_per_category: tuple[int, ...]
    expert_weight: tuple[float, ...]
    combiner: tuple[float, ...]
    routing: str
    combiner_kind: str
    head: str
    category_source: str


@dataclass(frozen=True)
class MoESummary(MethodSummary):
    """The MoE study: the rewards on held-out prompts (moe, single, length), the Best-of-n references, the router and
    the experts; per_category: one row per category (held-out accuracies)."""

    dataset: str
    categories: str  # the category column, or "kmeans"
    seed: int
    n_pairs: int
    beta: float
    test_size: float
    n_train_prompts: int
    n_test_prompts: int
    rewards: tuple[RewardScore, ...]
    random: float
    oracle: float
    n_eval_pairs: int
    bon_n: int
    router_accuracy: float | None
    model: ExpertModel
    per_category: pl.DataFrame = field(compare=False, repr=False)
    with_excluded: bool = False

    def excluded_picks(self) -> list[tuple[str, float]]:
        return [(r.name, r.excluded_pick_rate) for r in self.rewards if r.excluded_pick_rate is not None]

    def to_dict(self) -> dict:
        d = {"method": "moe", "dataset": self.dataset, "categories": self.categories, "seed": self.seed,
             "n_pairs": self.n_pairs, "beta": self.beta, "test_size": self.test_size,
             "n_train_prompts": self.n_train_prompts, "n_test_prompts": self.n_test_prompts,
             "held_out": {r.name: {"accuracy": r.accuracy, "spearman": r.spearman, "bon_gold": r.bon_gold,
                                   "bon_gain": r.bon_gain} for r in self.rewards},
             "references": {"random": self.random, "oracle": self.oracle, "n_pairs": self.n_eval_pairs,
                            "bon_n": self.bon_n},
             "router_accuracy": self.router_accuracy, "model": asdict(self.model),
             "per_category": self.per_category.to_dicts()}
        if self.excluded_picks():
            d["excluded_pick_rate"] = dict(self.excluded_picks())
        return d | {"with_excluded": self.with_excluded}

    def markdown(self) -> str:
        rows = [[r.name, r.accuracy, r.spearman, r.bon_gold, r.bon_gain] for r in self.rewards]
        rows.append(["random / oracle", None, None, f"{self.random:.4f} / {self.oracle:.4f}", None])
        m = self.model
        router = ("" if self.router_accuracy is None
                  else f"Router accuracy on held-out prompts: {self.router_accuracy:.3f}. ")
        return (f"MoE ({self.categories}, {len(m.categories)} categories) on {self.dataset}: {self.n_test_prompts} "
                f"held-out prompts, {self.n_pairs} training pairs (BT beta {self.beta:g}).\n\n"
                + table(["reward", "pairwise acc", "spearman", f"BoN-{self.bon_n} gold", "BoN gain"], rows, 4)
                + "\n\nPer category (held out):\n\n"
                + table(self.per_category.columns, [list(r) for r in self.per_category.iter_rows()], 4)
                + f"\n\n{router}Expert weights: {rates(zip(m.categories, m.expert_weight))}; {m.routing} routing, "
                  f"{m.combiner_kind} combiner.")


def _eval_scores(ds, test_ids, proxies: dict, seed: int) -> tuple[tuple[RewardScore, ...], dict]:
    """Held-out metrics per proxy: pairwise accuracy vs gold order, per-prompt Spearman, the gold and gain at the
    largest n of the evaluation's Best-of-n curves (pool_curves) and, when the pools keep excluded responses, the
    share of excluded picks at n = N (top_picks); plus the Best-of-n random/oracle references."""
    responses = ds.responses
    pairs = gold_order_pairs(responses, test_ids, seed=seed)
    if len(pairs) == 0:
        raise EmbrmError("no held-out pairs with different gold on the test prompts: use a larger --test-size")
    held = responses["scored"].to_numpy() & rows_of(responses, test_ids)
    rows = np.flatnonzero(held)
    pid, gold = responses["prompt_id"].to_numpy(), responses["gold"].to_numpy().astype(np.float64)
    cur = pool_curves(responses, proxies, held)
    shares = top_picks(pid, proxies, gold, held, ds.excluded)["excluded"] if ds.excluded.any() else {}
    out = tuple(RewardScore(k, float(pairwise_accuracy(v, pairs)),
                            float(per_prompt_spearman(v[rows], gold[rows], pid[rows])), float(cur.gold[j, -1]),
                            float(cur.gain[j, -1]), float(np.mean(shares[k])) if k in shares else None)
                for j, (k, v) in enumerate(proxies.items()))
    return out, {"random": float(cur.random[-1]), "oracle": float(cur.oracle[-1]), "n_eval_pairs": int(len(pairs)),
                 "bon_n": int(cur.n[-1])}


def _per_category(responses, test_ids, category: np.ndarray, proxies: dict, moe, seed: int) -> pl.DataFrame:
    """One row per category (per row labels ``category``): held-out accuracy of every proxy on the category's
    test prompts, and the training pairs its expert saw."""
    pairs = gold_order_pairs(responses, test_ids, seed=seed)
    pair_cat = category[pairs[:, 0]]
    test = responses["prompt_id"].is_in(list(test_ids)).to_numpy()
    train_pairs = dict(zip(moe.categories_.tolist(), moe.pairs_per_category_.tolist()))
    rows = []
    for c in np.unique(category[test]):
        sel = pairs[pair_cat == c]
        row = {"category": str(c), "n_test_prompts": int(responses.filter(pl.Series(test & (category == c)))
                                                          ["prompt_id"].n_unique()),
               "n_test_pairs": int(len(sel)), "n_train_pairs": int(train_pairs.get(c, 0))}
        row.update({f"acc_{k}": pairwise_accuracy(v, sel) if len(sel) else None for k, v in proxies.items()})
        rows.append(row)
    return pl.DataFrame(rows)


def _router_accuracy(pidx: np.ndarray, routed: np.ndarray, labels: np.ndarray, test_ids) -> float:
    """Share of held-out PROMPTS the router puts in their given category (routing and labels are per prompt)."""
    pools = group_pools(pidx, np.isin(pidx, np.asarray(test_ids).astype(str)))
    return float(np.mean((routed == labels)[pools.rows[:, 0]]))


def moe_study(ds, X, *, categories: str | None = "auto", n_clusters: int = 5, seed: int = 0, n_pairs: int = 10_000,
              beta: float = 10.0, test_size: float = 0.2, **moe_params) -> tuple[MoESummary, pl.DataFrame]:
    """Fit MoEReward and one global head of the same type on simulated pairs (BT annotator, beta) over the training
    prompts; compare them (and the length baseline when the pool has texts) on held-out prompts.

    ds: a Dataset (split and labels from embrm.pipeline, Best-of-n from embrm.evaluation). categories: a column
    name, "auto" (`dataset` when present) or "kmeans". Returns (MoESummary, per-category frame; categories are the
    given labels, or the router's k-means clusters)."""
    X = check_embeddings(X)
    check_aligned(ds, X)
    responses = ds.responses
    col = resolve_categories(responses, categories)
    labels = LabelConfig("simulated", beta, None, n_pairs)
    parts = split(ds, labels, test_size, seed)
    train_ids, test_ids = parts.train, parts.test
    pairs = pair_indices(training_pairs(ds, labels, train_ids, seed), responses)
    pidx = responses["prompt_id"].cast(pl.Utf8).to_numpy()
    labels = None if col is None else responses[col].cast(pl.Utf8).fill_null("none").to_numpy()
    moe = MoEReward(n_clusters, random_state=seed, **moe_params).fit(X, pairs, pidx, categories=labels)
    proxies = {"moe": moe.predict(X, pidx), "single": moe.global_.predict(X)}
    if "response" in responses.columns:
        proxies["length"] = length_reward(responses)
    rewards, refs = _eval_scores(ds, test_ids, proxies, seed)
    routed = moe.predict_category(X, pidx)
    frame = _per_category(responses, test_ids, routed if labels is None else labels, proxies, moe, seed)
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in moe.summary().items()}
    summary = MoESummary(
        ds.name, col or "kmeans", seed, int(len(pairs)), beta, test_size, int(len(train_ids)), int(len(test_ids)),
        rewards, **refs,
        router_accuracy=None if labels is None else _router_accuracy(pidx, routed, labels, test_ids),
        model=ExpertModel(**model), per_category=frame)
    return summary, frame
