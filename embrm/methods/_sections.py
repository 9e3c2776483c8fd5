"""Markdown sections of the methods' summaries for the study report (each Method names its own)."""

from __future__ import annotations

from embrm.core import cell, md_table


def _table(rows: dict, columns: list[str]) -> str:
    return md_table(["", *columns], [[k, *(cell(r.get(c)) for c in columns)] for k, r in rows.items()])


def _fmt_dict(d: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def composite_section(s: dict) -> str:
    return (_table(s["methods"], ["gold_at_n_max", "peak_gold", "peak_n", "drop_from_peak"])
            + f"\n\nThresholds (z): {_fmt_dict(s['thresholds'])}; multipliers at n_max: "
              f"{_fmt_dict(s['multipliers_at_n_max'])}; random {s['random']:.3f}, oracle {s['oracle']:.3f}.")


def policy_section(s: dict) -> str:
    rows = {k: s[k] for k in ("kl_optimum", "bon", "dpo", "rpo") if k in s}
    return (_table(rows, ["peak_gold", "peak_at", "peak_kl", "end_gold", "end_kl", "drop_from_peak"])
            + f"\n\nRandom {s['random']:.3f}, oracle {s['oracle']:.3f}; Gao RL fit of the KL optimum: "
              f"alpha {s['kl_optimum'].get('gao_rl_alpha', float('nan')):.3f}, "
              f"beta {s['kl_optimum'].get('gao_rl_beta', float('nan')):.3f}.")


def generic_section(s: dict) -> str:
    """Scalars as a list, and dicts of scalar dicts as tables (for summaries without a dedicated layout)."""
    scalars = {k: v for k, v in s.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    parts = [_fmt_dict(scalars)]
    for key, value in s.items():
        if key == "excluded_pick_rate":  # MethodResult.markdown states it for every method
            continue
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            cols = list(dict.fromkeys(c for v in value.values() for c, x in v.items() if isinstance(x, (int, float))))
            parts.append(f"**{key}**\n\n" + _table(value, cols))
        elif isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            parts.append(f"**{key}**: {_fmt_dict(value)}")
    return "\n\n".join(parts)
