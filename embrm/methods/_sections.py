"""What every method's typed summary shares: the JSON boundary, the excluded-pick rates and one markdown rendering
(the study report's section and the command's output are the same text)."""

from __future__ import annotations

from embrm.core import cell, md_table


class MethodSummary:
    """Base of the methods' summary dataclasses (each has a `with_excluded: bool` field, set by run_method)."""

    with_excluded: bool

    def to_dict(self) -> dict:
        """JSON-able, at the boundary only (summary.json, --format json)."""
        raise NotImplementedError

    def excluded_picks(self) -> list[tuple[str, float]]:
        """(selection, share of evaluated prompts whose pick is an excluded response); empty when the evaluated
        pools hold no excluded response."""
        raise NotImplementedError

    def markdown(self) -> str:
        """The method's tables and sentences."""
        raise NotImplementedError


def table(header: list[str], rows: list[list], digits: int = 3) -> str:
    """A markdown table; numbers through core's one cell format."""
    return md_table(header, [[cell(v, digits) for v in row] for row in rows])


def rates(pairs) -> str:
    """"name 0.123, ..." for (name, value) pairs."""
    return ", ".join(f"{k} {v:.3f}" for k, v in pairs)
