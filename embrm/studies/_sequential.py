"""`embrm run --until-decided --max-seeds N`: add seeds in batches until every finding is decided.

    check_max_seeds(study, max_seeds, replicate)       refused up front: more seeds than the study has, within MAX_JOBS
    more_seeds(seeds, batch, max_seeds)                the next batch's seed values
    summarise(k, seeds, looks)                         -> LookSummary of one look over every tested finding
    stop_reason(looks, seeds, max_seeds)               why the looks stopped (None: keep going)

A look runs every job of the seeds so far, measures the findings (embrm.studies._run.all_findings) and looks at each
undecided one with ONE SequentialTest (embrm.evaluation): it crosses the group-sequential boundary (reproduced or
reversed), is futile (its conditional power is too low) or continues. A decided finding keeps the Look that decided
it: looking again after a crossing would spend alpha the boundary did not plan for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from embrm.core import EmbrmError
from embrm.evaluation import VERDICTS, Look
from embrm.studies._config import MAX_JOBS, Study, jobs_of

DECIDED = (*VERDICTS[:2], "futile")  # statuses that stop a finding's looks


@dataclass(frozen=True)
class LookSummary:
    """One look: the seeds run, how many findings were decided by then and how many continue, and the range of the
    z boundaries the findings that were looked at faced (their information fractions differ)."""

    look: int
    seeds: int
    decided: int
    continuing: int
    bound_lo: float
    bound_hi: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SequentialRun:
    """The looks of one `--until-decided` run and why they stopped."""

    max_seeds: int
    batch: int
    looks: list[LookSummary] = field(default_factory=list)
    reason: str = ""
    alpha: float = 0.05  # the SequentialTest's
    futility: float = 0.10

    def to_dict(self) -> dict:
        return {"max_seeds": self.max_seeds, "batch": self.batch, "alpha": self.alpha, "futility": self.futility,
                "looks": [k.to_dict() for k in self.looks], "reason": self.reason}


def check_max_seeds(study: Study, max_seeds: int, replicate: bool) -> None:
    """--max-seeds must add seeds to the study and keep its jobs (replication halves included) within MAX_JOBS."""
    have = len(study.seeds)
    if not isinstance(max_seeds, (int, np.integer)) or isinstance(max_seeds, bool) or max_seeds <= have:
        raise EmbrmError(f"--max-seeds {max_seeds}: the study already has {have} seeds: give more than {have}",
                         field="--max-seeds")
    per_seed = jobs_of(replace(study, seeds=[0]))
    per_seed_n = len(per_seed) + (2 * sum(j.kind == "pool" for j in per_seed) if replicate else 0)
    most = MAX_JOBS // max(per_seed_n, 1)
    if max_seeds > most:
        raise EmbrmError(f"--max-seeds {max_seeds}: {max_seeds * per_seed_n} jobs ({per_seed_n} per seed"
                         f"{', replication halves included' if replicate else ''}): at most {MAX_JOBS} in one study: "
                         f"give --max-seeds <= {most}", field="--max-seeds")


def more_seeds(seeds: list[int], batch: int, max_seeds: int) -> list[int]:
    """The next batch of new seed values after the largest so far; the last batch stops at max_seeds."""
    n = min(batch, max_seeds - len(seeds))
    return list(range(max(seeds) + 1, max(seeds) + 1 + max(n, 0)))


def summarise(k: int, seeds: int, looks: dict[str, Look], fresh: list[Look]) -> LookSummary:
    """Look k over every finding's latest Look (`looks`); `fresh` are the Looks taken at this look."""
    bounds = [x.bound for x in fresh if np.isfinite(x.bound)]
    decided = sum(x.status in DECIDED for x in looks.values())
    continuing = sum(x.status == "continue" for x in looks.values())
    return LookSummary(k, seeds, decided, continuing, min(bounds, default=float("nan")),
                       max(bounds, default=float("nan")))


def stop_reason(looks: dict[str, Look], k: int, seeds: int, max_seeds: int) -> str | None:
    """Why the looks stop after look k (None while some finding continues and seeds remain)."""
    undecided = sum(x.status not in DECIDED for x in looks.values())
    if not undecided:
        return f"every finding decided (crossed a boundary or futile) at look {k} ({seeds} seeds)"
    if seeds >= max_seeds:
        return (f"max_seeds reached ({max_seeds} seeds, look {k}): {undecided} of {len(looks)} findings still "
                f"undecided")
    return None
