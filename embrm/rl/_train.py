"""The RL loop: sample a group of G responses per prompt from the policy, score them, turn rewards into advantages,
take clipped policy-gradient steps (Adam, torch on the CPU), and measure the policy at log-spaced steps.

Advantages A (P, G) from rewards r (P, G) (r already minus kl * (log pi - log pi_ref) when kl_mode = "reward"):
    grpo       r - mean_G(r), divided by std_G(r) + 1e-6 when std_norm        (Shao et al. 2024, DeepSeekMath)
    rloo       r - mean of the other G - 1 samples of the prompt             (Ahmadian et al. 2024)
    ppo        r - b_p, b_p a running mean of prompt p's rewards (decay baseline_decay): a learned baseline
               without a value network; ``epochs`` (default 4) clipped updates per batch     (Schulman et al. 2017)
    reinforce  r                                                              (Williams 1992)
Loss = -mean over (P, G) of min(rho A, clip(rho, 1 - clip, 1 + clip) A), rho = pi / pi_old, plus
kl * mean_P KL(pi || pi_ref) when kl_mode = "loss" (exact: embrm.rl._policies). Every tensor op is batched over
prompts and samples; the only Python loop is over steps (and a batch's updates).
"""

from __future__ import annotations

import numpy as np

from embrm.rl._config import RLConfig

__all__ = ["advantages", "eval_steps", "train"]


def eval_steps(steps: int, points: int) -> np.ndarray:
    """Log-spaced steps 0..steps (always 0, 1 and the last; fewer than ``points`` after rounding collapses)."""
    grid = np.unique(np.round(np.geomspace(1, steps, max(points - 1, 1))).astype(np.int64))
    return np.concatenate([[0], grid])


def advantages(config: RLConfig, r, baseline: dict):
    """(P, G) advantages of rewards r (P, G) under config.algo; ``baseline`` holds PPO's running means."""
    import torch

    if config.algo == "grpo":
        a = r - r.mean(dim=1, keepdim=True)
        return a / (r.std(dim=1, keepdim=True) + 1e-6) if config.std_norm else a
    if config.algo == "rloo":
        g = r.shape[1]
        return (r - (r.sum(dim=1, keepdim=True) - r) / (g - 1))
    if config.algo == "ppo":
        mean = r.mean(dim=1)
        b = baseline.get("b", mean)
        baseline["b"] = config.baseline_decay * b + (1 - config.baseline_decay) * mean
        return r - b[:, None]
    return r.clone() if isinstance(r, torch.Tensor) else r


def train(policy, config: RLConfig, bar=None) -> tuple[np.ndarray, list]:
    """Run config.steps steps (advancing ``bar``, a core.Progress, by one a step); returns (evaluated steps,
    [policy.evaluate() at each of them])."""
    import torch

    gen = torch.Generator().manual_seed(int(config.seed))
    eval_gen = torch.Generator().manual_seed(int(config.seed) + 1)
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr, fused=True)  # one kernel per step, not eight
    at = eval_steps(config.steps, config.points)
    marks, history, baseline = set(at.tolist()), [policy.evaluate(eval_gen)], {}
    for step in range(1, config.steps + 1):
        _step(policy, config, gen, opt, baseline)
        if step in marks:
            history.append(policy.evaluate(eval_gen))
        if bar is not None:
            bar.advance(1)
    return at, history


def _step(policy, config: RLConfig, gen, opt, baseline: dict) -> None:
    import torch

    samples, logp = policy.sample(config.group, gen)
    old = logp.detach()
    with torch.no_grad():
        r = policy.reward(samples)
        if config.kl > 0 and config.kl_mode == "reward":
            r = r - config.kl * (old - policy.ref_log_prob(samples))
        a = advantages(config, r, baseline)
    for update in range(config.updates):
        if update:  # the first update reuses the sampling pass (ratio 1)
            logp = policy.log_prob(samples)
        ratio = (logp - old).exp()
        surrogate = torch.minimum(ratio * a, ratio.clamp(1 - config.clip, 1 + config.clip) * a)
        loss = -surrogate.mean()
        if config.kl > 0 and config.kl_mode == "loss":
            loss = loss + config.kl * policy.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
