"""Fit a reward-model ensemble on a dataset's embeddings, evaluate it on held-out prompts, save it (`embrm fit`).

The split is by prompt (no prompt in both train and test) and is saved with the model, so `bon-sim` and `score`
evaluate only on prompts the model never saw. Accuracy on pools is measured against the GOLD ORDER of held-out
pairs, so label noise in training does not hide what the model learned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from embrm.data import Dataset
from embrm.errors import EmbrmError

MAX_EVAL_PAIRS = 200_000


@dataclass
class LabelConfig:
    """Where training preferences come from. source: human (the dataset's pairs) | simulated (from gold) | auto."""

    source: str = "auto"
    beta: float | None = 10.0  # BT annotator: P(a>b) = sigmoid(beta (g_a - g_b) / std(gold)); beta=10 -> <5 % errors
    flip: float | None = None  # Coste et al.: the better response, flipped with this probability
    n_pairs: int = 10_000
    within_prompt: bool = True

    def resolved(self, ds: Dataset) -> "LabelConfig":
        source = self.source
        if source == "auto":
            source = "human" if ds.pairs is not None else "simulated"
        if source not in ("human", "simulated"):
            raise EmbrmError(f"--labels must be human, simulated or auto (got {self.source!r})")
        if source == "human" and ds.pairs is None:
            raise EmbrmError(f"{ds.source}: --labels human needs a pairwise dataset (chosen/rejected columns)")
        if source == "simulated" and not ds.has_gold:
            raise EmbrmError(f"{ds.source}: all gold scores are null: simulated labels need a gold column "
                             f"(--gold-col), or use --labels human on a pairwise file")
        beta = None if self.flip is not None else self.beta
        return LabelConfig(source, beta, self.flip, self.n_pairs, self.within_prompt)


@dataclass
class FitResult:
    ensemble: object
    labels: LabelConfig
    train_prompts: np.ndarray
    test_prompts: np.ndarray
    train_pairs: pl.DataFrame
    dim: int
    seed: int = 0
    test_size: float = 0.2
    metrics: dict = field(default_factory=dict)

    def manifest(self, dataset: Dataset, embed_spec: dict | None, fingerprint: str | None) -> dict:
        return {
            "dataset": dataset.name, "dataset_source": dataset.source,
            "embedder": {"fingerprint": fingerprint, "spec": embed_spec}, "dim": self.dim,
            "labels": asdict(self.labels), "seed": self.seed, "test_size": self.test_size,
            "n_train_pairs": len(self.train_pairs),
            "split": {"train_prompts": self.train_prompts.tolist(), "test_prompts": self.test_prompts.tolist()},
            "metrics": self.metrics,
        }


def training_pairs(ds: Dataset, labels: LabelConfig, train_prompts: np.ndarray, seed: int) -> pl.DataFrame:
    from embrm.labels import simulate_pairs

    if labels.source == "human":
        return ds.pairs.filter(pl.col("prompt_id").is_in(train_prompts.tolist()))
    return simulate_pairs(ds.responses, labels.n_pairs, beta=labels.beta, flip=labels.flip,
                          within_prompt=labels.within_prompt, seed=seed, prompt_ids=train_prompts)


def gold_order_pairs(responses: pl.DataFrame, prompt_ids, max_pairs: int = MAX_EVAL_PAIRS, seed: int = 0) -> np.ndarray:
    """All within-prompt pairs of scored responses with different gold, better first, as row indices (m, 2)."""
    rows = (responses.with_row_index("row").filter(pl.col("scored") & pl.col("prompt_id").is_in(list(prompt_ids)))
            .select("row", "prompt_id", "gold"))
    pairs = (rows.join(rows, on="prompt_id", suffix="_b").filter(pl.col("gold") > pl.col("gold_b"))
             .select("row", "row_b").to_numpy().astype(np.int64))
    if len(pairs) > max_pairs:
        pairs = pairs[np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)]
    return pairs


def held_out_pairs(ds: Dataset, test_prompts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """Held-out pairs: gold order on pools, the human labels on pairwise data."""
    from embrm.labels import pair_indices

    if ds.has_gold:
        return gold_order_pairs(ds.responses, test_prompts, seed=seed), "gold order"
    held = ds.pairs.filter(pl.col("prompt_id").is_in(test_prompts.tolist()))
    return pair_indices(held, ds.responses), "human labels"


def evaluate(ds: Dataset, scores: np.ndarray, test_prompts: np.ndarray, seed: int = 0) -> dict:
    """Held-out metrics per member, for the ensemble mean, and for the length / random baselines."""
    from embrm import metrics as M

    pairs, against = held_out_pairs(ds, test_prompts, seed)
    if len(pairs) == 0:
        raise EmbrmError(f"{ds.source}: no held-out pairs on the test prompts: use a larger --test-size")
    scores = np.asarray(scores, np.float32).reshape(len(ds.responses), -1)
    mean = scores.mean(axis=1)
    length = M.length_reward(ds.responses)
    rand = np.random.default_rng(seed).standard_normal(len(mean)).astype(np.float32)
    out = {"against": against, "n_test_pairs": int(len(pairs)), "n_test_prompts": int(len(test_prompts)),
           "member_accuracy": [float(M.pairwise_accuracy(scores[:, k], pairs)) for k in range(scores.shape[1])],
           "accuracy": float(M.pairwise_accuracy(mean, pairs)),
           "log_loss": float(M.bt_log_loss(mean, pairs)),
           "ece": float(M.expected_calibration_error(mean, pairs)),
           "baseline_length_accuracy": float(M.pairwise_accuracy(length, pairs)),
           "baseline_random_accuracy": float(M.pairwise_accuracy(rand, pairs))}
    if ds.has_gold:
        test = ds.responses.with_row_index("row").filter(pl.col("scored") & pl.col("prompt_id").is_in(test_prompts.tolist()))
        rows = test["row"].to_numpy()
        index = test["prompt_id"].rank("dense").to_numpy().astype(np.int64) - 1
        gold = test["gold"].to_numpy()
        out["spearman"] = float(M.per_prompt_spearman(mean[rows], gold, index))
        out["baseline_length_spearman"] = float(M.per_prompt_spearman(length[rows], gold, index))
    return out


def fit(ds: Dataset, X: np.ndarray, *, head: str = "linear", k: int = 10, mode: str = "independent",
        labels: LabelConfig | None = None, test_size: float = 0.2, seed: int = 0, **head_params) -> FitResult:
    """Split prompts, build labels on the training prompts, fit K members, evaluate on held-out prompts."""
    from embrm.ensemble import fit_ensemble
    from embrm.labels import pair_indices, split_prompts

    if X.shape[0] != len(ds.responses):
        raise EmbrmError(f"{X.shape[0]} embeddings for {len(ds.responses)} responses: re-run `embrm embed`")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise EmbrmError(f"embeddings contain NaN/inf in {len(bad)} rows (first: response "
                         f"{ds.responses['response_id'][int(bad[0])]}): re-embed with --dtype float32")
    labels = (labels or LabelConfig()).resolved(ds)
    prompts = ds.responses.filter(pl.col("scored"))["prompt_id"] if labels.source == "simulated" else ds.pairs["prompt_id"]
    train_prompts, test_prompts = split_prompts(prompts.unique().sort().to_numpy(), test_size=test_size, seed=seed)
    pairs_df = training_pairs(ds, labels, train_prompts, seed)
    pairs = pair_indices(pairs_df, ds.responses)
    ensemble = fit_ensemble(X, pairs, head=head, k=k, mode=mode, pair_prompt_ids=pairs_df["prompt_id"].to_numpy(),
                            seed=seed, **head_params)
    result = FitResult(ensemble, labels, train_prompts, test_prompts, pairs_df, X.shape[1], seed, test_size)
    result.metrics = evaluate(ds, ensemble.predict(X), test_prompts, seed)
    return result


def load_model(model_dir, data: Dataset, cache_dir="cache"):
    """A saved ensemble, its manifest, and the dataset's embeddings from the SAME embedder (checked)."""
    from embrm.embed import cached_embeddings
    from embrm.persist import load_ensemble

    ensemble, manifest = load_ensemble(model_dir)
    spec = (manifest.get("embedder") or {}).get("spec")
    if not spec:
        raise EmbrmError(f"{model_dir}/manifest.json: no embedder spec: re-fit the model with `embrm fit`")
    X = cached_embeddings(data, spec, cache_dir)
    dim = manifest.get("dim")
    if dim is not None and X.shape[1] != dim:
        raise EmbrmError(f"{model_dir}: trained on {dim}-d embeddings but the cache holds {X.shape[1]}-d: "
                         f"use the embedder the model was fitted with")
    return ensemble, manifest, X


def score_dataset(model_dir, data: Dataset, cache_dir="cache") -> pl.DataFrame:
    """response_id, prompt_id and one column per member (member_0..member_{K-1})."""
    ensemble, _, X = load_model(model_dir, data, cache_dir)
    scores = ensemble.predict(X)
    cols = {f"member_{k}": scores[:, k] for k in range(scores.shape[1])}
    return data.responses.select("response_id", "prompt_id").with_columns(**cols)
