"""Text formatting shared by reports, method sections and the CLI: one number cell, one interval, one table."""

from __future__ import annotations

import math


def cell(value, digits: int = 3) -> str:
    """A table cell: floats to `digits` places, None (or NaN) as "-", anything else as str()."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt(mean: float, half: float, digits: int = 3) -> str:
    """"mean ± half" (a 95 % interval's half-width); the mean alone when the half-width is not finite."""
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" if not math.isfinite(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table of cells already formatted (str() of anything else)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)
