"""Policies an RL run trains, all batched over prompts (no Python loop over prompts or samples).

PoolPolicy    pi(y | p) = softmax_y(log pi_ref(y | p) + l(y)) over prompt p's candidate pool (padded (P, N)):
              l = a free logit per candidate (``linear=False``: the tabular policy), or l = phi(y)^T theta with
              theta (d,) shared by all prompts (``linear=True``; it generalises, so it is measured on an EVALUATION
              pool set of other prompts). Its KL to pi_ref, its expected gold and proxy are exact sums over the pool.
GaussianPolicy x ~ N(m_p, s_p^2 I) in the embedding space, reference N(mu_p, I) (the generator's base policy):
              samples are NEW candidates, scored by the fitted reward and by the generator's known gold. KL is exact
              in closed form, 0.5 (d s^2 + |m - mu|^2 - d - 2 d log s); a Monte-Carlo estimate of it (mean of
              log pi - log pi_ref over the evaluation samples) is reported beside it with its standard error.

A policy offers: ``sample(group, gen)`` -> (samples, their log pi with gradient: one forward pass),
``log_prob(samples)`` and ``ref_log_prob(samples)`` (P, G), ``kl()`` (P,) differentiable, ``parameters()``,
``reward(samples)`` (P, G) and ``evaluate(gen)``: per-prompt float64 arrays of the measured prompts (gold, proxy,
reward, kl[, gold_se, kl_mc, kl_mc_se]).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["PoolSet", "PoolPolicy", "GaussianPolicy", "EVAL_SAMPLES"]

EVAL_SAMPLES = 256  # a continuous policy's Monte-Carlo samples per prompt at each evaluation point


@dataclass
class PoolSet:
    """Padded pools (P, N) of one set of prompts: reference log-probabilities (padding: -inf), the trained reward,
    the raw proxy and the gold of every candidate, and (linear policy) the candidates' embeddings (P, N, d)."""

    prompt_ids: np.ndarray
    ref_logp: np.ndarray
    reward: np.ndarray
    proxy: np.ndarray
    gold: np.ndarray
    features: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.ref_logp)


class PoolPolicy:
    """Softmax over each prompt's pool; tabular logits (P, N) or a linear theta (d,) (see the module docstring)."""

    def __init__(self, train: PoolSet, measured: PoolSet | None = None, *, linear: bool = False):
        import torch

        self.linear = linear
        self.sets = [self._tensors(train), self._tensors(measured or train)]
        shape = (train.features.shape[-1],) if linear else train.ref_logp.shape
        self.theta = torch.zeros(shape, dtype=torch.float32, requires_grad=True)

    @staticmethod
    def _tensors(s: PoolSet) -> dict:
        import torch

        valid = torch.from_numpy(s.valid)
        t = {"valid": valid, "ref": torch.from_numpy(s.ref_logp.astype(np.float32)),
             "reward": torch.from_numpy(np.where(s.valid, s.reward, 0.0).astype(np.float32)),
             "proxy": np.where(s.valid, s.proxy, 0.0), "gold": np.where(s.valid, s.gold, 0.0)}
        # what evaluate reads, in float64 once (the float32 values the policy trains on, padding 0)
        t["valid64"] = s.valid
        t["ref64"] = np.where(s.valid, t["ref"].double().numpy(), 0.0)
        t["reward64"] = t["reward"].double().numpy()
        if s.features is not None:
            t["features"] = torch.from_numpy(np.ascontiguousarray(s.features, np.float32))
        return t

    def parameters(self) -> list:
        return [self.theta]

    def _log_probs(self, which: int = 0):
        """log pi (P, N) of a pool set; padding stays -inf through ref (no mask needed, and no gradient there)."""
        import torch

        s = self.sets[which]
        shift = s["features"] @ self.theta if self.linear else self.theta
        return torch.log_softmax(s["ref"] + shift, dim=1)

    def sample(self, group: int, gen):
        """(idx (P, G), log pi of the samples with gradient) from ONE forward pass, kept for ``kl``."""
        import torch

        self._logp = self._log_probs()
        with torch.no_grad():
            idx = torch.multinomial(self._logp.detach().exp(), group, replacement=True, generator=gen)
        return idx, self._logp.gather(1, idx)

    def log_prob(self, idx):
        self._logp = self._log_probs()
        return self._logp.gather(1, idx)

    def ref_log_prob(self, idx):
        return self.sets[0]["ref"].gather(1, idx)

    def reward(self, idx):
        return self.sets[0]["reward"].gather(1, idx)

    def kl(self):
        """Exact KL(pi || pi_ref) (P,) of the training pools, from the latest forward pass (sample / log_prob)."""
        import torch

        logp, s = self._logp, self.sets[0]
        terms = logp.exp() * (logp - s["ref"])
        return torch.where(s["valid"], terms, torch.zeros((), dtype=terms.dtype)).sum(dim=1)

    def evaluate(self, gen=None) -> dict:
        """Exact expectations over the measured prompts' pools, float64."""
        import torch

        s = self.sets[1]
        with torch.no_grad():
            logp = self._log_probs(1).double().numpy()
        pi = np.exp(logp)
        log_ratio = np.where(s["valid64"], logp, 0.0)
        log_ratio -= s["ref64"]
        kl = (pi * log_ratio).sum(axis=1)
        return {"gold": (pi * s["gold"]).sum(axis=1), "proxy": (pi * s["proxy"]).sum(axis=1),
                "reward": (pi * s["reward64"]).sum(axis=1), "kl": np.maximum(kl, 0.0)}


class GaussianPolicy:
    """N(m_p, s_p^2 I) per prompt, reference N(mu_p, I); m starts at mu, s at 1 (the policy starts AT pi_ref).

    Samples are drawn as x = m + s eps under no gradient; log pi(x) carries its gradient to (m, log s) through
    ``_log_density`` (the analytic gradient from z = (x - m) / s: one pass over the (P, G, d) samples each way, and at
    sampling z IS eps, so the sampling pass never recomputes it). x itself gets no gradient."""

    def __init__(self, mu: np.ndarray, reward_fn, gold_fn, *, eval_samples: int = EVAL_SAMPLES):
        import torch

        self.mu = torch.from_numpy(np.ascontiguousarray(mu, np.float32))
        self.m = self.mu.clone().requires_grad_(True)
        self.log_s = torch.zeros(len(mu), dtype=torch.float32, requires_grad=True)
        self.reward_fn, self.gold_fn, self.eval_samples = reward_fn, gold_fn, eval_samples

    @property
    def dim(self) -> int:
        return self.mu.shape[1]

    def parameters(self) -> list:
        return [self.m, self.log_s]

    def _draw(self, group: int, gen):
        """(x (P, G, d), eps (P, G, d)): x = m + s eps, without gradient."""
        import torch

        with torch.no_grad():
            eps = torch.randn((len(self.mu), group, self.dim), generator=gen)
            return torch.addcmul(self.m[:, None, :], self.log_s.exp()[:, None, None], eps), eps

    def sample(self, group: int, gen):
        """(x (P, G, d), log pi(x) with gradient)."""
        x, eps = self._draw(group, gen)
        return x, _log_density(self.m, self.log_s, eps)

    def log_prob(self, x):
        """log density up to the constant -d/2 log(2 pi), which cancels in every ratio and KL."""
        import torch

        with torch.no_grad():
            z = (x - self.m[:, None, :]).mul_((-self.log_s).exp()[:, None, None])
        return _log_density(self.m, self.log_s, z)

    def ref_log_prob(self, x):
        z = x - self.mu[:, None, :]
        return -0.5 * _sq_norm(z)

    def reward(self, x):
        import torch

        r = self.reward_fn(x.numpy())
        return torch.from_numpy(np.asarray(r, np.float32))

    def kl(self):
        d, s2 = self.dim, (2 * self.log_s).exp()
        return 0.5 * (d * s2 + ((self.m - self.mu) ** 2).sum(dim=1) - d - 2 * d * self.log_s)

    def evaluate(self, gen) -> dict:
        """Monte-Carlo means over ``eval_samples`` fresh samples per prompt (with standard errors), exact KL."""
        import torch

        x, eps = self._draw(self.eval_samples, gen)
        with torch.no_grad():
            log_ratio = (-0.5 * _sq_norm(eps) - self.dim * self.log_s[:, None]
                         - self.ref_log_prob(x)).double().numpy()
            kl = self.kl().double().numpy()
        flat = x.numpy().reshape(-1, self.dim)
        shape = x.shape[:2]
        gold = self.gold_fn(flat).reshape(shape)
        proxy, reward = self.reward_fn(x.numpy(), parts=True)
        se = np.sqrt(shape[1])
        return {"gold": gold.mean(axis=1), "gold_se": gold.std(axis=1, ddof=1) / se,
                "proxy": np.asarray(proxy, np.float64).mean(axis=1),
                "reward": np.asarray(reward, np.float64).mean(axis=1), "kl": np.maximum(kl, 0.0),
                "kl_mc": log_ratio.mean(axis=1), "kl_mc_se": log_ratio.std(axis=1, ddof=1) / se}


def _sq_norm(z):
    """|z|^2 over the last axis (P, G, d) -> (P, G), one pass."""
    import torch

    return torch.linalg.vecdot(z, z)


def _log_density(m, log_s, z):
    """-|z|^2 / 2 - d log s (P, G) for z = (x - m) / s given WITHOUT gradient, differentiable in (m, log s)."""
    return _log_density_function().apply(m, log_s, z)


@functools.lru_cache(maxsize=1)
def _log_density_function():
    """The autograd Function, defined on first use (embrm.rl imports no torch until a policy runs)."""
    import torch

    class LogDensity(torch.autograd.Function):
        """d/dm = z / s (a batched (1, G) x (G, d) product per prompt); d/dlog s = |z|^2 - d."""

        @staticmethod
        def forward(ctx, m, log_s, z):
            sq = _sq_norm(z)
            ctx.save_for_backward(log_s, z, sq)
            return -0.5 * sq - z.shape[-1] * log_s[:, None]

        @staticmethod
        def backward(ctx, g):
            log_s, z, sq = ctx.saved_tensors
            grad_m = torch.bmm(g[:, None, :], z)[:, 0, :].mul_((-log_s).exp()[:, None])
            grad_log_s = (g * (sq - z.shape[-1])).sum(dim=1)
            return grad_m, grad_log_s, None

    return LogDensity
