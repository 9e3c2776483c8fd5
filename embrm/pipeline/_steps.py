"""The one path from a dataset to a result: split → labels → fit → score → aggregate → Best-of-n → metrics.

    import embrm
    ds = embrm.load_dataset("alpaca-eval-models")                   # hacking probes marked `excluded`
    X = embrm.embed_dataset(ds).X
    result = embrm.run_experiment(ds, X, embrm.Protocol(embrm.Learner("mlp")))
    result.evaluation.bon["pool"].table()

`embrm fit` is `fit` + save, `embrm bon-sim` is load + `evaluate`, a study job is `run_experiment`, and the methods
take their split and labels from `split` and `training_pairs`: the same settings give the same numbers from
every entry point. The split is by prompt (no prompt in both train and test) and is saved with the model.
Excluded responses (a dataset's exclusion rule, e.g. reward-hacking probes) never label, never train and are not
in the evaluated pool; Protocol.with_excluded adds a second pool that keeps them and reports their pick rate.

Length control (Learner.length_control): "posthoc" fits each member's length slope on the training prompts'
responses and removes it; "odin" trains quality + length heads; "rrm" adds other prompts' answers as losers and
ties, which are new (prompt, response) texts: their embeddings are passed as `augment`
(`embed_dataset(rrm_dataset(ds)).X`; `embrm run` and `embrm fit` embed them). Pools are evaluated on their gold and
on a length-controlled gold, side by side (pool-lc; Protocol.length_control_gold: AlpacaEval 2's length-controlled
GLM, embrm.rewards.alpacaeval_controlled_gold, by default, or the log-linear embrm.rewards.controlled_gold).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Rows, Stages, current_threads, map_rows, on_fit_threads
from embrm.data import (
    Dataset,
    label_given_pairs,
    pair_indices,
    rrm_dataset,
    rrm_pairs,
    simulate_pairs,
    split_prompts,
)
from embrm.embedding import cached_embeddings
from embrm.evaluation import (
    ConformalResult,
    Evaluation,
    FitMetrics,
    LengthEffect,
    best_of_n,
    conformal_proxy,
    ensemble_proxies,
    length_proxy,
    pairwise_metrics,
    published_picks,
    rows_of,
    sun_metrics,
)
from embrm.pipeline._protocol import CALIBRATED, LabelConfig, Learner, Protocol
from embrm.rewards import (
    LengthCorrection,
    RewardEnsemble,
    alpacaeval_controlled_gold,
    baseline_of,
    controlled_gold,
    fit_ensemble,
    length_feature,
    load_ensemble,
    save_ensemble,
)


@dataclass(frozen=True)
class Split:
    """Prompt ids used for training and held out for evaluation."""

    train: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict:
        return {"train_prompts": self.train.tolist(), "test_prompts": self.test.tolist()}


def split(ds: Dataset, labels: LabelConfig, test_size: float, seed: int) -> Split:
    """Split the prompts that can label (usable scored responses, or the human pairs' prompts) by seed; data that
    comes split (an array dataset's train and test files) keeps its own split (test_size and seed unused)."""
    labels = labels.resolved(ds)
    if ds.predefined_split:
        usable = ds.responses.filter(pl.Series(ds.usable))
        part = [usable.filter(pl.col("split") == s)["prompt_id"].unique().sort().to_numpy() for s in ("train", "test")]
        return Split(*part)
    if labels.source == "human":
        prompts = ds.pairs["prompt_id"]
    else:
        prompts = ds.responses.filter(pl.Series(ds.usable))["prompt_id"]
    train, test = split_prompts(prompts.unique().sort().to_numpy(), test_size=test_size, seed=seed)
    return Split(train, test)


def training_pairs(ds: Dataset, labels: LabelConfig, prompts: np.ndarray, seed: int) -> pl.DataFrame:
    """Labelled pairs on the given (training) prompts: the human pairs, or a simulated annotator's draws."""
    labels = labels.resolved(ds)
    if labels.source == "human":
        return ds.pairs.filter(pl.col("prompt_id").is_in(prompts.tolist()))
    return simulate_pairs(ds.responses, labels.n_pairs, beta=labels.beta, flip=labels.flip,
                          within_prompt=labels.within_prompt, seed=seed, prompt_ids=prompts, name=ds.name,
                          pairs_per_prompt=labels.pairs_per_prompt)


def label_pairs(pairs: np.ndarray, gold: np.ndarray, u: np.ndarray, labels: LabelConfig,
                scale: float = 1.0) -> np.ndarray:
    """The simulated annotator of `labels` on GIVEN pairs of rows (m, 2), oriented preferred first, from one uniform
    draw u (m,) per pair (embrm.data.label_given_pairs; scale: the gold's std): the annotators of `training_pairs`
    with a single draw per pair, so that a pair's label never depends on who asks."""
    return label_given_pairs(pairs, gold, u, beta=labels.beta, flip=labels.flip, scale=scale)


@on_fit_threads
def fit_pairs(ds: Dataset, X: np.ndarray, pairs: pl.DataFrame, learner: Learner = Learner(), k: int = 5,
              seed: int = 0) -> RewardEnsemble:
    """The fit step of `fit` on a labelled pairs table of ds that the caller drew (e.g. `training_pairs` with a
    method's own LabelConfig): K members of the learner (its head parameters), split and bootstrapped by prompt,
    seeded as `fit` seeds them. Length control needs `fit` (it reads the whole dataset)."""
    if learner.length_control != "none":
        raise EmbrmError(f"fit_pairs fits a learner without length control, got length_control "
                         f"{learner.length_control!r}: use pipeline.fit")
    return fit_ensemble(X, pair_indices(pairs, ds.responses), head=learner.head, k=k, mode=learner.mode,
                        pair_prompt_ids=pairs["prompt_id"].to_numpy(), seed=seed, **learner.head_params())


def check_aligned(ds: Dataset, X: np.ndarray) -> None:
    """X has one finite row per response of ds."""
    if X.shape[0] != len(ds.responses):
        raise EmbrmError(f"{X.shape[0]} embeddings for {len(ds.responses)} responses of {ds.name}: re-run "
                         f"`embrm embed` on the same dataset")
    if isinstance(X, Rows) and X.checked:  # an array dataset's files were checked when opened
        return
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise EmbrmError(f"embeddings contain NaN/inf in {len(bad)} rows (first: response "
                         f"{ds.responses['response_id'][int(bad[0])]}): re-embed with --dtype float32")


@dataclass
class FittedModel:
    """A fitted ensemble with the protocol and split it came from, and its held-out pairwise metrics."""

    ensemble: RewardEnsemble
    protocol: Protocol
    split: Split
    metrics: FitMetrics
    n_train_pairs: int
    label_accuracy: float | None  # share of simulated labels that agree with gold (None for human labels)
    dim: int
    scores: np.ndarray = field(repr=False)  # (n, K) member scores on the dataset it was fitted on (not saved)

    def manifest(self, ds: Dataset, embed_spec: dict | None = None, fingerprint: str | None = None) -> dict:
        spec = ds.spec
        return {"dataset": ds.name, "dataset_source": ds.source,
                "dataset_spec": None if spec is None else asdict(spec),
                "embedder": {"fingerprint": fingerprint, "spec": embed_spec}, "dim": self.dim,
                "protocol": self.protocol.to_dict(), "split": self.split.to_dict(),
                "n_train_pairs": self.n_train_pairs, "label_accuracy": self.label_accuracy,
                "metrics": self.metrics.to_dict()}

    def save(self, model_dir, ds: Dataset, embed_spec: dict | None = None, fingerprint: str | None = None, *,
             overwrite: bool = False, **extra) -> Path:
        return save_ensemble(model_dir, self.ensemble, {**self.manifest(ds, embed_spec, fingerprint), **extra},
                             overwrite=overwrite)


@on_fit_threads
def fit(ds: Dataset, X: np.ndarray, protocol: Protocol = Protocol(), *, augment: np.ndarray | None = None,
        threads: int | None = None, progress: bool | None = None) -> FittedModel:
    """Split prompts, label the training prompts, fit K members (with the learner's length control), measure
    held-out pairwise metrics. `augment`: embeddings of rrm_dataset(ds), needed by length_control "rrm" only."""
    check_aligned(ds, X)
    _check_control(ds, protocol.learner)
    with Stages(f"fit {protocol.learner.name} x{protocol.k} on {ds.name}", 3, progress) as stages:
        return _corrected(ds, X, protocol, _members(ds, X, protocol.member_fit, augment, stages), stages)


def _check_control(ds: Dataset, learner: Learner) -> None:
    if learner.length_control != "none" and not ds.texts:
        raise EmbrmError(f"{ds.source}: length_control {learner.length_control} needs the responses' texts, and "
                         f"{ds.name} is arrays without texts: use length_control none")


@dataclass
class _Members:
    """A fit before any post-hoc length correction: what the protocols of one Protocol.member_fit share."""

    labels: LabelConfig
    split: Split
    n_train_pairs: int
    label_accuracy: float | None
    ensemble: RewardEnsemble
    scores: np.ndarray  # (n, K) raw member scores on ds


def _members(ds: Dataset, X: np.ndarray, protocol: Protocol, augment, stages: Stages) -> _Members:
    """Split, label and fit K members of the protocol's learner (its length control "odin" or "rrm" included)."""
    labels = protocol.labels.resolved(ds)
    learner = protocol.learner
    parts = split(ds, labels, protocol.test_size, protocol.seed)
    pairs_df = training_pairs(ds, labels, parts.train, protocol.seed)
    stages.done("labels")
    params = learner.head_params()
    if learner.head == "lgbm":  # the thread policy's count (embrm.core.fit_threads), as torch and BLAS
        params.setdefault("n_jobs", current_threads())
    pairs, pair_prompts = pair_indices(pairs_df, ds.responses), pairs_df["prompt_id"].to_numpy()
    X_fit = X
    if learner.length_control == "rrm":
        X_fit, pairs, pair_prompts = _with_rrm(ds, X, augment, pairs, pair_prompts, parts.train)
    if learner.length_control == "odin":
        params.update(odin=learner.odin_params(), length=length_feature(ds.responses))
    ensemble = fit_ensemble(X_fit, pairs, head=learner.head, k=protocol.k, mode=learner.mode,
                            pair_prompt_ids=pair_prompts, seed=protocol.seed, **params)
    if learner.length_control == "rrm":
        ensemble.info["rrm_pairs"] = len(pairs) - len(pairs_df)
    agree = float(pairs_df["label_correct"].mean()) if "label_correct" in pairs_df.columns else None
    return _Members(labels, parts, len(pairs_df), agree, ensemble, ensemble.predict(X, progress=stages))


def _corrected(ds: Dataset, X: np.ndarray, protocol: Protocol, members: _Members, stages: Stages) -> FittedModel:
    """The protocol's model from its members: a post-hoc length control corrects a copy of the ensemble (the
    members stay uncorrected for the other protocols that share them), then held-out pairwise metrics."""
    ensemble, scores, control = members.ensemble, members.scores, protocol.learner.length_control
    if control.startswith("posthoc"):
        length = length_feature(ds.responses)
        ensemble = copy.copy(ensemble)
        ensemble.length_correction = _posthoc(ds, X, scores, ensemble, members.split, length, control)
        scores = ensemble.corrected(scores, length)
    stages.done("members")
    metrics = pairwise_metrics(ds, scores, members.split.test, protocol.seed)
    stages.done("held-out metrics")
    return FittedModel(ensemble, replace(protocol, labels=members.labels), members.split, metrics,
                       members.n_train_pairs, members.label_accuracy, X.shape[1], scores)


def _with_rrm(ds: Dataset, X: np.ndarray, augment, pairs: np.ndarray, pair_prompts: np.ndarray, train: np.ndarray):
    """Embeddings and pairs with RRM's augmentation: rows of rrm_dataset(ds) appended after ds's rows."""
    aug = rrm_dataset(ds)
    if augment is None:
        raise EmbrmError(f"length_control rrm trains on other prompts' answers under each prompt: pass augment="
                         f"embed_dataset(rrm_dataset(ds)).X ({len(aug.responses)} texts)")
    augment = np.asarray(augment, np.float32)
    if augment.shape != (len(aug.responses), X.shape[1]):
        raise EmbrmError(f"augment has shape {augment.shape}; rrm_dataset({ds.name}) needs "
                         f"({len(aug.responses)}, {X.shape[1]}): embed it with the same embedder")
    extra, extra_prompts = rrm_pairs(pairs, pair_prompts, aug.responses, train, len(X))
    return (np.concatenate([X, augment]), np.concatenate([pairs, extra]),
            np.concatenate([pair_prompts.astype(str), extra_prompts.astype(str)]))


def _posthoc(ds: Dataset, X: np.ndarray, raw: np.ndarray, ensemble: RewardEnsemble, parts: Split,
             length: np.ndarray, control: str):
    """Each member's (and WARM's) length slope on its raw scores, fitted on the training prompts' responses only."""
    if ensemble.warm_ is not None:
        raw = np.column_stack([raw, ensemble.predict_warm(X)])
    rows = rows_of(ds.responses, parts.train) & ~ds.excluded
    scope = "global" if control == "posthoc_global" else "prompt"
    return LengthCorrection.fit(raw, length, ds.responses["prompt_id"].to_numpy(), rows, scope=scope)


def proxies(ds: Dataset, X: np.ndarray, ensemble: RewardEnsemble, scores: np.ndarray, split_: Split,
            protocol: Protocol, evaluated: np.ndarray) -> tuple[dict, dict | None]:
    """Every reward evaluated: the aggregations of the member scores (standardised on the training prompts' usable
    responses; "conformal" calibrated on the evaluated prompts' gold, cross-fitted), WARM's weight-averaged model
    when there is one, and the length rulers (longest and shortest); with the conformal bound's calibration (or
    why it could not be calibrated)."""
    reference = rows_of(ds.responses, split_.train) & ~ds.excluded
    plain = [a for a in protocol.aggregations if a not in CALIBRATED]
    out = ensemble_proxies(scores, reference, plain, **protocol.aggregation_params()) if plain else {}
    conformal = None
    if "conformal" in protocol.aggregations:
        try:
            conformal = conformal_proxy(ds, scores, reference, evaluated, coverage=protocol.coverage,
                                        seed=protocol.seed).to_dict(bound=True)
        except EmbrmError as e:  # e.g. too few held-out prompts to calibrate: the other proxies still stand
            conformal = {"error": str(e)}
        out = {name: conformal["bound"] if name == "conformal" else out[name] for name in protocol.aggregations
               if name in out or "bound" in conformal}
    if ensemble.warm_ is not None:
        out["warm"] = ensemble.predict_warm(X, _lengths(ds))
    if ds.texts:  # the length rulers: arrays without texts have no lengths
        out["length"] = length_proxy(ds.responses)
        out["shortest"] = -out["length"]
    return out, conformal


def _lengths(ds: Dataset) -> np.ndarray | None:
    """The length feature a length-corrected ensemble needs (None for arrays without texts: none is fitted)."""
    return length_feature(ds.responses) if ds.texts else None


@on_fit_threads
def evaluate(ds: Dataset, X: np.ndarray, ensemble: RewardEnsemble, split_: Split, protocol: Protocol, *,
             prompts: str = "test", metrics: FitMetrics | None = None, scores: np.ndarray | None = None,
             lc: tuple[LengthEffect, np.ndarray] | str | None = None, progress: bool | None = False) -> Evaluation:
    """Held-out evaluation of a fitted ensemble: pairwise metrics and, on pools with gold, Best-of-n curves of every
    proxy (excluded responses left out; kept in a second pool with Protocol.with_excluded), and the dataset's
    published reward models' picks when it carries them. `metrics`, `scores` (the members' predictions on X) and
    `lc` (the pool's pool_lc(ds, protocol.length_control_gold)) are reused when the caller already has them."""
    check_aligned(ds, X)
    if prompts not in ("test", "all"):
        raise EmbrmError(f"--prompts must be test or all, got {prompts!r}")
    evaluated = np.ones(len(ds.responses), bool) if prompts == "all" else rows_of(ds.responses, split_.test)
    if not evaluated.any():
        raise EmbrmError(f"none of the model's held-out prompts are in {ds.name}: pass --prompts all to evaluate on "
                         f"every prompt")
    scores = ensemble.predict(X, _lengths(ds), progress=progress) if scores is None else scores
    if metrics is None:
        test = split_.test if prompts == "test" else ds.responses["prompt_id"].unique().sort().to_numpy()
        metrics = pairwise_metrics(ds, scores, test, protocol.seed)
    result = Evaluation(metrics)
    if not ds.has_gold:
        return result
    scored, conformal = proxies(ds, X, ensemble, scores, split_, protocol, evaluated)
    if conformal is not None:
        result.conformal_error = conformal.get("error")
        result.conformal = None if result.conformal_error else ConformalResult.from_dict(conformal)
    grid = {"n_max": protocol.n_max, "n_grid": protocol.n_grid}
    grid = {**grid, "texts": ds.texts}
    result.bon["pool"] = best_of_n(ds.responses, scored, evaluated & ~ds.excluded, mean_curve=True, **grid)
    lc = pool_lc(ds, protocol.length_control_gold) if lc is None else lc
    if isinstance(lc, str):
        result.length_error = lc
    else:
        result.length_effect, lc_gold = lc
        result.bon["pool-lc"] = best_of_n(ds.responses, scored, evaluated & ~ds.excluded, pool="pool-lc",
                                          gold=lc_gold, **grid)
    if protocol.sun_metrics:  # Sun et al.'s raw ensemble mean, min and first member, on one random draw
        raw = {"mean": scores.mean(axis=1), "min": scores.min(axis=1), "first": scores[:, 0]}
        result.sun = sun_metrics(ds.responses["prompt_id"].to_numpy(), ds.responses["gold"].to_numpy(), raw,
                                 evaluated & ds.usable, seed=protocol.seed)
    if protocol.with_excluded and ds.excluded.any():
        result.bon[f"pool+{ds.exclusion}"] = best_of_n(ds.responses, scored, evaluated, pool=f"pool+{ds.exclusion}",
                                                      excluded=ds.excluded, **grid)
    if "published_picks" in ds.attachments:
        result.published = published_picks(ds.responses, evaluated & ~ds.excluded, ds.attachments["published_picks"])
    return result


def pool_lc(ds: Dataset, which: str = "alpacaeval") -> tuple[LengthEffect, np.ndarray] | str:
    """The pool's length-controlled gold and its LengthEffect (length_controlled), or why it has none: the same for
    every model evaluated on the pool."""
    if not ds.texts:
        return f"{ds.name} is arrays without texts: no lengths to control for"
    try:
        return length_controlled(ds, which)
    except EmbrmError as e:  # e.g. answers of one length within every prompt: no length term to remove
        return str(e)


def length_controlled(ds: Dataset, which: str = "alpacaeval") -> tuple[LengthEffect, np.ndarray]:
    """The pool's length-controlled gold (Protocol.length_control_gold: "alpacaeval" or "loglinear"), fitted on its
    usable rows, and the LengthEffect that describes it: both golds are fitted, and with named answer sources it
    says how raw, log-linear and AlpacaEval-style gold rank them. The chosen gold's failure is the EmbrmError."""
    r, rows, source = ds.responses, ds.usable, ds.answer_source
    golds, errors = {}, {}
    g = r["gold"].cast(pl.Float64).to_numpy()[rows]
    fallback = which == "alpacaeval" and not ((g[np.isfinite(g)] >= 0) & (g[np.isfinite(g)] <= 1)).all()
    if fallback:  # AlpacaEval's GLM models a win probability: a gold on another scale gets the log-linear one
        which = "loglinear"
    try:
        loglinear = controlled_gold(r, rows, source=source)
        golds["loglinear"] = loglinear.gold
    except EmbrmError as e:
        loglinear, errors["loglinear"] = None, str(e)
    try:
        glm = alpacaeval_controlled_gold(r, rows, source=source, baseline=baseline_of(ds))
        golds["alpacaeval"] = glm.gold
    except EmbrmError as e:
        glm, errors["alpacaeval"] = None, str(e)
    if which not in golds:
        raise EmbrmError(errors[which])
    if which == "alpacaeval":
        n_rows, n_prompts, description = glm.n_rows, glm.n_prompts, glm.description
    else:
        n_rows, n_prompts = loglinear.n_rows, loglinear.n_prompts
        description = (f"log-linear: gold - {loglinear.effect:+.4f} x log(1 + characters), fitted with prompt"
                       f"{' and ' + source if source else ''} effects on {n_rows} responses")
        if fallback:
            description += " (the gold is not a probability in [0, 1]: AlpacaEval's GLM does not apply)"
    ll = loglinear.to_dict() if loglinear is not None else {"effect": None, "stderr": None, "r2_within": None}
    effect = LengthEffect(ll["effect"], ll["stderr"], n_rows, n_prompts, source, ll["r2_within"], gold=which,
                          description=description, phi_shared=glm.phi_shared if glm is not None else None,
                          baseline=glm.baseline if glm is not None else None,
                          ranking=_source_ranking(r, rows, source, golds) if len(golds) == 2 else None)
    return effect, golds[which]


def _source_ranking(responses: pl.DataFrame, rows: np.ndarray, source: str | None, golds: dict) -> dict | None:
    """How raw, log-linear and AlpacaEval-style gold rank the answer sources (their means over the rows where all
    three are known): Spearman between each two, and each one's top three. None without 3 sources."""
    if source is None:
        return None
    from scipy.stats import spearmanr
    cols = {"raw": responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy(), **golds}
    keep = rows & np.logical_and.reduce([np.isfinite(v) for v in cols.values()])
    means = (pl.DataFrame({"source": responses[source].cast(pl.Utf8), **cols}).filter(pl.Series(keep))
             .group_by("source").mean().sort("source"))
    if means.height < 3:
        return None
    names = ("raw", "loglinear", "alpacaeval")
    rho = {f"{a}~{b}": float(spearmanr(means[a], means[b])[0]) for i, a in enumerate(names) for b in names[i + 1:]}
    top = {g: means.sort(g, descending=True)["source"].head(3).to_list() for g in names}
    return {"n_sources": means.height, "spearman": rho, "top": top}


@dataclass
class ExperimentResult:
    """One experiment: the fitted model, its held-out evaluation and its wall seconds (a member fit shared by
    run_experiments counts where it ran)."""

    fit: FittedModel
    evaluation: Evaluation
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"protocol": self.fit.protocol.to_dict(), "n_train_pairs": self.fit.n_train_pairs,
                "label_accuracy": self.fit.label_accuracy, **self.evaluation.to_dict()}

    def frame(self) -> pl.DataFrame:
        return self.evaluation.frame()


@on_fit_threads
def run_experiment(ds: Dataset, X: np.ndarray, protocol: Protocol = Protocol(), *, augment: np.ndarray | None = None,
                   threads: int | None = None, progress: bool | None = None) -> ExperimentResult:
    """fit, then evaluate on the held-out prompts."""
    return run_experiments(ds, X, [protocol], augment=augment, threads=threads, progress=progress)[0]


@on_fit_threads
def run_experiments(ds: Dataset, X: np.ndarray, protocols: list[Protocol], *, augment: np.ndarray | None = None,
                    threads: int | None = None, progress: bool | None = None,
                    lcs: dict | None = None) -> list[ExperimentResult]:
    """run_experiment of each protocol on one dataset, each with its own numbers, computing once what they share:
    the members of each Protocol.member_fit (a post-hoc length control corrects a copy) and the pool's
    length-controlled gold. lcs: {gold name: pool_lc(ds, name)}, filled in as computed (pass the same dict with
    the same ds to compute each once across calls)."""
    check_aligned(ds, X)
    fits: dict[Protocol, _Members] = {}
    lcs = {} if lcs is None else lcs
    results = []
    for protocol in protocols:
        start = time.perf_counter()
        _check_control(ds, protocol.learner)
        with Stages(f"fit {protocol.learner.name} x{protocol.k} on {ds.name}", 3, progress) as stages:
            if protocol.member_fit not in fits:
                fits[protocol.member_fit] = _members(ds, X, protocol.member_fit, augment, stages)
            fitted = _corrected(ds, X, protocol, fits[protocol.member_fit], stages)
        if ds.has_gold and protocol.length_control_gold not in lcs:
            lcs[protocol.length_control_gold] = pool_lc(ds, protocol.length_control_gold)
        evaluation = evaluate(ds, X, fitted.ensemble, fitted.split, fitted.protocol, metrics=fitted.metrics,
                              scores=fitted.scores, lc=lcs.get(protocol.length_control_gold))
        results.append(ExperimentResult(fitted, evaluation, time.perf_counter() - start))
    return results


# ----------------------------------------------------------------------------- saved models

@dataclass
class SavedModel:
    """A model directory read back: the ensemble, its protocol and split, and the manifest."""

    ensemble: RewardEnsemble
    protocol: Protocol
    split: Split
    manifest: dict

    @property
    def embed_spec(self) -> dict:
        spec = (self.manifest.get("embedder") or {}).get("spec")
        if not spec:
            raise EmbrmError("manifest.json: no embedder spec: re-fit the model with `embrm fit`")
        return spec


def load_model(model_dir) -> SavedModel:
    ensemble, manifest = load_ensemble(model_dir)
    if "protocol" not in manifest:
        raise EmbrmError(f"{model_dir}/manifest.json: written by an older embrm (no protocol): re-fit the model")
    split_ = manifest.get("split") or {}
    held = Split(np.asarray(split_.get("train_prompts", []), dtype=str),
                 np.asarray(split_.get("test_prompts", []), dtype=str))
    both = np.intersect1d(held.train, held.test)
    if len(both):  # a held-out prompt that trained would inflate every held-out number
        raise EmbrmError(f"{model_dir}/manifest.json: prompt {str(both[0])!r} (and {len(both) - 1} more) is both a "
                         f"training and a held-out prompt: the split was edited; refit the model (embrm fit)")
    return SavedModel(ensemble, Protocol.from_dict(manifest["protocol"]), held, manifest)


def model_embeddings(model: SavedModel, ds: Dataset, cache_dir) -> np.ndarray:
    """The dataset's embeddings from the embedder the model was fitted on (all texts must be cached)."""
    X = cached_embeddings(ds, model.embed_spec, cache_dir)
    dim = model.manifest.get("dim")
    if dim is not None and X.shape[1] != dim:
        raise EmbrmError(f"the model was trained on {dim}-d embeddings but the cache holds {X.shape[1]}-d: use the "
                         f"embedder the model was fitted with")
    return X


@on_fit_threads
def score(model: SavedModel, ds: Dataset, X: np.ndarray, *, progress: bool | None = False) -> pl.DataFrame:
    """response_id, prompt_id and one column per member (member_0..member_{K-1}); a Laplace model (mode posterior)
    adds its posterior mean reward and epistemic standard deviation (posterior_mean, posterior_std; before any
    length correction)."""
    scores = model.ensemble.predict(X, _lengths(ds), progress=progress)
    frame = ds.responses.select("response_id", "prompt_id").with_columns(
        pl.DataFrame(scores, schema=[f"member_{k}" for k in range(scores.shape[1])]))
    posterior = model.ensemble.posterior
    if posterior is None:
        return frame
    return frame.with_columns(posterior_mean=map_rows(posterior.predict, X),
                              posterior_std=map_rows(posterior.predict_std, X))
