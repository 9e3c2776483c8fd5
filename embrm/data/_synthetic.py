"""Seeded synthetic candidate pools with a KNOWN gold reward over embeddings (Gao et al.'s setting, in miniature).

Model (all float32; ``x`` is a candidate's embedding):

    x      = mu_p + eps,            mu_p ~ N(0, prompt_spread^2 I) per prompt,  eps ~ N(0, I_dim) per candidate
    s(x)   = u . x                  the "quality" direction (unit vector u)
    h(x)   = v . x                  a "hackable" direction (unit v orthogonal to u; think length / sycophancy)
    f(x)   = sqrt(2/F) sum_j a_j cos(w_j . x + b_j)     random Fourier features: a smooth nonlinear part
    gold   = s + nonlinear * f - hack_penalty * relu(h)^2
    member k score:
    R_k    = s + nonlinear * f + hack_k * h + error * (e_k . x)
             hack_k = hack * (1 + member_spread * z_k), z_k standardised N(0, 1) draws:   every member rewards the
             hackable direction
             that gold penalises at large values, by a member-specific amount; e_k: a member-specific random unit
             direction (structured error, what fitting on finite noisy labels leaves behind).

So proxies agree with gold near the base policy, and Best-of-n with large n pushes h up until the quadratic penalty
wins: gold rises then falls (over-optimisation), while the proxy keeps rising. The members disagree most where
|h| is large (the spread of hack_k * h), so uncertainty-penalised aggregations (uwo, lcb, min) resist longer than
the mean -- the qualitative picture of Coste et al. The constants are not fitted to any real data.

Output follows the embrm contracts: a responses table (``prompt_id`` Utf8, ``response_id`` Utf8 unique, ``gold``
Float64, ``scored`` Boolean, plus ``candidate`` Int32 = index within the prompt's pool). There are no texts: the
``prompt``/``response`` columns are OMITTED (pass ``texts=True`` to get short placeholder strings). Embeddings are
float32 (n, dim) aligned row-for-row (``embeddings=False`` skips keeping them: they dominate memory, n * dim * 4
bytes), member scores float32 (n, K). Rows are grouped by prompt, in prompt order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from embrm.core import SEED, EmbrmError, Integer, Number, check_size, check_value, shown

# Every parameter's rule (the bounds keep the gold and scores finite in float32; see the module docstring).
PARAMS = {
    "n_prompts": Integer(1, 10_000_000), "n_candidates": Integer(1, 1_000_000), "dim": Integer(2, 65_536),
    "k_members": Integer(1, 1024), "hack": Number(-100, 100), "hack_penalty": Number(0, 100),
    "member_spread": Number(0, 100), "error": Number(0, 100), "nonlinear": Number(0, 100),
    "n_features": Integer(1, 4096), "prompt_spread": Number(0, 100), "seed": SEED, "chunk_rows": Integer(1, 1 << 24),
}
ROW_BYTES = {False: 64, True: 160}  # a response's row in the table while it is built (without / with texts)


@dataclass
class SyntheticPool:
    """A synthetic pool. ``prompt_index`` (n,) int64 and ``gold`` (n,) float64 duplicate table columns as arrays."""

    responses: pl.DataFrame
    embeddings: np.ndarray | None
    scores: np.ndarray
    prompt_index: np.ndarray
    gold: np.ndarray
    truth: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        emb = "no embeddings" if self.embeddings is None else f"embeddings {self.embeddings.shape}"
        return (f"SyntheticPool({self.truth.get('n_prompts')} prompts, {len(self.gold)} responses, "
                f"{self.scores.shape[1]} members, {emb})")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=0, keepdims=True)


def _candidate_range(n_candidates) -> tuple[int, int]:
    """(lo, hi) of the pool sizes: n_candidates itself, or an inclusive (lo, hi) range."""
    if not isinstance(n_candidates, (tuple, list)):
        check_value("synthetic_pool: n_candidates", n_candidates, PARAMS["n_candidates"], field="n_candidates")
        return int(n_candidates), int(n_candidates)
    if len(n_candidates) != 2 or not all(PARAMS["n_candidates"].ok(v) for v in n_candidates) or \
            n_candidates[0] > n_candidates[1]:
        raise EmbrmError(f"synthetic_pool: n_candidates = {shown(n_candidates)}: give a pool size or a (lo, hi) range "
                         f"with 1 <= lo <= hi <= {PARAMS['n_candidates'].hi}", field="n_candidates")
    return int(n_candidates[0]), int(n_candidates[1])


def _planned_bytes(n_prompts, n_candidates, dim, k, n_features, embeddings, texts, chunk_rows) -> int:
    """About the peak memory of synthetic_pool at its largest pools: outputs, table and one chunk's projections."""
    n = n_prompts * n_candidates
    chunk = min(n, chunk_rows)
    return (n * ((4 * dim if embeddings else 0) + 4 * k + 24 + ROW_BYTES[texts]) + n_prompts * dim * 12
            + chunk * (4 * dim + 12 * (2 + n_features + k)))


def synthetic_pool(n_prompts: int = 1000, n_candidates: int | tuple[int, int] = 64, *, dim: int = 64,
                   k_members: int = 10, hack: float = 1.2, hack_penalty: float = 0.35, member_spread: float = 0.5,
                   error: float = 0.3, nonlinear: float = 0.5, n_features: int = 32, prompt_spread: float = 1.0,
                   embeddings: bool = True, texts: bool = False, seed: int = 0,
                   chunk_rows: int = 1 << 16) -> SyntheticPool:
    """Generate ``n_prompts`` pools of candidates with gold rewards and ``k_members`` proxy members' scores.

    n_candidates: pool size, or an inclusive ``(lo, hi)`` range for unequal pools (drawn uniformly per prompt).
    hack / hack_penalty / member_spread / error / nonlinear: see the module docstring (hack=0 and error=0 make
    every member equal to the non-penalised gold). ``seed`` fixes everything (numpy PCG64 for the structure and
    sizes; torch's CPU generator, seeded from it, for the bulk Gaussian noise, which is ~4x faster here).
    Generated in row chunks: peak memory ~ the outputs (embeddings n*dim*4 B, scores n*K*4 B).
    """
    import torch

    given = dict(n_prompts=n_prompts, dim=dim, k_members=k_members, hack=hack, hack_penalty=hack_penalty,
                 member_spread=member_spread, error=error, nonlinear=nonlinear, n_features=n_features,
                 prompt_spread=prompt_spread, seed=seed, chunk_rows=chunk_rows)
    for name, value in given.items():
        check_value(f"synthetic_pool: {name}", value, PARAMS[name], field=name)
    for name, value in (("embeddings", embeddings), ("texts", texts)):
        if not isinstance(value, bool):
            raise EmbrmError(f"synthetic_pool: {name} must be true or false, got {shown(value)}", field=name)
    lo, hi = _candidate_range(n_candidates)
    check_size("synthetic_pool", f"{n_prompts} prompts x up to {hi} candidates x {dim} dims",
               _planned_bytes(n_prompts, hi, dim, k_members, n_features, embeddings, texts, chunk_rows),
               "use fewer prompts, candidates, dims, members or features (or embeddings=False)")
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lo, hi + 1, n_prompts) if isinstance(n_candidates, (tuple, list)) else \
        np.full(n_prompts, hi)
    n = int(sizes.sum())
    prompt_index = np.repeat(np.arange(n_prompts, dtype=np.int64), sizes)

    # Structure: orthonormal quality/hack directions, random features, member directions.
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u, v = q[:, 0], q[:, 1]
    wf = rng.standard_normal((dim, n_features)) / np.sqrt(dim) * 1.0
    bf = rng.uniform(0, 2 * np.pi, n_features)
    af = rng.standard_normal(n_features)
    e = _unit(rng.standard_normal((dim, k_members)))
    zk = rng.standard_normal(k_members)
    if k_members > 1:
        zk = (zk - zk.mean()) / zk.std()  # the members' mean hack is exactly `hack`
    hack_k = hack * (1.0 + member_spread * zk)
    mu = (rng.standard_normal((n_prompts, dim)) * prompt_spread).astype(np.float32)
    # One projection matrix: [u, v, features, member errors]
    proj = np.concatenate([u[:, None], v[:, None], wf, e], axis=1).astype(np.float32)
    muproj = mu @ proj
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))

    X = np.empty((n, dim), np.float32) if embeddings else None
    scores = np.empty((n, k_members), np.float32)
    gold = np.empty(n, np.float64)
    rf_scale = np.float32(nonlinear * np.sqrt(2.0 / n_features))
    af32, bf32, hk32 = af.astype(np.float32), bf.astype(np.float32), hack_k.astype(np.float32)
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        x = torch.randn((hi - lo, dim), generator=gen, dtype=torch.float32).numpy()
        if X is not None:
            x += mu[prompt_index[lo:hi]]
            X[lo:hi] = x
            z = x @ proj
        else:  # same numbers without materialising x: project the noise, add the projected prompt means
            z = x @ proj
            z += muproj[prompt_index[lo:hi]]
        s, h = z[:, 0], z[:, 1]
        f = np.cos(z[:, 2:2 + n_features] + bf32) @ af32
        f *= rf_scale
        base = s + f
        gold[lo:hi] = base - np.float32(hack_penalty) * np.square(np.maximum(h, 0))
        sc = scores[lo:hi]
        np.multiply(z[:, 2 + n_features:], np.float32(error), out=sc)
        sc += base[:, None]
        sc += h[:, None] * hk32
    cand = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    width = len(str(max(n_prompts - 1, 0)))
    cwidth = len(str(int(sizes.max()) - 1))
    # ids: format the P prompt / max-N candidate strings once, then gather (much faster than per-row formatting)
    pstr = pl.Series([f"p{i:0{width}d}" for i in range(n_prompts)]).gather(prompt_index)
    cstr = pl.Series([f":c{i:0{cwidth}d}" for i in range(int(sizes.max()))]).gather(cand)
    responses = pl.DataFrame({"prompt_id": pstr, "_c": cstr, "gold": gold,
                              "candidate": cand.astype(np.int32)})
    cols = [pl.col("prompt_id"), (pl.col("prompt_id") + pl.col("_c")).alias("response_id")]
    if texts:
        cols += [(pl.lit("synthetic prompt ") + pl.col("prompt_id")).alias("prompt"),
                 (pl.lit("synthetic response ") + pl.col("response_id")).alias("response")]
    responses = responses.with_columns(cols[1]).select(
        *cols[:1], "response_id", *cols[2:], "gold", pl.lit(True).alias("scored"), "candidate")
    truth = dict(n_prompts=n_prompts, dim=dim, k_members=k_members, u=u, v=v, hack_k=hack_k, seed=seed,
                 hack=hack, hack_penalty=hack_penalty, member_spread=member_spread, error=error,
                 nonlinear=nonlinear, sizes=sizes)
    return SyntheticPool(responses, X, scores, prompt_index, gold, truth)
