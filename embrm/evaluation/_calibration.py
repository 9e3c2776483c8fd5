"""Calibration of pairwise preference probabilities, over margins m = r_chosen - r_rejected (column 0 = preferred).

The Bradley-Terry probability that a pair's label holds is p = sigmoid(m / T) (T = 1: the reward as trained).

    reliability(margins, n_bins, temperature)   ECE, MCE, Brier, log-loss and the per-bin reliability table
    fit_temperature(margins)                    temperature scaling: T = argmin mean softplus(-m / T)
    cross_fitted_temperature(margins, groups)   every pair's margin divided by a T fitted on other prompts only
    plot_reliability({name: Reliability}, path) the reliability diagram (PNG)

Reliability reads a pair as a binary prediction: predicted winner = the higher-scored side, confidence =
max(p, 1 - p), correct = the predicted winner is the labelled one (ties: confidence 0.5, correct 0.5). With B
equal-width bins over confidence in [0.5, 1], n_b pairs, mean confidence conf_b and accuracy acc_b in bin b:
ECE = sum_b (n_b / n) |acc_b - conf_b| and MCE = max over non-empty bins |acc_b - conf_b| (Guo, Pleiss, Sun &
Weinberger 2017, "On Calibration of Modern Neural Networks"; Naeini, Cooper & Hauskrecht 2015). Brier = mean
(1 - p)^2 (Brier 1950), log-loss = mean softplus(-m / T); both are the same in the predicted-winner view.

Temperature scaling (Guo et al. 2017) fits one T > 0 by maximum likelihood on held-out labelled pairs; it keeps
every ranking (and pairwise accuracy) and changes only how confident the probabilities are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embrm.core import EmbrmError
from embrm.evaluation._plots import pyplot, save_figure

LOG_T_BOUNDS = (-7.0, 7.0)  # T in [e^-7, e^7] ~ [0.001, 1100]: wider than any useful reward scale


@dataclass
class Reliability:
    """Calibration of sigmoid(margin / temperature) on labelled pairs; per-bin lists are JSON-able (empty bins:
    count 0, confidence and accuracy None)."""

    n_pairs: int
    ece: float
    mce: float
    brier: float
    log_loss: float
    temperature: float  # 1.0 = the reward as trained (uncalibrated)
    bin_confidence: list[float | None]
    bin_accuracy: list[float | None]
    bin_count: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def _margins(margins, *, finite: bool = False) -> np.ndarray:
    m = np.asarray(margins, dtype=np.float64)
    if m.ndim != 1 or m.size == 0:
        raise EmbrmError(f"margins must be a non-empty 1-D array (one r_chosen - r_rejected per labelled pair); "
                         f"got shape {m.shape}: need at least one pair")
    bad = np.isnan(m) if not finite else ~np.isfinite(m)
    if bad.any():
        raise EmbrmError(f"margins hold {int(bad.sum())} {'NaN' if not finite else 'non-finite'} values (first: "
                         f"pair {int(np.flatnonzero(bad)[0])}): drop pairs whose scores are not finite")
    return m


def _temperature(temperature) -> float:
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise EmbrmError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def reliability(margins, n_bins: int = 10, temperature: float = 1.0) -> Reliability:
    """Reliability of p = sigmoid(margin / temperature) in the predicted-winner view (see the module doc); the one
    implementation behind ``embrm.evaluation.expected_calibration_error``. ±inf margins count as certain."""
    from scipy.special import expit

    if int(n_bins) != n_bins or n_bins < 1:
        raise EmbrmError(f"n_bins must be a positive integer, got {n_bins}")
    n_bins = int(n_bins)
    t = _temperature(temperature)
    z = _margins(margins) / t
    conf = 1.0 / (1.0 + np.exp(-np.abs(z)))
    correct = (z > 0) + 0.5 * (z == 0)
    b = np.minimum(((conf - 0.5) * 2 * n_bins).astype(np.int64), n_bins - 1)
    acc = np.bincount(b, correct, n_bins)
    cf = np.bincount(b, conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    full = count > 0
    mean_acc = np.divide(acc, count, out=np.full(n_bins, np.nan), where=full)
    mean_conf = np.divide(cf, count, out=np.full(n_bins, np.nan), where=full)
    return Reliability(
        n_pairs=len(z), ece=float(np.abs(acc - cf).sum() / len(z)),
        mce=float(np.max(np.abs(mean_acc - mean_conf)[full])),
        brier=float(np.mean(expit(-z) ** 2)), log_loss=float(np.mean(np.logaddexp(0.0, -z))), temperature=t,
        bin_confidence=_listed(mean_conf), bin_accuracy=_listed(mean_acc), bin_count=count.tolist())


def pooled_reliability(parts: list[dict]) -> Reliability:
    """Several runs' reliability (Reliability.to_dict() of the same bins, e.g. one per seed) as one: bins pooled by
    count, ECE and MCE recomputed from the pooled bins, Brier and log-loss weighted by pairs."""
    count = np.sum([p["bin_count"] for p in parts], axis=0).astype(np.float64)
    weighted = {key: np.sum([np.nan_to_num(np.array(p[key], dtype=np.float64)) * p["bin_count"] for p in parts], 0)
                for key in ("bin_confidence", "bin_accuracy")}
    full = count > 0
    conf, acc = (np.divide(weighted[k], count, out=np.full(len(count), np.nan), where=full)
                 for k in ("bin_confidence", "bin_accuracy"))
    n = int(count.sum())
    pairs = np.array([p["n_pairs"] for p in parts], np.float64)
    return Reliability(
        n_pairs=n, ece=float(np.abs(weighted["bin_accuracy"] - weighted["bin_confidence"]).sum() / n),
        mce=float(np.max(np.abs(acc - conf)[full])),
        brier=float(np.average([p["brier"] for p in parts], weights=pairs)),
        log_loss=float(np.average([p["log_loss"] for p in parts], weights=pairs)), temperature=1.0,
        bin_confidence=_listed(conf), bin_accuracy=_listed(acc), bin_count=count.astype(np.int64).tolist())


def _listed(values: np.ndarray) -> list[float | None]:
    """JSON-able per-bin values: None for an empty bin (NaN)."""
    return [None if v != v else v for v in values.tolist()]


def fit_temperature(margins) -> float:
    """Temperature scaling (Guo et al. 2017): T = argmin_T mean softplus(-m / T), searched on log T in
    [-7, 7] (bounded Brent). All-zero margins carry no information: T = 1. Separable margins (all > 0) give the
    smallest T allowed, as maximum likelihood does."""
    from scipy.optimize import minimize_scalar

    m = _margins(margins, finite=True)
    if not m.any():
        return 1.0
    res = minimize_scalar(lambda lt: np.mean(np.logaddexp(0.0, -m * np.exp(-lt))), bounds=LOG_T_BOUNDS,
                          method="bounded", options={"xatol": 1e-8})
    return float(np.exp(res.x))


def cross_fitted_temperature(margins, groups, folds: int = 2, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Calibrated margins m / T without a pair calibrating itself: prompts (groups, one per pair) are split into
    ``folds`` random folds (seeded; at most one fold per prompt) and each pair's margin is divided by the T fitted
    on the OTHER folds' pairs. Returns (calibrated margins (m,), the T of each fold)."""
    m = _margins(margins, finite=True)
    g = np.asarray(groups)
    if g.shape != m.shape:
        raise EmbrmError(f"groups must hold one prompt id per pair: got shape {g.shape} for {len(m)} margins")
    if int(folds) != folds or folds < 2:
        raise EmbrmError(f"folds must be an integer >= 2, got {folds}")
    _, code = np.unique(g, return_inverse=True)
    code = code.ravel()
    n_groups = int(code.max()) + 1
    if n_groups < 2:
        raise EmbrmError("temperature scaling needs held-out pairs on at least 2 prompts: got pairs on 1 prompt; "
                         "pass pairs from more prompts")
    folds = min(int(folds), n_groups)
    fold_of = np.empty(n_groups, dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(n_groups)] = np.arange(n_groups) % folds
    fold = fold_of[code]
    temps = [fit_temperature(m[fold != f]) for f in range(folds)]
    return m / np.asarray(temps)[fold], temps


def plot_reliability(curves: dict[str, Reliability], path, title: str | None = None) -> Path:
    """Reliability diagram: per name, bin accuracy vs bin mean confidence (non-empty bins), with the diagonal of
    perfect calibration; the legend gives each curve's ECE. Returns the written PNG path."""
    if not curves or not all(isinstance(r, Reliability) for r in curves.values()):
        raise EmbrmError("plot_reliability: pass a non-empty {name: Reliability} dict (from reliability(...))")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0.5, 1.0], [0.5, 1.0], ls="--", color="grey", label="perfectly calibrated")
    for name, r in curves.items():
        pts = [(c, a) for c, a in zip(r.bin_confidence, r.bin_accuracy) if c is not None]
        ax.plot([c for c, _ in pts], [a for _, a in pts], marker="o", label=f"{name} (ECE {r.ece:.3f})")
    ax.set(xlim=(0.5, 1.0), ylim=(0.0, 1.02), xlabel="mean confidence of the predicted winner",
           ylabel="accuracy (predicted winner is the labelled one)", title=title or "Reliability diagram")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)
