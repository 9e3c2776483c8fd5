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
from embrm.rewards.heads import forward_stack
from embrm.rl._config import TRANSFORMS

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
    return _SortedReference(ref_values, ref_weights).cdf(values)


def _centred_sigmoid(values: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """sigmoid(values - each prompt's reference mean): the preference-as-reward shaping."""
    return 1.0 / (1.0 + np.exp(-(values - mean)))


class _SortedReference:
    """Each prompt's reference values sorted once, with their cumulative weights: the mid-CDF of new values is then
    two batched binary searches (a continuous policy's reference is fixed for the whole run)."""

    def __init__(self, ref_values: np.ndarray, ref_weights: np.ndarray):
        import torch

        order = np.argsort(ref_values, axis=1, kind="stable")
        self.sorted = torch.from_numpy(np.take_along_axis(ref_values, order, axis=1).astype(np.float64))
        cum = np.cumsum(np.take_along_axis(ref_weights, order, 1), 1)
        self.cum = torch.from_numpy(np.concatenate([np.zeros((len(order), 1)), cum], 1))

    def cdf(self, values: np.ndarray) -> np.ndarray:
        import torch

        v = torch.from_numpy(np.ascontiguousarray(values, np.float64))
        below = self.cum.gather(1, torch.searchsorted(self.sorted, v, right=False))
        upto = self.cum.gather(1, torch.searchsorted(self.sorted, v, right=True))
        return (0.5 * (below + upto)).numpy()


def transform_rewards(transform: str, values: np.ndarray, ref_values: np.ndarray,
                      ref_weights: np.ndarray) -> np.ndarray:
    """T_p(values) (P, V) against each prompt's reference distribution (ref_values, ref_weights: (P, M))."""
    if transform == "none":
        return values
    if transform == "sigmoid":
        mean = (np.where(ref_weights > 0, ref_values, 0.0) * ref_weights).sum(axis=1, keepdims=True)
        return _centred_sigmoid(values, mean)
    if transform == "cdf":
        return reference_cdf(np.where(ref_weights > 0, ref_values, np.inf), ref_weights, values)
    raise EmbrmError(f"transform {transform!r} is not one of none, sigmoid, cdf")


class SampleReward:
    """The reward of NEW embeddings (a continuous policy's samples): the ensemble's members scored on them,
    standardised with the members' statistics on the training responses, aggregated, normalised with the
    aggregation's statistics on the training responses. ``aggregation``: one of embrm.evaluation.AGGREGATIONS or
    "warm" (the WARM weight-averaged MLP); calibrated aggregations (conformal) need gold at the candidates and are
    refused.

    Linear (and Laplace) members and stacked MLP members are scored by a float32 path built once: the members'
    standardisation folded into their weights (a linear member's coef_ / sd, an MLP member's last layer), MLP rows
    in cache-sized chunks, no per-call validation of the samples (the policy made them; a non-finite reward is
    refused after scoring). Other ensembles (LightGBM, a shared trunk, WARM) go through ``ensemble.predict``."""

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
        self._members = None if aggregation == "warm" else _standardised_scorer(ensemble, self.mu, self.sd)

    def _aggregate(self, members: np.ndarray, x) -> np.ndarray:
        if self.aggregation == "warm":
            return self.ensemble.predict_warm(x).astype(np.float64)
        z = (members.astype(np.float64) - self.mu) / self.sd
        return aggregate_all(z, (self.aggregation,), **self.params)[self.aggregation]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n,) float64 rewards of embeddings x (n, d)."""
        return self.float32(x).astype(np.float64)

    def float32(self, x: np.ndarray) -> np.ndarray:
        """(n,) float32 rewards of embeddings x (n, d) (what a policy trains on)."""
        if self._members is None:
            members = None if self.aggregation == "warm" else self.ensemble.predict(x)
            r = ((self._aggregate(members, x) - self.scale[0]) / self.scale[1]).astype(np.float32)
        else:
            z = self._members(np.ascontiguousarray(x, np.float32))
            r = aggregate_all(z, (self.aggregation,), **self.params)[self.aggregation]
            r -= np.float32(self.scale[0])
            r *= np.float32(1.0 / self.scale[1])
        if not np.isfinite(r).all():
            raise EmbrmError(f"{int((~np.isfinite(r)).sum())} of {len(r)} samples have a non-finite reward: the "
                             f"policy diverged: use a smaller lr")
        return r


# MLP rows go through in chunks whose activations (K x chunk x hidden, float32) stay in a core's cache: measured
# on 2 cores (benchmarks/bench_rl.py), 10 members of d-256-128-1 ran ~2x faster in 4 MB chunks than in 128 MB ones.
SCORE_CHUNK_BYTES = 4 << 20


def _standardised_scorer(ensemble, mu: np.ndarray, sd: np.ndarray):
    """x (n, d) float32 -> the members' standardised scores (n, K) float32, (score - mu) / sd folded into the
    weights; None where the ensemble has no such path (its predict is used)."""
    head, mode = getattr(ensemble, "head", None), getattr(ensemble, "mode", None)
    if mode == "shared_trunk" or getattr(ensemble, "length_correction", None) is not None:
        return None
    if head in ("linear", "laplace"):
        W = (np.stack([m.coef_ for m in ensemble.members], 1) / sd).astype(np.float32)
        b = (-mu / sd).astype(np.float32)

        def linear(x):
            z = x @ W
            z += b
            return z

        return linear
    if head == "mlp":
        params = [np.asarray(p, np.float64) for p in ensemble.stacked_params()]
        params[-2] = params[-2] / sd[:, None, None]
        params[-1] = (params[-1] - mu[:, None]) / sd[:, None]
        params = [np.ascontiguousarray(p, np.float32) for p in params]
        widths = sum(p.shape[-1] for p in params[0::2])
        chunk = int(np.clip(SCORE_CHUNK_BYTES // (4 * len(mu) * widths), 64, 8192))
        return lambda x: forward_stack(x, params, chunk=chunk)
    return None


class PromptReward:
    """A continuous policy's reward per prompt: ``SampleReward`` of samples (P, G, d), transformed against
    ``reference`` samples (P, M, d) of pi_ref (equal weights). Called with parts=True: (proxy, reward). The
    reference is scored (and, for cdf, sorted) once; rewards are float32."""

    def __init__(self, sample_reward: SampleReward, transform: str, reference: np.ndarray):
        if transform not in TRANSFORMS:
            raise EmbrmError(f"transform {transform!r} is not one of {', '.join(TRANSFORMS)}")
        self.sample_reward, self.transform = sample_reward, transform
        self.ref = self._score(reference).astype(np.float64)
        self.weights = np.full(self.ref.shape, 1.0 / self.ref.shape[1])
        self._mean = self.ref.mean(axis=1, keepdims=True)
        self._sorted = _SortedReference(self.ref, self.weights) if transform == "cdf" else None

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.sample_reward.float32(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2])

    def __call__(self, x: np.ndarray, parts: bool = False):
        proxy = self._score(x)
        if self.transform == "none":
            reward = proxy
        elif self.transform == "sigmoid":
            reward = _centred_sigmoid(proxy, self._mean).astype(np.float32)
        else:
            reward = self._sorted.cdf(proxy).astype(np.float32)
        return (proxy, reward) if parts else reward
