"""A saved reward model as a function of (prompt, response) texts: what the server, the TRL and verl reward
functions and a notebook call.

    rm = RewardModel.load("models/mlp", settings=RewardSettings("lcb", lam=1.0))
    out = rm.rewards(prompts, responses)                  # Rewards: rewards, scores, members, std, ...
    out = rm.rewards(prompts, responses, {"aggregation": "min"})   # settings overridden for one call

The reward is the studies' (embrm.pipeline.proxies, embrm.rl):

    z_k  = (R_k - mean_k) / std_k          each member standardised on the TRAINING responses of the model's split
    a    = aggregation of z (mean, min, median, uwo, lcb, softmin, single; lam: uwo's lambda and lcb's beta)
    r    = (a - mean_a) / std_a             normalize: the aggregation's statistics on the training responses
    r    = r - length_penalty * z(log1p characters of the response)        (z on the training responses)

`scores` is r put on 0..1: its mid-rank among the training responses' rewards under the same settings (the share of
training responses it beats, ties counted half; InfAlign's calibrated reward, Balashankar et al. 2024), so 0.9
reads "better than 90 % of what the model was trained on" whatever the aggregation's scale.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import EmbrmError, Integer, Number, OneOf, check_value, fit_threads, take_rows
from embrm.data import DatasetSpec, Exclusion, load_dataset
from embrm.embedding import DEFAULT_CACHE_DIR, EmbedderConfig, OnlineVectors
from embrm.evaluation import AGGREGATION_RULES, AGGREGATIONS, aggregate_all, rows_of
from embrm.pipeline import SavedModel, load_model, model_embeddings
from embrm.rewards import length_feature

__all__ = ["Reference", "RewardModel", "Rewards", "RewardSettings", "SETTING_RULES"]

SETTING_RULES = {
    "aggregation": OneOf(AGGREGATIONS),
    "lam": Number(0.0, AGGREGATION_RULES["lam"].hi),  # lcb's beta and uwo's lambda: no reward for disagreement
    "temperature": AGGREGATION_RULES["temperature"],
    "member": Integer(-1024, 1023),
    "length_penalty": Number(-1e6, 1e6),
}
REFERENCE_CAP = 200_000  # training responses kept as the reference (a deterministic sample beyond; Sun-scale arrays)


@dataclass(frozen=True)
class RewardSettings:
    """How member scores become one reward; chosen when a model is loaded (`embrm serve --agg --lambda ...`) and
    overridable per call or request."""

    aggregation: str = "lcb"
    lam: float = 1.0  # uwo's lambda and lcb's beta (the penalty on the members' disagreement)
    temperature: float = 1.0  # softmin
    member: int = 0  # single
    length_penalty: float = 0.0  # minus this times the z-scored log length
    normalize: bool = True  # by the aggregation's mean and std on the training responses

    def __post_init__(self):
        for name, rule in SETTING_RULES.items():
            check_value(name, getattr(self, name), rule)
        if not isinstance(self.normalize, bool):
            raise EmbrmError(f"normalize must be true or false, got {self.normalize!r}", field="normalize")
        object.__setattr__(self, "lam", float(self.lam))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "length_penalty", float(self.length_penalty))

    def updated(self, overrides: dict | None) -> RewardSettings:
        """These settings with some replaced (names as the fields; unknown names refused)."""
        if not overrides:
            return self
        known = [f.name for f in fields(self)]
        unknown = [k for k in overrides if k not in known]
        if unknown:
            raise EmbrmError(f"unknown setting {unknown[0]!r}: use {', '.join(known)}", field=unknown[0])
        return replace(self, **overrides)

    def params(self) -> dict:
        return {"lam": self.lam, "beta": self.lam, "temperature": self.temperature, "member": self.member}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Rewards:
    """One call's rewards, aligned with its pairs. members: the raw member scores (what `embrm score` writes);
    std: the members' disagreement (population std of the standardised scores: the epistemic part); mean: the
    standardised members' mean before normalisation; length: the response's characters."""

    rewards: np.ndarray
    scores: np.ndarray
    members: np.ndarray
    std: np.ndarray
    mean: np.ndarray
    length: np.ndarray
    settings: RewardSettings
    aggregations: dict[str, np.ndarray]  # more aggregations asked for (normalised like `rewards`, no length penalty)
    n_embedded: int = 0

    def rows(self, lo: int, hi: int) -> Rewards:
        """The rewards of pairs lo..hi-1 (one request's share of a batch scored at once)."""
        return Rewards(self.rewards[lo:hi], self.scores[lo:hi], self.members[lo:hi], self.std[lo:hi],
                       self.mean[lo:hi], self.length[lo:hi], self.settings,
                       {k: v[lo:hi] for k, v in self.aggregations.items()}, self.n_embedded)

    def to_dict(self) -> dict:
        return {"rewards": self.rewards.tolist(), "scores": self.scores.tolist(), "members": self.members.tolist(),
                "std": self.std.tolist(), "mean": self.mean.tolist(), "length": self.length.tolist(),
                "aggregations": {k: v.tolist() for k, v in self.aggregations.items()},
                "settings": self.settings.to_dict()}


class Reference:
    """The training responses a model's rewards are put on: their member scores (for the members' standardisation
    and each aggregation's normalisation and ranks) and log lengths (for the length penalty's z)."""

    def __init__(self, members: np.ndarray, log_length: np.ndarray | None, n_total: int, source: str):
        if len(members) == 0:
            raise EmbrmError(f"{source}: no training responses to standardise the members on: serve a model "
                             f"whose dataset has its training prompts")
        self.members, self.log_length, self.n_total, self.source = members, log_length, n_total, source
        ref = members.astype(np.float64)
        self.member_mean, sd = ref.mean(axis=0), ref.std(axis=0)
        self.member_std = np.where(sd > 0, sd, 1.0)
        if log_length is not None:
            self.length_mean, self.length_std = float(log_length.mean()), float(log_length.std()) or 1.0

    @classmethod
    def of_model(cls, model: SavedModel, cache_dir, dataset=None, data_dir=None) -> Reference:
        """Score the model's training responses: `dataset` (a Dataset, a source or None: the manifest's own) with
        its vectors from the cache the model was fitted on."""
        if dataset is not None and not isinstance(dataset, (str, Path)):
            ds = dataset
        else:
            try:
                ds = load_dataset(dataset if dataset is not None else _manifest_source(model), data_dir)
            except EmbrmError as e:
                raise EmbrmError(f"the model's training data ({model.manifest.get('dataset')}) cannot be loaded for "
                                 f"its reference statistics ({e}): pass it as --dataset") from None
        X = model_embeddings(model, ds, cache_dir)
        rows = np.flatnonzero(rows_of(ds.responses, model.split.train) & ~ds.excluded)
        n_total = len(rows)
        if n_total > REFERENCE_CAP:
            rows = np.sort(np.random.default_rng(0).choice(rows, REFERENCE_CAP, replace=False))
        lengths = length_feature(ds.responses[rows]) if ds.texts else None
        with fit_threads():
            members = model.ensemble.predict(take_rows(X, rows), lengths)
        return cls(np.asarray(members, np.float32), lengths, n_total, ds.name)

    def standardised(self, members: np.ndarray) -> np.ndarray:
        return (members.astype(np.float64) - self.member_mean) / self.member_std

    @functools.lru_cache(maxsize=64)
    def _reference_values(self, settings: RewardSettings) -> tuple[np.ndarray, float, float]:
        """(sorted final rewards of the training responses, the aggregation's mean, its std) under settings."""
        a = aggregate_all(self.standardised(self.members), (settings.aggregation,), **settings.params())
        a = a[settings.aggregation]
        centre, scale = (float(a.mean()), float(a.std()) or 1.0) if settings.normalize else (0.0, 1.0)
        r = (a - centre) / scale
        if settings.length_penalty and self.log_length is not None:
            r = r - settings.length_penalty * self.length_z(self.log_length)
        return np.sort(r), centre, scale

    def normalised(self, a: np.ndarray, settings: RewardSettings) -> np.ndarray:
        _, centre, scale = self._reference_values(settings)
        return (a - centre) / scale

    def length_z(self, log_length: np.ndarray) -> np.ndarray:
        if self.log_length is None:
            raise EmbrmError("length_penalty needs the training responses' texts: the model was fitted on vectors "
                             "without texts", field="length_penalty")
        return (log_length - self.length_mean) / self.length_std

    def rank(self, r: np.ndarray, settings: RewardSettings) -> np.ndarray:
        """Mid-rank of each reward among the training responses' rewards under the same settings, in (0, 1)."""
        ref = self._reference_values(settings)[0]
        below, upto = np.searchsorted(ref, r, "left"), np.searchsorted(ref, r, "right")
        return (below + upto) / (2.0 * len(ref))

    def to_dict(self, settings: RewardSettings | None = None) -> dict:
        d = {"dataset": self.source, "training_responses": self.n_total, "used": len(self.members),
             "member_mean": self.member_mean.tolist(), "member_std": self.member_std.tolist()}
        if settings is not None:  # the aggregation's statistics that normalise the reward under these settings
            _, centre, scale = self._reference_values(settings)
            d["aggregation"] = {"name": settings.aggregation, "mean": centre, "std": scale}
        if self.log_length is not None:
            d["log_length"] = {"mean": self.length_mean, "std": self.length_std}
        return d


def _manifest_source(model: SavedModel):
    """The dataset the model was fitted on, as its manifest declares it (a registered name or a file with its
    columns and exclusion rule)."""
    s = model.manifest.get("dataset_spec") or {}
    fallback = model.manifest.get("dataset_source") or model.manifest.get("dataset")
    if not s or s.get("arrays"):
        return fallback
    try:
        exclude = s.get("exclude")
        return DatasetSpec(s["source"], s.get("name"), tuple(map(tuple, s.get("columns") or ())),
                           Exclusion(**exclude) if exclude else None, s.get("answer_source"), s.get("half", 0),
                           tuple(map(tuple, s.get("params") or ())), s.get("prompts", 0))
    except (KeyError, TypeError):
        return fallback


class RewardModel:
    """A saved model, its live embedder and its reference: rewards of (prompt, response) texts."""

    def __init__(self, model: SavedModel, vectors: OnlineVectors, reference: Reference,
                 settings: RewardSettings = RewardSettings(), model_dir: str | Path = ""):
        self.model, self.vectors, self.reference, self.settings = model, vectors, reference, settings
        self.model_dir = str(model_dir)
        self.length_corrected = model.ensemble.length_correction is not None
        if vectors.dim != model.manifest.get("dim", vectors.dim):
            raise EmbrmError(f"the live embedder gives {vectors.dim}-d vectors, the model was fitted on "
                             f"{model.manifest.get('dim')}-d: give the embedder that made its vectors")
        self.rewards(["ping"], ["pong"])  # fail at load, not at the first request (e.g. length_penalty on arrays)

    @classmethod
    def load(cls, model_dir, *, cache_dir=DEFAULT_CACHE_DIR, settings: RewardSettings = RewardSettings(),
             dataset=None, data_dir=None, embedder: EmbedderConfig | None = None,
             memory: int | None = None) -> RewardModel:
        """Load a model dir (`embrm fit`), the embedder its cache was made with (or `embedder`, for imported
        vectors) and its training responses' scores (from `dataset`, default the one it was fitted on, whose texts
        must be in `cache_dir`)."""
        model = load_model(model_dir)
        options = {} if memory is None else {"memory": memory}
        vectors = OnlineVectors(model.embed_spec, cache_dir, embedder=embedder, **options)
        return cls(model, vectors, Reference.of_model(model, cache_dir, dataset, data_dir), settings, model_dir)

    @property
    def k(self) -> int:
        return self.model.ensemble.k

    def rewards(self, prompts: list[str], responses: list[str], overrides: dict | None = None,
                aggregations: tuple[str, ...] = ()) -> Rewards:
        """Rewards of the pairs (prompts[i], responses[i]) under the model's settings with `overrides`;
        `aggregations`: more aggregations to return beside (e.g. every one of AGGREGATIONS)."""
        settings = self.settings.updated(overrides)
        if len(prompts) != len(responses):
            raise EmbrmError(f"{len(prompts)} prompts for {len(responses)} responses: give one prompt per response")
        X, n_new = self.vectors.vectors(list(prompts), list(responses))
        return self.rewards_of(X, responses, settings, aggregations, n_new)

    def rewards_of(self, X: np.ndarray, responses: list[str], settings: RewardSettings,
                   aggregations: tuple[str, ...] = (), n_embedded: int = 0) -> Rewards:
        """Rewards of vectors X (n, d) of the responses (their texts give the length)."""
        for name in aggregations:
            check_value("aggregation", name, SETTING_RULES["aggregation"])
        check_value("member", settings.member, Integer(-self.k, self.k - 1))
        frame = pl.DataFrame({"response": list(responses)}, schema={"response": pl.Utf8})
        log_length = length_feature(frame)
        with fit_threads():
            members = self.model.ensemble.predict(X, log_length if self.length_corrected else None)
        z = self.reference.standardised(members)
        names = tuple(dict.fromkeys((settings.aggregation, "mean", *aggregations)))
        agg = aggregate_all(z, names, **settings.params())
        std = z.std(axis=1) if self.k > 1 else np.zeros(len(z))
        r = self.reference.normalised(agg[settings.aggregation], settings)
        if settings.length_penalty:
            r = r - settings.length_penalty * self.reference.length_z(log_length)
        if not np.isfinite(r).all():
            raise EmbrmError(f"{int((~np.isfinite(r)).sum())} of {len(r)} rewards are not finite: check the "
                             f"settings (e.g. a huge length_penalty)", field="settings")
        others = {name: self.reference.normalised(agg[name], replace(settings, aggregation=name))
                  for name in aggregations}
        return Rewards(r, self.reference.rank(r, settings), members, std, agg["mean"],
                       np.expm1(log_length).round().astype(np.int64), settings, others, n_embedded)

    def info(self) -> dict:
        m = self.model.manifest
        return {"model_dir": self.model_dir, "dataset": m.get("dataset"), "head": self.model.ensemble.head,
                "mode": self.model.ensemble.mode, "k": self.k, "dim": self.vectors.dim,
                "embedder": {"fingerprint": self.vectors.fingerprint, "backend": self.vectors.spec.get("backend"),
                             "model": self.vectors.spec.get("model"), "template": self.vectors.template,
                             "live": self.vectors.embedder.spec().get("backend")},
                "settings": self.settings.to_dict(), "reference": self.reference.to_dict(self.settings),
                "aggregations": list(AGGREGATIONS), "length_corrected": self.length_corrected,
                "vectors": dict(self.vectors.counts)}

    def close(self) -> None:
        self.vectors.close()
