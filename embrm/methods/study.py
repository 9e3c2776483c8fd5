"""The further seeds inside the main study: each method's study function on one real pool, timed, as report
sections (`embrm run` calls this after the ensemble jobs).

Methods run on the pool with the reward-hacking probes removed (they game the judge that produced gold), one seed.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

METHODS = {  # name -> (module, study function, what the section shows)
    "laser": ("embrm.methods.laser", "laser_experiment",
              "LASeR (Nguyen et al.): LinUCB picks one reward model per held-out prompt from its embedding"),
    "moe": ("embrm.methods.moe", "moe_study",
            "Mixture-of-experts reward (DMoERM, Quan): a router over prompt categories, per-category experts, "
            "a learned combiner, vs one head trained on everything"),
    "composite": ("embrm.methods.composite", "composite_study",
                  "Constrained composite reward (Moskovitz et al.): Best-of-n on a fixed sum vs a clipped sum vs "
                  "Lagrangian selection that keeps each component below its proxy point"),
    "policy": ("embrm.methods.policy", "policy_study",
               "Policy-side over-optimisation: the KL-regularised optimum over each pool, and DPO / RPO linear "
               "softmax policies trained on the preference pairs (gold and KL on held-out prompts)"),
}


def run_methods(ds, X: np.ndarray, names, *, seed: int = 0, out_dir: Path | None = None) -> list[dict]:
    """Run each named method's study; returns [{name, summary, seconds}] and writes <name>.json/.parquet."""
    from embrm.jobs import probe_mask

    keep = ~probe_mask(ds.responses)
    ds, X = replace(ds, responses=ds.responses.filter(pl.Series(keep))), X[keep]
    results = []
    for name in names:
        module, fn, _ = METHODS[name]
        start = time.perf_counter()
        summary, frame = getattr(importlib.import_module(module), fn)(ds, X, seed=seed)
        seconds = time.perf_counter() - start
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1, default=str))
            frame.write_parquet(out_dir / f"{name}.parquet")
        results.append({"name": name, "summary": summary, "seconds": seconds})
    return results


def _table(rows: dict, columns: list[str]) -> str:
    from embrm.report import md_table

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))

    return md_table(["", *columns], [[k, *(cell(r.get(c)) for c in columns)] for k, r in rows.items()])


def render_methods(results: list[dict]) -> str:
    """One markdown section per method: what it shows, its key table, its cost."""
    lines = ["## Further seeds on the real pool (probes removed, one seed)", ""]
    for r in results:
        s, name = r["summary"], r["name"]
        lines += [f"### {name}", "", METHODS[name][2] + f". Ran in {r['seconds']:.1f} s.", ""]
        lines += [_section(name, s), ""]
    return "\n".join(lines)


def _section(name: str, s: dict) -> str:
    if name == "composite":
        return (_table(s["methods"], ["gold_at_n_max", "peak_gold", "peak_n", "drop_from_peak"])
                + f"\n\nThresholds (z): {_fmt_dict(s['thresholds'])}; multipliers at n_max: "
                  f"{_fmt_dict(s['multipliers_at_n_max'])}; random {s['random']:.3f}, oracle {s['oracle']:.3f}.")
    if name == "policy":
        rows = {k: s[k] for k in ("kl_optimum", "bon", "dpo", "rpo") if k in s}
        return (_table(rows, ["peak_gold", "peak_at", "peak_kl", "end_gold", "end_kl", "drop_from_peak"])
                + f"\n\nRandom {s['random']:.3f}, oracle {s['oracle']:.3f}; Gao RL fit of the KL optimum: "
                  f"alpha {s['kl_optimum'].get('gao_rl_alpha', float('nan')):.3f}, "
                  f"beta {s['kl_optimum'].get('gao_rl_beta', float('nan')):.3f}.")
    return _generic(s)


def _generic(s: dict) -> str:
    """Scalars as a list, and dicts of scalar dicts as tables (for summaries without a dedicated layout)."""
    scalars = {k: v for k, v in s.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    parts = [", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items())]
    for key, value in s.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            cols = list(dict.fromkeys(c for v in value.values() for c, x in v.items() if isinstance(x, (int, float))))
            parts.append(f"**{key}**\n\n" + _table(value, cols))
        elif isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            parts.append(f"**{key}**: {_fmt_dict(value)}")
    return "\n\n".join(parts)


def _fmt_dict(d: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())
