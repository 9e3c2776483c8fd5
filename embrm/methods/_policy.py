"""Policy-side over-optimisation on candidate pools: each prompt's scored pool is the support of a policy, with
pi_ref uniform over the pool (pi_ref(y) = 1 / N_p).

(1) KL-regularised optimum (the closed-form RLHF policy, the RL analogue of Best-of-n):

        pi_beta(y) = pi_ref(y) exp(r(y) / beta) / Z_beta

    For a log-spaced sweep of beta, exact per-prompt E_pi[gold], E_pi[r] and KL(pi_beta || pi_ref) =
    sum_y pi log pi + log N_p, averaged over prompts, all betas and prompts in one (B, P, N_max) masked softmax.
    beta -> inf gives pi_ref (KL 0, gold = pool mean); beta -> 0 gives the argmax (KL = log N_p for a unique max);
    KL is monotone decreasing in beta. Gao et al.'s RL form R(d) = d (alpha - beta_g log d), d = sqrt(KL), is
    fitted to the gold gain by least squares (``fit_gao_rl``).

(2) A linear softmax policy over embeddings, pi_theta(y | x) = pi_ref(y) exp(phi(y)^T theta) / Z_x(theta)
    (phi = the cached embedding; theta shared by all prompts, so it generalises to held-out prompts), trained with
    Direct Preference Optimisation on labelled pairs (c preferred to r) of the TRAINING prompts:

        DPO  = mean -log sigmoid(beta [log pi_theta(c)/pi_ref(c) - log pi_theta(r)/pi_ref(r)])
        RPO  = DPO + w * mean -log pi_theta(c)           (Liu et al.: an SFT term on the chosen responses)

    The log-partition and pi_ref cancel inside a pair (both sides share the prompt), so DPO is computed as
    -log sigmoid(beta (phi_c - phi_r)^T theta) (the test checks it against the definition via full log-softmax);
    only the SFT term needs the pools' log-partitions. Adam on minibatches of pairs, torch on the CPU (one thread),
    autograd. After every epoch the policy is
    evaluated EXACTLY on held-out prompts: E_pi[gold] = sum over the pool of pi * gold, KL(pi || pi_ref), and the
    DPO loss on held-out pairs (epoch 0 = pi_ref). Direct-alignment over-optimisation (Rafailov et al. 2024) shows
    as gold rising then falling while KL keeps growing; the SFT term keeps KL lower (Liu et al.).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from embrm.core import EmbrmError, torch_threads
from embrm.data import pair_indices
from embrm.evaluation import Pools, excluded_indicator, fit_gao_rl, group_pools, pool_curves, pyplot, save_figure
from embrm.methods._composite import fit_proxy_reward
from embrm.methods._sections import MethodSummary, table
from embrm.pipeline import LabelConfig, split, training_pairs

__all__ = ["tilted_policy", "KLCurves", "kl_optimum_curves", "fit_gao_rl", "default_betas", "policy_loss",
           "PolicyRun", "train_policy", "policy_study", "plot_policy", "PolicySummary", "CurveSummary"]


# ----------------------------------------------------------------------------- (1) the KL-regularised optimum

def default_betas(points: int = 31) -> np.ndarray:
    """Log-spaced betas 1e-3 .. 1e3 (for a reward z-scored to std 1: from the argmax to nearly pi_ref)."""
    return np.geomspace(1e-3, 1e3, points)


def tilted_policy(reward_pool: np.ndarray, valid: np.ndarray, betas) -> tuple[np.ndarray, np.ndarray]:
    """pi_beta (B, P, N) over padded pools and its exact KL(pi_beta || uniform) (B, P).

    reward_pool: (P, N) rewards (padding ignored), valid: (P, N) bool, betas: (B,) > 0."""
    b = np.asarray(betas, np.float64).ravel()
    if b.size == 0 or not (np.isfinite(b).all() and (b > 0).all()):
        raise EmbrmError("betas must be finite numbers > 0 (e.g. --betas 0.01,0.1,1,10)")
    logits = np.where(valid[None], reward_pool[None] / b[:, None, None], -np.inf)
    logits -= logits.max(axis=2, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    pi = np.exp(logp)
    plogp = np.where(valid[None], pi * np.where(valid[None], logp, 0.0), 0.0)
    kl = plogp.sum(axis=2) + np.log(valid.sum(axis=1))[None]
    return pi, np.maximum(kl, 0.0)


@dataclass
class KLCurves:
    """Prompt-averaged curves of the KL-regularised optimum over ``betas`` (B,): kl, gold, proxy (B,); random
    (pool-mean gold) and oracle (pool-max gold) references; per-prompt kl (B, P) and gold (B, P)."""

    betas: np.ndarray
    kl: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray
    random: float
    oracle: float
    kl_prompt: np.ndarray
    gold_prompt: np.ndarray

    @property
    def d(self) -> np.ndarray:
        return np.sqrt(self.kl)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame({"curve": ["kl_optimum"] * len(self.betas), "param": self.betas, "kl": self.kl,
                             "d": self.d, "gold": self.gold, "proxy": self.proxy})


def kl_optimum_curves(prompt_index, reward, gold, betas=None, *, mask=None) -> KLCurves:
    """Exact curves of pi_beta(y) ~ pi_ref(y) exp(reward / beta) over every prompt's pool (rows with NaN gold or
    mask False are not in the pool)."""
    r = np.asarray(reward, np.float64)
    g = np.asarray(gold, np.float64)
    if r.shape != g.shape or r.ndim != 1:
        raise EmbrmError(f"reward and gold must be (n,) arrays of one length, got {r.shape} and {g.shape}")
    keep = np.isfinite(g) if mask is None else np.isfinite(g) & np.asarray(mask, bool)
    if not np.isfinite(r[keep]).all():
        raise EmbrmError("reward: contains NaN/inf on scored rows: pass finite rewards")
    pools = group_pools(prompt_index, keep)
    betas = default_betas() if betas is None else np.asarray(betas, np.float64)
    rp, gp = pools.gather(r), pools.gather(g)
    pi, kl = tilted_policy(rp, pools.valid, betas)
    gold_p = (pi * gp[None]).sum(axis=2)
    proxy = (pi * rp[None]).sum(axis=2).mean(axis=1)
    rand = float((gp.sum(axis=1) / pools.sizes).mean())
    orac = float(np.where(pools.valid, gp, -np.inf).max(axis=1).mean())
    return KLCurves(betas, kl.mean(axis=1), gold_p.mean(axis=1), proxy, rand, orac, kl, gold_p)


# ----------------------------------------------------------------------------- (2) DPO / RPO over embeddings

def _log_policy(theta, phi, valid):
    """log pi_theta (P, N) and log pi_theta / pi_ref (P, N) for padded features phi (P, N, d)."""
    import torch

    s = (phi @ theta).masked_fill(~valid, float("-inf"))
    logp = s - torch.logsumexp(s, dim=1, keepdim=True)
    return logp, logp + torch.log(valid.sum(dim=1, keepdim=True).to(logp.dtype))


def policy_loss(theta, phi, valid, pairs, *, beta: float, rpo_weight: float = 0.0):
    """(total, dpo, nll) torch scalars for pairs (m, 3) = (pool, chosen position, rejected position).

    DPO uses the implicit reward beta * log pi_theta / pi_ref; inside a pair log Z_x(theta) and log pi_ref cancel,
    so the margin is beta * (phi_c - phi_r)^T theta (only the pairs' features are touched). The SFT term
    nll = mean -log pi_theta(c) needs the log-partition of the pools; it is computed only when rpo_weight > 0
    (else nll is None)."""
    import torch.nn.functional as F

    p, c, r = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    dpo = F.softplus(-beta * ((phi[p, c] - phi[p, r]) @ theta)).mean()
    if rpo_weight == 0:
        return dpo, dpo, None
    nll = -_log_policy(theta, phi, valid)[0][p, c].mean()
    return dpo + rpo_weight * nll, dpo, nll


def _pair_locations(pairs: np.ndarray, pools: Pools, n_rows: int, what: str) -> np.ndarray:
    pool, pos = pools.locate(n_rows)
    p = pool[pairs[:, 0]]
    if (p < 0).any() or (pool[pairs[:, 1]] != p).any():
        raise EmbrmError(f"{what}: a pair's responses are not in one pool of these prompts: label pairs within "
                         f"the prompts' scored pools (simulate_pairs with prompt_ids=..., within_prompt=True)")
    return np.stack([p, pos[pairs[:, 0]], pos[pairs[:, 1]]], axis=1)


@dataclass
class PolicyRun:
    """A trained linear softmax policy: theta (d,) and its per-epoch history (epoch 0 = pi_ref) with columns
    epoch, loss and dpo_loss (training pairs, mean over the epoch's steps), nll (chosen responses' NLL at the end
    of the epoch), heldout_dpo_loss, pair_accuracy (held-out pairs ranked by the implicit reward), gold, kl, d."""

    theta: np.ndarray
    history: pl.DataFrame


def train_policy(X, train_pools: Pools, train_pairs, eval_pools: Pools, gold, *, eval_pairs=None,
                 beta: float = 0.1, rpo_weight: float = 0.0, epochs: int = 30, lr: float = 0.05,
                 batch_size: int = 1024, seed: int = 0) -> PolicyRun:
    """Train pi_theta with DPO (rpo_weight = 0) or RPO on ``train_pairs`` ((m, 2) row indices, column 0
    preferred, within ``train_pools``); evaluate it exactly on ``eval_pools`` after every epoch."""
    import torch

    if not (beta > 0 and rpo_weight >= 0 and epochs >= 1 and lr > 0 and batch_size >= 1):
        raise EmbrmError(f"policy training needs beta > 0, rpo_weight >= 0, epochs >= 1, lr > 0, batch_size >= 1 "
                         f"(got beta={beta}, rpo_weight={rpo_weight}, epochs={epochs}, lr={lr}, "
                         f"batch_size={batch_size})")
    X = np.asarray(X, np.float32)
    g = np.asarray(gold, np.float64)
    tp = torch.from_numpy(_pair_locations(np.asarray(train_pairs), train_pools, len(X), "training pairs"))
    ep = None if eval_pairs is None or len(eval_pairs) == 0 else torch.from_numpy(
        _pair_locations(np.asarray(eval_pairs), eval_pools, len(X), "held-out pairs"))
    phi, valid = torch.from_numpy(X[train_pools.rows]), torch.from_numpy(train_pools.valid)
    phi_e, valid_e = torch.from_numpy(X[eval_pools.rows]), torch.from_numpy(eval_pools.valid)
    gold_e = torch.from_numpy(eval_pools.gather(g))
    theta = torch.zeros(X.shape[1], dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    with torch_threads(1):  # tiny ops: one thread beats the pool's synchronisation ~100x on a busy machine
        for epoch in range(epochs + 1):  # epoch 0: the untrained policy (pi_ref)
            loss, dpo = (_train_epoch(theta, opt, phi, valid, tp, gen, beta, rpo_weight, batch_size) if epoch
                         else (float("nan"), float("nan")))
            rows.append({"epoch": epoch, "loss": loss, "dpo_loss": dpo, "nll": _chosen_nll(theta, phi, valid, tp)}
                        | _evaluate(theta, phi_e, valid_e, gold_e, ep, beta))
    cols = ["epoch", "loss", "dpo_loss", "nll", "heldout_dpo_loss", "pair_accuracy", "gold", "kl", "d"]
    hist = pl.DataFrame([{c: r.get(c, float("nan")) for c in cols} for r in rows],
                        schema_overrides={c: pl.Float64 for c in cols[1:]})
    return PolicyRun(theta.detach().numpy().copy(), hist)


def _train_epoch(theta, opt, phi, valid, pairs, gen, beta: float, rpo_weight: float,
                 batch_size: int) -> tuple[float, float]:
    """One shuffled pass over the training pairs; returns the pair-weighted mean (total loss, DPO loss)."""
    import torch

    sums = torch.zeros(2)
    for batch in torch.randperm(len(pairs), generator=gen).split(batch_size):
        total, dpo, _ = policy_loss(theta, phi, valid, pairs[batch], beta=beta, rpo_weight=rpo_weight)
        opt.zero_grad()
        total.backward()
        opt.step()
        sums += torch.stack([total, dpo]).detach() * len(batch)
    loss, dpo = (sums / len(pairs)).tolist()
    return loss, dpo


def _chosen_nll(theta, phi, valid, pairs) -> float:
    """Mean -log pi_theta(chosen) over the training pairs (the SFT loss; DPO is known to let it grow)."""
    import torch

    with torch.no_grad():
        return float(-_log_policy(theta, phi, valid)[0][pairs[:, 0], pairs[:, 1]].mean())


def _evaluate(theta, phi, valid, gold, pairs, beta: float) -> dict:
    """Exact held-out E_pi[gold], KL(pi || pi_ref) (prompt means), and held-out DPO loss / pair accuracy."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logp, ratio = _log_policy(theta, phi, valid)
        pi = logp.exp()
        kl = torch.where(valid, pi * ratio, torch.zeros((), dtype=pi.dtype)).sum(dim=1).clamp_min(0).mean()
        out = {"gold": float((pi.double() * gold).sum(dim=1).mean()), "kl": float(kl), "d": float(kl.sqrt())}
        if pairs is not None:
            m = ratio[pairs[:, 0], pairs[:, 1]] - ratio[pairs[:, 0], pairs[:, 2]]
            out["heldout_dpo_loss"] = float(F.softplus(-beta * m).mean())
            out["pair_accuracy"] = float(((m > 0).float() + 0.5 * (m == 0).float()).mean())
    return out


# ----------------------------------------------------------------------------- the real-data study

@dataclass(frozen=True)
class CurveSummary:
    """One held-out curve (kl_optimum: the beta sweep; bon: Best-of-n on the proxy; dpo / rpo: per epoch): its peak
    gold, where (beta | n | epoch) and at which KL, its end (largest KL of a sweep, last epoch) and the drop from the
    peak; dpo / rpo also their final held-out DPO loss and pair accuracy; kl_optimum / bon, when the pools keep
    excluded responses, the share of excluded picks at the end."""

    name: str
    peak_gold: float
    peak_at: float
    peak_kl: float
    end_gold: float
    end_kl: float
    drop_from_peak: float
    final_heldout_dpo_loss: float | None = None
    final_pair_accuracy: float | None = None
    excluded_pick_rate: float | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("peak_gold", "peak_at", "peak_kl", "end_gold", "end_kl", "drop_from_peak")}
        if self.final_heldout_dpo_loss is not None:
            d.update(final_heldout_dpo_loss=self.final_heldout_dpo_loss, final_pair_accuracy=self.final_pair_accuracy)
        return d


EXCLUDED_AT = {"kl_optimum": "largest KL", "bon": "n = N"}  # where each curve's excluded pick rate is read


@dataclass(frozen=True)
class PolicySummary(MethodSummary):
    """The policy study on held-out prompts: the curves (kl_optimum, bon[, dpo, rpo]) with the Gao RL fit of the KL
    optimum, the random / oracle references, and the settings."""

    dataset: str
    seed: int
    n_train_prompts: int
    n_test_prompts: int
    n_pairs: int
    label_beta: float
    random: float
    oracle: float
    curves: tuple[CurveSummary, ...]
    gao_rl_alpha: float
    gao_rl_beta: float
    evaluated_on: str
    dpo_beta: float | None = None  # the DPO / RPO settings, when they were trained
    rpo_weight: float | None = None
    epochs: int | None = None
    with_excluded: bool = False

    def curve(self, name: str) -> CurveSummary | None:
        return next((c for c in self.curves if c.name == name), None)

    def excluded_picks(self) -> list[tuple[str, float]]:
        return [(f"{c.name} ({EXCLUDED_AT[c.name]})", c.excluded_pick_rate) for c in self.curves
                if c.excluded_pick_rate is not None]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("dataset", "seed", "n_train_prompts", "n_test_prompts", "n_pairs",
                                            "label_beta", "random", "oracle")}
        d["kl_optimum"] = self.curve("kl_optimum").to_dict() | {"gao_rl_alpha": self.gao_rl_alpha,
                                                                "gao_rl_beta": self.gao_rl_beta}
        d["bon"] = self.curve("bon").to_dict()
        d["evaluated_on"] = self.evaluated_on
        if self.epochs is not None:
            d.update(dpo_beta=self.dpo_beta, rpo_weight=self.rpo_weight, epochs=self.epochs)
            d.update({c.name: c.to_dict() for c in self.curves if c.name in ("dpo", "rpo")})
        if self.excluded_picks():
            d["excluded_pick_rate"] = dict(self.excluded_picks())
        return d | {"with_excluded": self.with_excluded}

    def markdown(self) -> str:
        rows = [[c.name, c.peak_gold, f"{c.peak_at:g}", c.peak_kl, c.end_gold, c.end_kl, c.drop_from_peak]
                for c in self.curves]
        trained = "" if self.epochs is None else (f"; DPO beta {self.dpo_beta:g}, RPO weight {self.rpo_weight:g}, "
                                                   f"{self.epochs} epochs")
        return (f"{self.dataset}: held-out expected gold (random {self.random:.3f}, oracle {self.oracle:.3f}); proxy "
                f"and policies trained on {self.n_pairs} pairs of {self.n_train_prompts} training prompts (BT beta "
                f"{self.label_beta:g}){trained}.\n\n"
                + table(["curve", "peak gold", "at (beta | n | epoch)", "KL at peak", "gold at end", "KL at end",
                         "drop from peak"], rows)
                + f"\n\nGao RL fit of the KL optimum, R(d) = d (a - b log d): a = {self.gao_rl_alpha:.3f}, "
                  f"b = {self.gao_rl_beta:.3f}.")


def policy_study(ds, X, *, seed: int = 0, betas=None, dpo: bool = True, rpo_weight: float = 0.01,
                 epochs: int = 30, dpo_beta: float = 0.1, lr: float = 0.05, batch_size: int = 1024,
                 n_pairs: int = 10_000, label_beta: float = 1.0, k: int = 5,
                 test_size: float = 0.2) -> tuple[PolicySummary, pl.DataFrame]:
    """Policy-side over-optimisation on a pool with gold. Pairs are simulated on TRAINING prompts (BT annotator
    ``label_beta``); the proxy r is a linear BT ensemble mean fitted on them (z-scored on training rows). On
    HELD-OUT prompts: the KL-optimum sweep over ``betas`` with the Gao RL fit, Best-of-n on the same proxy for
    reference (KL = log n - (n-1)/n; embrm.evaluation.pool_curves), and (``dpo``) DPO and RPO (``rpo_weight``)
    trajectories per epoch. Returns (PolicySummary, tidy frame: curve, param (beta | n | epoch), kl, d, gold, proxy,
    losses)."""
    if not ds.has_gold:
        raise EmbrmError(f"{ds.name}: no gold scores: the policy study needs a pool with a gold column")
    labels = LabelConfig("simulated", label_beta, None, n_pairs)
    parts = split(ds, labels, test_size, seed)
    train_ids, test_ids = parts.train, parts.test
    pid = ds.responses["prompt_id"].cast(pl.Utf8)
    gold = ds.responses["gold"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    train = pid.is_in(pl.Series(train_ids).implode()).to_numpy() & np.isfinite(gold)
    test = pid.is_in(pl.Series(test_ids).implode()).to_numpy() & np.isfinite(gold)
    reward, pairs = fit_proxy_reward(ds, X, train_ids, n_pairs=n_pairs, beta=label_beta, k=k, seed=seed)
    reward = (reward - reward[train].mean()) / max(float(reward[train].std()), 1e-12)
    kc = kl_optimum_curves(pid.to_numpy(), reward, gold, betas, mask=test)
    alpha, beta_g = fit_gao_rl(kc.d, kc.gold - kc.random)
    bc = pool_curves(ds.responses, reward, test, gold=gold, dtype=np.float64)
    n_all = int((bc.n_prompts == len(bc.prompts)).sum())  # n up to the smallest held-out pool: every prompt
    bon = pl.DataFrame({"curve": "bon", "param": bc.n[:n_all].astype(np.float64), "kl": bc.kl[:n_all],
                        "d": bc.d[:n_all], "gold": bc.gold[0, :n_all], "proxy": bc.proxy[0, :n_all]})
    frames = [kc.frame(), bon]
    curves = [_curve_summary("kl_optimum", kc.frame(), int(np.argmax(kc.kl))), _curve_summary("bon", bon, n_all - 1)]
    trained = {}
    if dpo:
        trained = {"dpo_beta": dpo_beta, "rpo_weight": rpo_weight, "epochs": epochs}
        test_pairs = training_pairs(ds, LabelConfig("simulated", label_beta, None, max(n_pairs // 4, 20)), test_ids,
                                    seed + 1)
        tr_pools, te_pools = group_pools(pid.to_numpy(), train), group_pools(pid.to_numpy(), test)
        for name, w in (("dpo", 0.0), ("rpo", rpo_weight)):
            run = train_policy(X, tr_pools, pair_indices(pairs, ds.responses), te_pools, gold,
                               eval_pairs=pair_indices(test_pairs, ds.responses), beta=dpo_beta, rpo_weight=w,
                               epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
            h = run.history
            frames.append(h.select(pl.lit(name).alias("curve"), pl.col("epoch").cast(pl.Float64).alias("param"),
                                   "kl", "d", "gold", "loss", "dpo_loss", "nll", "heldout_dpo_loss",
                                   "pair_accuracy"))
            curves.append(_curve_summary(name, h.rename({"epoch": "param"}), h.height - 1,
                                         final_heldout_dpo_loss=float(h["heldout_dpo_loss"][-1]),
                                         final_pair_accuracy=float(h["pair_accuracy"][-1])))
    if ds.excluded.any():  # expected share of excluded picks: the same policies, scored by the exclusion flag
        flag = excluded_indicator(gold, ds.excluded)
        kx = kl_optimum_curves(pid.to_numpy(), reward, flag, betas, mask=test)
        bx = pool_curves(ds.responses, reward, test, gold=flag, dtype=np.float64)
        shares = {"kl_optimum": float(kx.gold[int(np.argmax(kx.kl))]), "bon": float(bx.gold[0, n_all - 1])}
        curves = [replace(c, excluded_pick_rate=shares.get(c.name)) for c in curves]
    summary = PolicySummary(ds.name, seed, len(train_ids), len(test_ids), len(pairs), label_beta, kc.random, kc.oracle,
                            tuple(curves), alpha, beta_g,
                            "held-out prompts (proxy and policy trained on training prompts)", **trained)
    return summary, pl.concat(frames, how="diagonal_relaxed")


def _curve_summary(name: str, frame: pl.DataFrame, end: int, **extra) -> CurveSummary:
    """Peak gold (where: param, KL) and the curve's end (row ``end``: largest KL of a sweep, last epoch)."""
    g = frame["gold"].to_numpy()
    i = int(np.nanargmax(g))
    return CurveSummary(name, float(g[i]), float(frame["param"][i]), float(frame["kl"][i]), float(g[end]),
                        float(frame["kl"][end]), float(g[i] - g[end]), **extra)


def plot_policy(frame: pl.DataFrame, path, *, gao_rl: tuple[float, float] | None = None, title: str | None = None):
    """PNG: held-out gold vs KL for the KL-optimum sweep (with Gao's RL fit, gold gain shifted by the pool mean),
    Best-of-n and the DPO / RPO training trajectories; and KL per epoch of DPO / RPO. Returns the written path."""
    plt = pyplot()

    fig, (ax_g, ax_k) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    curves = list(dict.fromkeys(frame["curve"].to_list()))
    for curve in curves:
        training = curve in ("dpo", "rpo")
        sub = frame.filter(pl.col("curve") == curve).sort("param" if training else "kl")  # trajectories by epoch
        ax_g.plot(sub["kl"], sub["gold"], marker="o" if training else None, ms=3, lw=1.6, label=curve)
        if training:
            ax_k.plot(sub["param"], sub["kl"], marker="o", ms=3, label=f"{curve} KL")
    if gao_rl is not None and "kl_optimum" in curves:
        sub = frame.filter(pl.col("curve") == "kl_optimum").sort("kl")
        base = float(sub["gold"][0])
        d = np.linspace(1e-3, float(sub["d"].max()), 200)
        ax_g.plot(d * d, base + d * (gao_rl[0] - gao_rl[1] * np.log(d)), ls="--", color="0.4", lw=1,
                  label=f"Gao RL fit a={gao_rl[0]:.2f}, b={gao_rl[1]:.2f}")
    ax_g.set(xlabel="KL(pi || pi_ref) [nats]", ylabel="held-out expected gold", title="Gold vs KL")
    ax_k.set(xlabel="epoch", ylabel="KL(pi_theta || pi_ref)", title="Direct alignment: KL per epoch")
    for ax in (ax_g, ax_k):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Policy-side over-optimisation on candidate pools")
    return save_figure(fig, path, dpi=110)
