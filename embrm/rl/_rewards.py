"""The reward an RL policy is trained on: a fitted ensemble's aggregation, normalised, length-penalised and
transformed per prompt against the reference policy.

    r = aggregation of the standardised member scores           (as Best-of-n scores them: embrm.pipeline.proxies)
    r = (r - mean) / std over the training responses             (normalize; the studies' standardisation)
    r = r - length_penalty * z(log length)                       (text pools only)
    r = T_p(r)                                                   (transform, per prompt p, against pi_ref):
        sigmoid   sigmoid(r - E_ref[r | p])       centred sigmoid: preference-as-reward shaping, bounded in (0, 1)
        cdf       P_ref(r' < r | p) + P_ref(r' = r | p) / 2    the calibrated (rank) reward of InfAlign
                  (Balashankar et al. 2024): uniform on (0, 1) under the reference policy whatever r's scale

Over a pool the reference is exact (pi_ref's weights over the pool's candidates); for a continuous policy it is
the empirical distribution of ``REFERENCE_SAMPLES`` reference samples per prompt, drawn once.
"""

from __future__ import annotations

import numpy as np

from embrm.core import EmbrmError
from embrm.evaluation import aggregate_all

__all__ = ["REFERENCE_SAMPLES", "normalised", "reference_cdf", "transform_rewards", "SampleReward", "PromptReward"]

REFERENCE_SAMPLES = 512  # reference samples per prompt of a continuous policy's transform (CDF resolution 0.2 %)


def normalised(values: np.ndarray, reference_rows: np.ndarray) -> np.ndarray:
    """values z-scored by their mean and std on reference_rows (a constant reward is only centred)."""
    ref = values[reference_rows]
    if ref.size == 0:
        raise EmbrmError("no training responses to normalise the reward by: use normalize = false")
    sd = float(ref.std())
    return (values - ref.mean()) / (sd if sd > 0 else 1.0)


def reference_cdf(ref_values: np.ndarray, ref_weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-CDF of values (P, V) under each prompt's weighted reference values (P, M) (weights sum to 1 per row;
    padding: weight 0): P(r' < v) + P(r' = v) / 2, by one sort and two batched binary searches."""
    import torch

    order = np.argsort(ref_values, axis=1, kind="stable")
    sorted_v = torch.from_numpy(np.take_along_axis(ref_values, order, axis=1).astype(np.float64))
    cum = np.concatenate([np.zeros((len(order), 1)), np.cumsum(np.take_along_axis(ref_weights, order, 1), 1)], 1)
    cum_t = torch.from_numpy(cum)
    v = torch.from_numpy(np.ascontiguousarray(values, np.float64))
    below = cum_t.gather(1, torch.searchsorted(sorted_v, v, right=False))
    upto = cum_t.gather(1, torch.searchsorted(sorted_v, v, right=True))
    return (0.5 * (below + upto)).numpy()


def transform_rewards(transform: str, values: np.ndarray, ref_values: np.ndarray,
                      ref_weights: np.ndarray) -> np.ndarray:
    """T_p(values) (P, V) against each prompt's reference distribution (ref_values, ref_weights: (P, M))."""
    if transform == "none":
        return values
    if transform == "sigmoid":
        mean = (np.where(ref_weights > 0, ref_values, 0.0) * ref_weights).sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-(values - mean)))
    if transform == "cdf":
        return reference_cdf(np.where(ref_weights > 0, ref_values, np.inf), ref_weights, values)
    raise EmbrmError(f"transform {transform!r} is not one of none, sigmoid, cdf")


class SampleReward:
    """The reward of NEW embeddings (a continuous policy's samples): the ensemble's members scored on them,
    standardised with the members' statistics on the training responses, aggregated, normalised with the
    aggregation's statistics on the training responses. ``aggregation``: one of embrm.evaluation.AGGREGATIONS or
    "warm" (the WARM weight-averaged MLP); calibrated aggregations (conformal) need gold at the candidates and are
    refused."""

    def __init__(self, ensemble, scores: np.ndarray, reference_rows: np.ndarray, X_reference, aggregation: str, *,
                 normalize: bool = True, params: dict | None = None):
        self.ensemble, self.aggregation, self.params = ensemble, aggregation, dict(params or {})
        if aggregation == "conformal":
            raise EmbrmError("aggregation conformal is calibrated on the pools' gold: a continuous policy's new "
                             "candidates have none at scoring time: use it with policy pool or linear")
        if getattr(ensemble, "length_correction", None) is not None:
            raise EmbrmError("this ensemble removes a length slope (length_control posthoc): new embeddings have no "
                             "length: use a learner without length control for a continuous policy")
        ref = scores[reference_rows].astype(np.float64)
        self.mu, sd = ref.mean(axis=0), ref.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        self.scale = (0.0, 1.0)
        if normalize:
            base = (self._aggregate(scores[reference_rows], X_reference) if aggregation != "warm"
                    else ensemble.predict_warm(X_reference))
            self.scale = (float(base.mean()), float(base.std()) or 1.0)

    def _aggregate(self, members: np.ndarray, x) -> np.ndarray:
        if self.aggregation == "warm":
            return self.ensemble.predict_warm(x).astype(np.float64)
        z = (members.astype(np.float64) - self.mu) / self.sd
        return aggregate_all(z, (self.aggregation,), **self.params)[self.aggregation]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n,) float64 rewards of embeddings x (n, d)."""
        members = None if self.aggregation == "warm" else self.ensemble.predict(x)
        return (self._aggregate(members, x) - self.scale[0]) / self.scale[1]


class PromptReward:
    """A continuous policy's reward per prompt: ``SampleReward`` of samples (P, G, d), transformed against
    ``reference`` samples (P, M, d) of pi_ref (equal weights). Called with parts=True: (proxy, reward)."""

    def __init__(self, sample_reward: SampleReward, transform: str, reference: np.ndarray):
        self.sample_reward, self.transform = sample_reward, transform
        self.ref = self._score(reference)
        self.weights = np.full(self.ref.shape, 1.0 / self.ref.shape[1])

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.sample_reward(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2])

    def __call__(self, x: np.ndarray, parts: bool = False):
        proxy = self._score(x)
        reward = transform_rewards(self.transform, proxy, self.ref, self.weights)
        return (proxy, reward) if parts else reward
