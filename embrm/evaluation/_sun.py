"""Sun et al. (2025)'s evaluation numbers, computed the way their evaluation script defines them, to report beside
embrm's exact estimators (``embrm.evaluation.bon_curves``, ``embrm.evaluation.pairwise_metrics``).

Sun et al. ("Rethinking reward modeling ... beyond Bradley-Terry", step6_eval_rms.py in
holarissun/RewardModelingBeyondBradleyTerry) judge a reward on test prompts with gold rewards by:

- Best-of-N, N in ``SUN_N``, by SAMPLING: draw N of a prompt's responses, keep the one with the highest proxy,
  report its gold averaged over prompts (``bon_gold``). The subsamples are nested, as theirs: each prompt's pool
  is shuffled once and Best-of-N takes the first N of that shuffle. A random draw, so unlike the exact estimator
  it has sampling noise; ties in proxy go to the first in shuffled order (uniformly random).
- the quantile of that pick (``bon_quantile``): its percentile rank by gold within the prompt's WHOLE pool, the
  share of the pool with lower gold with ties (itself included) counting half, (rank - 1/2) / N_p with average
  ranks, in (0, 1); a uniformly random pick averages 1/2.
- pairwise accuracy: random within-prompt pairs (``pairs_per_prompt`` per prompt, with replacement, pairs with
  equal gold dropped); the share the proxy orders as gold does, proxy ties 1/2, pooled over pairs.
- Spearman: per-prompt Spearman(proxy, gold) (average ranks), averaged over prompts; prompts where either is
  constant (or that hold one response) are skipped, and the row's ``prompts`` says how many counted.

Where this differs from their script (read at commit 9a1afe1): the script loads only the LAST ensemble member
(``range(ensemble_number - 1, ensemble_number)``), so its "mean", "min" and "first" rewards are one model and come
out identical; here every proxy is scored on its own values. The script draws one index set shared by all prompts
(possible only with equal pools of 500) and repeats it 100 times; here each prompt draws its own shuffle, once per
call (``seed``), so unequal pools work. The script's quantile is of the whole-pool argmax only and counts ties
fully (share <= the pick), and its "binary accuracy" is the share of prompts whose argmax quantile is <= 0.5; the
quantile here is per N with ties counting half, and accuracy is pairwise.

Every random draw (each prompt's shuffle, the accuracy pairs) is made once per call from
``np.random.default_rng(seed)`` and shared by every proxy, so proxies are compared on the same draws. The draws are
made on the padded (prompt, position) layout of ``embrm.evaluation.group_pools`` (prompts sorted, rows in input
order within a prompt): reordering rows ACROSS prompts gives the same numbers, reordering within a prompt redraws.

Computation: one padded (P, N_max) matrix per quantity, then numpy over the whole matrix; the only loops are over
the N values and the proxies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from embrm.core import EmbrmError, cell, md_table
from embrm.evaluation._pools import Pools, avg_ranks, group_pools

__all__ = ["SUN_N", "SunMetrics", "sun_metrics"]

# Sun et al.'s Best-of-N sizes (their pools hold 500 responses per prompt).
SUN_N = (2, 5, 10, 30, 50, 100, 300, 500)

_SCHEMA = {"reward": pl.Utf8, "metric": pl.Utf8, "n": pl.Int64, "value": pl.Float64, "prompts": pl.Int64}


@dataclass
class SunMetrics:
    """Sun et al.'s evaluation numbers per reward: one row per (reward, metric, N) as
    ``{"reward", "metric" ("bon_gold" | "bon_quantile" | "accuracy" | "spearman"), "n" (None for accuracy and
    spearman), "value", "prompts" (how many prompts counted)}``. A metric no prompt can serve (an N above every
    pool, no pair with different gold, no prompt with a defined Spearman) has no row. ``n_prompts``: the prompts
    evaluated; ``pairs``: the accuracy pairs kept (shared by every reward)."""

    rows: list[dict]
    seed: int
    n_prompts: int = 0
    pairs: int = 0

    def frame(self) -> pl.DataFrame:
        """One row per entry: reward, metric, n, value, prompts."""
        return pl.DataFrame(self.rows, schema=_SCHEMA, orient="row") if self.rows else pl.DataFrame(schema=_SCHEMA)

    def table(self) -> pl.DataFrame:
        """Wide: one row per reward (in input order); columns accuracy, spearman, bon_gold@N..., bon_quantile@N...
        (null where a reward has no row)."""
        rewards = list(dict.fromkeys(r["reward"] for r in self.rows))
        ns = sorted({r["n"] for r in self.rows if r["n"] is not None})
        cols = ["accuracy", "spearman"] + [f"{m}@{n}" for m in ("bon_gold", "bon_quantile") for n in ns]
        values = {(r["reward"], _column(r)): r["value"] for r in self.rows}
        data = {"reward": rewards} | {c: [values.get((w, c)) for w in rewards] for c in cols}
        return pl.DataFrame(data, schema={"reward": pl.Utf8} | {c: pl.Float64 for c in cols})

    def markdown(self) -> str:
        """Two markdown tables: pairwise accuracy and Spearman per reward, then Best-of-N gold and quantile per N."""
        rewards = list(dict.fromkeys(r["reward"] for r in self.rows))
        get = {(r["reward"], r["metric"], r["n"]): r for r in self.rows}

        def value(key):
            return cell(get[key]["value"]) if key in get else "-"

        def count(keys):
            return "/".join(sorted({str(get[k]["prompts"]) for k in keys if k in get})) or "-"

        pair = md_table(["reward", "accuracy", "spearman", "Spearman prompts"],
                        [[w, value((w, "accuracy", None)), value((w, "spearman", None)),
                          count([(w, "spearman", None)])] for w in rewards])
        ns = sorted({r["n"] for r in self.rows if r["n"] is not None})
        bon = md_table(["N", "prompts"] + [f"{w} {m}" for w in rewards for m in ("gold", "quantile")],
                       [[n, count([(w, "bon_gold", n) for w in rewards])]
                        + [value((w, m, n)) for w in rewards for m in ("bon_gold", "bon_quantile")] for n in ns])
        head = (f"Sun et al.'s evaluation (seed {self.seed}; {self.n_prompts} prompts, {self.pairs} accuracy pairs; "
                "Best-of-N by one random subsample per prompt)")
        return "\n\n".join([head, pair, bon])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SunMetrics:
        """The SunMetrics of to_dict() (a stored result)."""
        d = dict(d)
        d["rows"] = [dict(r) for r in d["rows"]]
        return cls(**d)


def _column(row: dict) -> str:
    return row["metric"] if row["n"] is None else f"{row['metric']}@{row['n']}"


def sun_metrics(prompt_ids, gold, proxies: dict[str, np.ndarray], rows=None, *, ns=SUN_N, seed: int = 0,
                pairs_per_prompt: int = 10) -> SunMetrics:
    """Sun et al.'s evaluation numbers (module docstring) of every proxy against ``gold``.

    prompt_ids: (n,) prompt key per row (rows need not be grouped); gold: (n,) float; proxies: {name: (n,) float};
    rows: optional (n,) bool, the responses evaluated (None: all). Gold and proxies must be finite on evaluated
    rows. ns: Best-of-N sizes; an N above a prompt's pool skips that prompt for that N. seed: the one random draw
    shared by every proxy; pairs_per_prompt: accuracy pairs drawn per prompt."""
    pools, gold_m, names, proxy_m = _layout(prompt_ids, gold, proxies, rows)
    ns = _check_ns(ns)
    if int(pairs_per_prompt) < 1:
        raise EmbrmError(f"pairs_per_prompt: must be >= 1, got {pairs_per_prompt}", field="pairs_per_prompt")
    rng = np.random.default_rng(seed)
    shuffle = _shuffles(rng, pools)
    pair_a, pair_b, pair_ok = _pairs(rng, pools, gold_m, int(pairs_per_prompt))
    quantile = (avg_ranks(np.where(pools.valid, gold_m, np.inf), pools.valid) - 0.5) / pools.sizes[:, None]
    gold_centred, gold_const = _centred_ranks(gold_m, pools)
    out = []
    for name, m in zip(names, proxy_m):
        out += _pairwise_rows(name, m, gold_m, pools, pair_a, pair_b, pair_ok, gold_centred, gold_const)
        out += _bon_rows(name, m, gold_m, quantile, pools, shuffle, ns)
    return SunMetrics(out, int(seed), int(len(pools.keys)), int(pair_ok.sum()))


# ----------------------------------------------------------------------------- inputs

def _layout(prompt_ids, gold, proxies, rows) -> tuple[Pools, np.ndarray, list[str], list[np.ndarray]]:
    """Validate the inputs; the pools and the padded (P, N_max) gold and proxy matrices (padding: -inf)."""
    ids = prompt_ids.to_numpy() if isinstance(prompt_ids, pl.Series) else np.asarray(prompt_ids)
    g = np.asarray(gold, dtype=np.float64)
    n = ids.shape[0] if ids.ndim == 1 else -1
    if ids.ndim != 1 or g.shape != (n,):
        raise EmbrmError(f"sun_metrics: prompt_ids {ids.shape} and gold {g.shape} must be one value per row (n,)")
    if not isinstance(proxies, dict) or not proxies:
        raise EmbrmError("sun_metrics: proxies is empty: pass {name: (n,) scores} for at least one reward",
                         field="proxies")
    cols = {str(k): np.asarray(v, dtype=np.float64) for k, v in proxies.items()}
    for k, v in cols.items():
        if v.shape != (n,):
            raise EmbrmError(f"sun_metrics: proxy {k!r} has shape {v.shape}, expected ({n},): one score per row",
                             field="proxies")
    keep = np.ones(n, bool) if rows is None else np.asarray(rows)
    if keep.dtype != bool or keep.shape != (n,):
        raise EmbrmError(f"sun_metrics: rows must be a boolean mask of {n} rows, got {keep.dtype} {keep.shape}",
                         field="rows")
    if not np.isfinite(g[keep]).all():
        raise EmbrmError(f"sun_metrics: {int((~np.isfinite(g[keep])).sum())} evaluated rows have non-finite gold: "
                         "leave them out with rows=", field="gold")
    for k, v in cols.items():
        if not np.isfinite(v[keep]).all():
            raise EmbrmError(f"sun_metrics: proxy {k!r} is non-finite on {int((~np.isfinite(v[keep])).sum())} "
                             "evaluated rows", field="proxies")
    pools = group_pools(ids, keep, n_rows=n)
    return pools, pools.gather(g, -np.inf), list(cols), [pools.gather(v, -np.inf) for v in cols.values()]


def _check_ns(ns) -> np.ndarray:
    a = np.asarray(ns)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer) or (a < 1).any():
        raise EmbrmError(f"ns: Best-of-N sizes must be positive integers, got {ns!r}", field="ns")
    return np.unique(a)


# ----------------------------------------------------------------------------- the random draws

def _shuffles(rng: np.random.Generator, pools: Pools) -> np.ndarray:
    """(P, N_max) a random order of each prompt's positions, padding last: Best-of-N takes the first N."""
    keys = rng.random(pools.rows.shape)
    keys[~pools.valid] = 2.0
    return np.argsort(keys, axis=1)


def _pairs(rng: np.random.Generator, pools: Pools, gold_m: np.ndarray, k: int):
    """(P, k) positions a, b of k random pairs of distinct responses per prompt, and which pairs are kept (the prompt
    has two responses and the pair's gold differs)."""
    sizes = pools.sizes[:, None]
    a = (rng.random((len(sizes), k)) * sizes).astype(np.int64)
    b = (rng.random((len(sizes), k)) * np.maximum(sizes - 1, 1)).astype(np.int64)
    b += b >= a  # b skips a: two distinct responses
    ok = sizes >= 2
    a, b = np.minimum(a, sizes - 1), np.minimum(b, sizes - 1)  # one-response prompts: in range, masked out
    ok = ok & (np.take_along_axis(gold_m, a, 1) != np.take_along_axis(gold_m, b, 1))
    return a, b, ok


# ----------------------------------------------------------------------------- metrics of one proxy

def _centred_ranks(m: np.ndarray, pools: Pools) -> tuple[np.ndarray, np.ndarray]:
    """(P, N_max) average ranks minus their mean (padding 0), and (P,) whether the row is constant."""
    r = avg_ranks(np.where(pools.valid, m, np.inf), pools.valid) - (pools.sizes[:, None] + 1.0) / 2.0
    r[~pools.valid] = 0.0
    const = np.where(pools.valid, m, -np.inf).max(axis=1) == np.where(pools.valid, m, np.inf).min(axis=1)
    return r, const


def _pairwise_rows(name, m, gold_m, pools, a, b, ok, gold_centred, gold_const) -> list[dict]:
    out = []
    if ok.any():
        sign = np.sign(np.take_along_axis(gold_m, a, 1) - np.take_along_axis(gold_m, b, 1))
        margin = (np.take_along_axis(m, a, 1) - np.take_along_axis(m, b, 1)) * sign
        correct = (margin > 0) + 0.5 * (margin == 0)
        out.append(_row(name, "accuracy", None, correct[ok].mean(), ok.any(axis=1).sum()))
    rp, const = _centred_ranks(m, pools)
    defined = ~(const | gold_const)
    if defined.any():
        rp, rg = rp[defined], gold_centred[defined]
        rho = np.einsum("ij,ij->i", rp, rg) / np.sqrt(np.einsum("ij,ij->i", rp, rp) * np.einsum("ij,ij->i", rg, rg))
        out.append(_row(name, "spearman", None, rho.mean(), defined.sum()))
    return out


def _bon_rows(name, m, gold_m, quantile, pools, shuffle, ns) -> list[dict]:
    out = []
    for n in ns:
        serve = pools.sizes >= n
        if not serve.any():
            continue
        sub = shuffle[serve, :n]  # positions of each serving prompt's N draws
        pick = np.take_along_axis(sub, np.argmax(np.take_along_axis(m[serve], sub, 1), axis=1)[:, None], 1)
        gold_pick = np.take_along_axis(gold_m[serve], pick, 1)
        q_pick = np.take_along_axis(quantile[serve], pick, 1)
        out.append(_row(name, "bon_gold", n, gold_pick.mean(), serve.sum()))
        out.append(_row(name, "bon_quantile", n, q_pick.mean(), serve.sum()))
    return out


def _row(reward: str, metric: str, n, value, prompts) -> dict:
    return {"reward": reward, "metric": metric, "n": None if n is None else int(n), "value": float(value),
            "prompts": int(prompts)}
