"""A learned over-optimisation setting: Gao et al. (2022) in miniature, with reward members FITTED by embrm.

embrm.data._synthetic hands its proxy members their scores. Here there are no member scores at all: the generator only
makes candidate pools over an embedding space and a known gold reward; the proxies are whatever embrm fits on a
limited number of simulated preference labels drawn from that gold, exactly as on real data
(``embrm.run_experiment(ds, X, Protocol(...))``). Best-of-n with large n on the fitted ensemble then shows whether
the gold of the pick peaks and falls (over-optimisation) and whether conservative aggregations (min, uwo, lcb) or
WARM resist it (Coste et al. 2023).

    ds, X = overopt_dataset(n_prompts=100, n_candidates=2000, dim=32, seed=0)
    truth = overopt_truth(n_prompts=100, n_candidates=2000, dim=32, seed=0)   # u, v, a, b, t, ...: no data made
    result = embrm.run_experiment(ds, X, Protocol(Learner("mlp"), LabelConfig(n_pairs=1000)))

Model (``x`` is a candidate's embedding, float32, dimension ``dim``):

    x    = mu_p + eps                         eps ~ N(0, I_dim) per candidate: the base policy's samples
    mu_p = prompt_spread * P_perp z_p + prompt_hack_spread * zeta_p v
                                              z_p ~ N(0, I_dim), zeta_p ~ N(0, 1) per prompt; P_perp = I - v v^T
    s(x) = u . x                              quality (unit u)
    h(x) = v . x                              the "hackable" feature (unit v orthogonal to u; think length)
    f(x) = sqrt(2 / F) sum_j c_j cos(w_j . x + b_j)       a smooth nonlinear part (random Fourier features:
                                              w_j ~ N(0, I / dim), b_j ~ U(0, 2 pi), c_j ~ N(0, 1), F = n_features)
    gold = s + hack * h - hack_penalty * relu(h - threshold)^2 + nonlinear * f

Along v the gold rises with slope ``hack`` up to ``threshold`` and then bends down: at fixed everything else its
maximum over h is at ``peak_h = threshold + hack / (2 hack_penalty)`` (``OveroptTruth.peak_h``), and past
``threshold + hack / hack_penalty`` a candidate is worse than one at the threshold.

Constants (defaults) and why (calibrated with benchmarks/overopt_calibration.py; none is fitted to real data):
    dim = 32              a small embedding: labels in the hundreds to thousands are then "limited" but enough for a
                          linear head to find the rising directions (dim / n_pairs between 0.13 and 0.008).
    hack = 2.0            at the base policy the hackable feature pays twice what quality pays (as length often
                          does for judges): a proxy fitted there leans mostly on v. With hack = 1 the fitted heads
                          shrink their v weight enough (w.v / w.u ~ 0.75) that their picks stay near the peak up to
                          n = 2,000 and the mean's curve does not fall (measured; see the calibration).
    threshold = 2.0       the base policy's h ~ N(0, 1 + prompt_hack_spread^2) (sd 1.03): P(h > 2) = 2.6 % of the
                          candidates the labels are drawn from (``OveroptTruth.base_fraction_past_threshold``),
                          P(h > 2.5) = 0.8 %, P(h > 3) = 0.2 %: the labels see almost only the rising part.
    hack_penalty = 4.0    the fall: the gold along v peaks at peak_h = 2.25 and returns to its threshold value at
                          h = 2.5. The best linear fit's slope on h at the base policy is
                          hack - 2 hack_penalty E[relu(h - t)] = 2 - 8 * 0.0103 = 1.92: still "more h is better".
                          The ideal proxy (u + hack v) . x picks, at Best-of-n, about sqrt(2 ln n) standard deviations
                          out along (u + 2 v) / sqrt(5), i.e. h ~ 0.89 sqrt(2 ln n); its expected gold gain
                          (``ideal_proxy_curve``) is 3.25 at n = 10, peaks at 4.32 near n = 100 and falls to 2.86 at
                          n = 1,000, 1.95 at 2,000 and -0.81 at 10^4.
    nonlinear = 0.5       a smooth part no linear head can fit (sd of nonlinear * f ~ 0.35): misspecification, so
                          linear and MLP heads differ in more than capacity. n_features = 32.
    prompt_spread = 1.0   prompts differ (their means) in every direction but v,
    prompt_hack_spread = 0.25   and a little along v, so no prompt starts far past the threshold.
Measured with these defaults (benchmarks/results/overopt_calibration.json: 100 prompts x 2,000 candidates, 20 %
held out, BT(beta = 10) labels, 3 seeds): the mean ensemble's gold curve peaks near n = 90 and falls by ~2 by
n = 2,000, for linear and MLP heads alike (1,000 labels, K = 5).

Why this over-optimises WITHOUT hand-made member scores: the labels are drawn from the base policy, where the gold's
slope along v is positive for almost every candidate, so any head fitted to them learns "more h is better" (the
best linear fit's slope on h is hack - 2 hack_penalty E[relu(h - t)] ~ 1.92 here). Best-of-n with
large n searches the tail of the proxy, i.e. the tail of h, where the labels had almost no data and the gold turns
down: the proxy keeps rising while the gold of its pick peaks and falls. The members disagree only through their
fitting noise (their own label subsets, seeds, initialisations), which is what a conservative aggregation can use;
whether it helps is the experiment, not something built in.

Everything is seeded (numpy PCG64 from ``seed``) and deterministic; generation is vectorised in row chunks (peak
memory ~ the outputs: n * dim * 4 bytes of embeddings). The Dataset has placeholder texts of CONSTANT length per
table (so the length ruler ties everywhere and the length-controlled gold is skipped with its reason), rows grouped
by prompt in prompt order, and an extra ``candidate`` Int32 column (index within the prompt's pool).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from embrm.core import SEED, EmbrmError, Integer, Number, check_size, check_value
from embrm.data._dataset import Dataset

__all__ = ["OveroptTruth", "PARAMS", "ideal_proxy_curve", "overopt_dataset", "overopt_truth"]

CHUNK_ROWS = 1 << 16
MAX_CELLS = 1 << 30  # embedding floats of one generated dataset (4 GB of float32): beyond that, refuse
ROW_BYTES = 160  # a response's row in the table (ids and placeholder texts) while it is built
# Every parameter's rule, checked by overopt_dataset, overopt_truth and a declaration's `params`. The constants'
# bounds keep the gold finite in float32 and far beyond any calibrated setting (module docstring).
PARAMS = {
    "n_prompts": Integer(2, 10_000_000), "n_candidates": Integer(2, 1_000_000), "dim": Integer(2, 65_536),
    "seed": SEED, "hack": Number(-100, 100), "hack_penalty": Number(0, 100), "threshold": Number(-100, 100),
    "nonlinear": Number(0, 100), "n_features": Integer(1, 4096), "prompt_spread": Number(0, 100),
    "prompt_hack_spread": Number(0, 100), "chunk_rows": Integer(1, 1 << 24),
}

@dataclass(frozen=True, eq=False)
class OveroptTruth:
    """The known gold of an overopt dataset: directions, constants, and the derived facts reports state."""

    dim: int
    seed: int
    n_prompts: int
    n_candidates: int
    hack: float
    hack_penalty: float
    threshold: float
    nonlinear: float
    n_features: int
    prompt_spread: float
    prompt_hack_spread: float
    u: np.ndarray  # (dim,) float64 unit quality direction
    v: np.ndarray  # (dim,) float64 unit hackable direction, orthogonal to u
    wf: np.ndarray  # (dim, F) Fourier frequencies
    bf: np.ndarray  # (F,) phases
    cf: np.ndarray  # (F,) amplitudes
    mu: np.ndarray  # (n_prompts, dim) float32: each prompt's base-policy mean (the reference policy N(mu_p, I))

    @property
    def peak_h(self) -> float:
        """h = v . x where the gold's slope along v is zero: threshold + hack / (2 hack_penalty)."""
        return self.threshold + self.hack / (2.0 * self.hack_penalty) if self.hack_penalty > 0 else float("inf")

    @property
    def base_fraction_past_threshold(self) -> float:
        """P(h > threshold) for a base-policy candidate of a random prompt: h ~ N(0, 1 + prompt_hack_spread^2)."""
        from scipy.special import ndtr

        return float(1.0 - ndtr(self.threshold / np.sqrt(1.0 + self.prompt_hack_spread ** 2)))

    def parts(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """s, h and f (the nonlinear part, unscaled) of embeddings X (n, dim), float64."""
        X = np.asarray(X)
        z = X @ np.column_stack([self.u, self.v, self.wf]).astype(X.dtype)
        f = np.cos(z[:, 2:].astype(np.float64) + self.bf) @ self.cf * np.sqrt(2.0 / self.n_features)
        return {"s": z[:, 0].astype(np.float64), "h": z[:, 1].astype(np.float64), "f": f}

    def gold_of(self, s, h, f=0.0) -> np.ndarray:
        """The gold as a function of its parts."""
        h = np.asarray(h, np.float64)
        return (np.asarray(s, np.float64) + self.hack * h
                - self.hack_penalty * np.square(np.maximum(h - self.threshold, 0.0)) + self.nonlinear * f)

    def gold(self, X: np.ndarray) -> np.ndarray:
        """(n,) float64 gold of embeddings X (recomputed; equals the table's gold up to float32 rounding)."""
        p = self.parts(X)
        return self.gold_of(p["s"], p["h"], p["f"])

    def prompt_ids(self) -> list[str]:
        """The prompt ids of the dataset, in generation order (row p of ``mu``)."""
        width = len(str(self.n_prompts - 1))
        return [f"p{i:0{width}d}" for i in range(self.n_prompts)]

    def means_of(self, prompt_ids) -> np.ndarray:
        """(len(prompt_ids), dim) base-policy means of these prompts (ids of this dataset)."""
        index = {p: i for i, p in enumerate(self.prompt_ids())}
        try:
            return self.mu[[index[str(p)] for p in prompt_ids]]
        except KeyError as e:
            raise EmbrmError(f"prompt {e.args[0]!r} is not one of this generated dataset's prompts") from None

    def to_dict(self) -> dict:
        """JSON-able constants and derived facts (the directions as lists)."""
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()
             if k not in ("wf", "bf", "cf", "mu")}
        d.update(peak_h=self.peak_h, base_fraction_past_threshold=self.base_fraction_past_threshold)
        return d

    def describe(self) -> str:
        return (f"gold = u.x + {self.hack:g} v.x - {self.hack_penalty:g} relu(v.x - {self.threshold:g})^2 + "
                f"{self.nonlinear:g} f(x)  (dim {self.dim}, peak along v at {self.peak_h:g}, "
                f"{100 * self.base_fraction_past_threshold:.1f} % of base candidates past the threshold)")


def _structure(dim: int, n_features: int, rng: np.random.Generator):
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u, v = q[:, 0].copy(), q[:, 1].copy()
    wf = rng.standard_normal((dim, n_features)) / np.sqrt(dim)
    bf = rng.uniform(0.0, 2.0 * np.pi, n_features)
    cf = rng.standard_normal(n_features)
    return u, v, wf, bf, cf


def overopt_dataset(n_prompts: int = 100, n_candidates: int = 2000, dim: int = 32, seed: int = 0, *,
                    hack: float = 2.0, hack_penalty: float = 4.0, threshold: float = 2.0, nonlinear: float = 0.5,
                    n_features: int = 32, prompt_spread: float = 1.0, prompt_hack_spread: float = 0.25,
                    chunk_rows: int = CHUNK_ROWS) -> tuple[Dataset, np.ndarray]:
    """``n_prompts`` pools of ``n_candidates`` candidates with the known gold of the module docstring.

    Returns (Dataset, X): a pool Dataset (columns prompt_id, response_id, prompt, response, gold, scored, excluded,
    candidate; rows grouped by prompt) and float32 embeddings X (n, dim) aligned row for row. The truth
    (``OveroptTruth``) is ``overopt_truth`` of the same arguments; the dataset's ``source`` states the gold in words.
    ``seed`` fixes everything: the same arguments give identical data."""
    truth, rng = _truth_and_rng(n_prompts, n_candidates, dim, seed, hack, hack_penalty, threshold, nonlinear,
                                n_features, prompt_spread, prompt_hack_spread, chunk_rows)
    n_prompts, n_candidates, dim, mu = truth.n_prompts, truth.n_candidates, truth.dim, truth.mu
    n = n_prompts * n_candidates
    prompt_index = np.repeat(np.arange(n_prompts, dtype=np.int64), n_candidates)
    X = np.empty((n, dim), np.float32)
    gold = np.empty(n, np.float64)
    noise = np.random.default_rng(rng.integers(0, 2 ** 63))
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        x = noise.standard_normal((hi - lo, dim), dtype=np.float32)
        x += mu[prompt_index[lo:hi]]
        X[lo:hi] = x
        p = truth.parts(x)
        gold[lo:hi] = truth.gold_of(p["s"], p["h"], p["f"])

    width, cwidth = len(str(n_prompts - 1)), len(str(n_candidates - 1))
    cand = np.tile(np.arange(n_candidates, dtype=np.int32), n_prompts)
    pids = pl.Series([f"p{i:0{width}d}" for i in range(n_prompts)]).gather(prompt_index)
    cstr = pl.Series([f":c{i:0{cwidth}d}" for i in range(n_candidates)]).gather(cand)
    name = f"overopt-d{dim}-p{n_prompts}x{n_candidates}-s{seed}-{_digest(truth)}"
    responses = pl.DataFrame({"prompt_id": pids, "_c": cstr, "gold": gold, "candidate": cand}).select(
        "prompt_id",
        (pl.col("prompt_id") + pl.col("_c")).alias("response_id"),
        (pl.lit("synthetic prompt ") + pl.col("prompt_id")).alias("prompt"),
        (pl.lit("synthetic response ") + pl.col("prompt_id") + pl.col("_c")).alias("response"),
        "gold",
        pl.lit(True).alias("scored"),
        pl.lit(False).alias("excluded"),
        "candidate",
    )
    ds = Dataset(name, responses, source=f"embrm.overopt_dataset (seed {seed}): {truth.describe()}", vectors=X,
                 truth=truth)
    return ds, X


def _digest(truth: OveroptTruth) -> str:
    """8 hex digits of the gold's constants: datasets with different gold never share a name."""

    keys = ("hack", "hack_penalty", "threshold", "nonlinear", "n_features", "prompt_spread", "prompt_hack_spread")
    return hashlib.sha256(repr([getattr(truth, k) for k in keys]).encode()).hexdigest()[:8]


def overopt_truth(n_prompts: int = 100, n_candidates: int = 2000, dim: int = 32, seed: int = 0, *,
                  hack: float = 2.0, hack_penalty: float = 4.0, threshold: float = 2.0, nonlinear: float = 0.5,
                  n_features: int = 32, prompt_spread: float = 1.0, prompt_hack_spread: float = 0.25,
                  chunk_rows: int = CHUNK_ROWS) -> OveroptTruth:
    """The OveroptTruth of overopt_dataset with the same arguments (the directions are the seed's first draws), without
    generating any data."""
    return _truth_and_rng(n_prompts, n_candidates, dim, seed, hack, hack_penalty, threshold, nonlinear, n_features,
                          prompt_spread, prompt_hack_spread, chunk_rows)[0]


def planned_bytes(n_prompts: int, n_candidates: int, dim: int, n_features: int, chunk_rows: int = CHUNK_ROWS) -> int:
    """About the peak memory of overopt_dataset: the embeddings, gold and table, the structure and prompt means,
    and one chunk's projections (float32, then float64 for the cosines)."""
    n = n_prompts * n_candidates
    chunk = min(n, chunk_rows)
    return (n * (4 * dim + 8 + 8 + ROW_BYTES) + n_prompts * dim * 12 + dim * (n_features + 2) * 8
            + chunk * (4 * dim + 20 * (n_features + 2)))


def _truth_and_rng(n_prompts, n_candidates, dim, seed, hack, hack_penalty, threshold, nonlinear, n_features,
                   prompt_spread, prompt_hack_spread, chunk_rows) -> tuple[OveroptTruth, np.random.Generator]:
    """The checked constants, structure and prompt means, and the generator positioned after their draws."""
    given = dict(n_prompts=n_prompts, n_candidates=n_candidates, dim=dim, seed=seed, hack=hack,
                 hack_penalty=hack_penalty, threshold=threshold, nonlinear=nonlinear, n_features=n_features,
                 prompt_spread=prompt_spread, prompt_hack_spread=prompt_hack_spread, chunk_rows=chunk_rows)
    for name, value in given.items():
        check_value(f"overopt_dataset: {name}", value, PARAMS[name], field=name)
    n_prompts, n_candidates, dim, n_features = int(n_prompts), int(n_candidates), int(dim), int(n_features)
    if n_prompts * n_candidates * dim > MAX_CELLS:
        raise EmbrmError(f"overopt_dataset: {n_prompts} x {n_candidates} candidates x {dim} dims would need "
                         f"{n_prompts * n_candidates * dim * 4 / 2**30:.1f} GB of embeddings (at most "
                         f"{MAX_CELLS * 4 / 2**30:.0f} GB): use fewer prompts, candidates or dims")
    check_size("overopt_dataset", f"{n_prompts} prompts x {n_candidates} candidates x {dim} dims "
               f"({n_features} features)", planned_bytes(n_prompts, n_candidates, dim, n_features, chunk_rows),
               "use fewer prompts, candidates, dims or features")
    rng = np.random.default_rng(seed)
    u, v, wf, bf, cf = _structure(dim, n_features, rng)
    z = rng.standard_normal((n_prompts, dim))
    z -= np.outer(z @ v, v)  # P_perp z
    mu = (prompt_spread * z + prompt_hack_spread * np.outer(rng.standard_normal(n_prompts), v)).astype(np.float32)
    truth = OveroptTruth(dim, int(seed), n_prompts, n_candidates, float(hack), float(hack_penalty),
                         float(threshold), float(nonlinear), int(n_features), float(prompt_spread),
                         float(prompt_hack_spread), u, v, wf, bf, cf, mu)
    return truth, rng


def ideal_proxy_curve(truth: OveroptTruth, n) -> np.ndarray:
    """Expected gold GAIN (over n = 1) of Best-of-n from the base policy under the IDEAL linear proxy
    r = (u + hack v) . x (what labels at the base policy teach, without fitting noise), for a prompt whose mean is
    0, ignoring the nonlinear part: a reference for where fitted proxies' curves should peak.

    With c = 1 / sqrt(1 + hack^2) and Z the proxy's standardised score, s = c Z, h = hack c Z + sqrt(1 - hack^2 c^2) E
    (E ~ N(0, 1) independent of Z); the pick's Z has density n Phi(z)^(n-1) phi(z), and E[relu(h - t)^2 | Z] has
    the closed form (m^2 + q^2) Phi(m / q) + m q phi(m / q) with m = hack c Z - t, q = sd of the E part.
    Integrated on a fine z grid (trapezoid)."""
    from scipy.special import ndtr

    a, t, b = truth.hack, truth.threshold, truth.hack_penalty
    c = 1.0 / np.sqrt(1.0 + a * a)
    q = np.sqrt(max(1.0 - (a * c) ** 2, 1e-300))
    z = np.linspace(-9.0, 9.0, 20_001)
    m = a * c * z - t
    pen = (m * m + q * q) * ndtr(m / q) + m * q * np.exp(-0.5 * (m / q) ** 2) / np.sqrt(2 * np.pi)
    g = c * z + a * a * c * z - b * pen
    n = np.atleast_1d(np.asarray(n, np.float64))
    logphi = -0.5 * z * z - 0.5 * np.log(2 * np.pi)
    logcdf = np.log(np.maximum(ndtr(z), 1e-300))
    dens = np.exp(np.log(n)[:, None] + (n[:, None] - 1) * logcdf[None, :] + logphi[None, :])
    out = np.trapezoid(dens * g[None, :], z, axis=1)
    return out - out[0] if n[0] == 1 else out - np.trapezoid(np.exp(logphi) * g, z)
