"""Progress of a long loop, readable both on a terminal and in a log.

On a terminal (stderr is a tty) a rich progress bar is drawn on stderr. Anywhere else (a script, a job log, CI) a
live bar would be lost or garbled, so a plain line goes to stderr at most every ``every`` seconds and once at the
end:

    embed: 1280/5000 texts (26%), 41.7 texts/s, ETA 1m29s

The environment variable EMBRM_PROGRESS_EVERY (seconds) overrides ``every``, e.g. 0 for a line per step.
``set_description`` adds a status after the counts (e.g. "2 running"); ``Stages`` reports a few named steps.
"""

from __future__ import annotations

import contextvars
import math
import os
import sys
import time

from embrm.core._errors import EmbrmError

__all__ = ["Progress", "Stages", "format_duration", "step_progress"]

ENV_EVERY = "EMBRM_PROGRESS_EVERY"


def format_duration(seconds: float) -> str:
    """Compact duration for an ETA: 42s, 3m20s, 1h05m; ? when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Context manager reporting ``advance(n)`` calls out of ``total``.

    enabled: None or True shows progress (a rich bar on a terminal, periodic lines elsewhere), False is silent.
    every: seconds between plain lines (EMBRM_PROGRESS_EVERY overrides it).
    """

    def __init__(self, total: int, label: str, unit: str = "items", enabled: "bool | Progress | None" = None,
                 every: float = 30.0):
        env = os.environ.get(ENV_EVERY, "").strip()
        if env:
            try:
                every = float(env)
            except ValueError:
                raise EmbrmError(f"{ENV_EVERY}={env!r}: expected a number of seconds (e.g. 30, or 0 for every "
                                 f"step)") from None
        self.total, self.label, self.unit, self.every = int(total), label, unit, float(every)
        self.completed = 0
        self.status = ""
        # enabled may be a running Progress: this one is a step of it (a second bar in its display on a terminal:
        # rich allows one live display at a time; its own lines elsewhere; silent when it is)
        self._parent = enabled if isinstance(enabled, Progress) else None
        tty = sys.stderr is not None and sys.stderr.isatty()
        self.mode = "off" if enabled is False else ("bar" if tty else "lines")
        if self._parent is not None:
            self.mode = "off" if self._parent.mode == "off" else self.mode
        self._bar = self._task = self._shared = None  # _shared: the parent's rich display this count draws in
        self._start = self._last = 0.0
        self._printed = -1  # `completed` at the last plain line (no duplicate final line)

    def __enter__(self) -> Progress:
        self._start = self._last = time.perf_counter()
        if self.mode == "bar" and self._parent is not None and self._parent._bar is not None:
            self._shared = self._parent._bar
            self._task = self._shared.add_task(self.label, total=self.total, rate="-", status=self.status)
        elif self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[status]}", markup=False),
                                     console=Console(stderr=True), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, rate="-", status=self.status)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._shared is not None:
            self._shared.remove_task(self._task)
            self._shared = None
        elif self._bar is not None:
            self._bar.__exit__(exc_type, *exc)
            self._bar = None
        elif self.mode == "lines" and self._printed != self.completed and exc_type is None \
                and (self._parent is None or self._printed >= 0):
            # the final count (a step's own count only when it was long enough to print before: its stage's line
            # says it ended); after an error the error line alone is what the user needs
            self._line()

    def set_description(self, text: str) -> None:
        """Set the status shown after the counts (e.g. "2 running"; the label stays)."""
        self.status = text
        if self._live is not None:
            self._live.update(self._task, status=text)

    def advance(self, n: int = 1) -> None:
        """Record n more units done; draws the bar or, when ``every`` seconds have passed, prints a line."""
        self.completed += int(n)
        if self.mode == "off":
            return
        now = time.perf_counter()
        if self._live is not None:
            self._live.update(self._task, completed=self.completed, rate=f"{self.rate(now):.1f} {self.unit}/s")
        elif self.mode == "lines" and now - self._last >= self.every:
            self._last = now
            self._line(now)

    @property
    def _live(self):
        """The rich display this count draws in (its own, or its parent's), or None."""
        return self._shared or self._bar

    def rate(self, now: float | None = None) -> float:
        """Units per second since the start."""
        elapsed = (time.perf_counter() if now is None else now) - self._start
        return self.completed / elapsed if elapsed > 0 else 0.0

    def _line(self, now: float | None = None) -> None:
        rate = self.rate(now)
        pct = 100 * self.completed // self.total if self.total > 0 else 100
        eta = format_duration((self.total - self.completed) / rate if rate > 0 else math.inf)
        status = f", {self.status}" if self.status else ""
        print(f"{self.label}: {self.completed}/{self.total} {self.unit} ({pct}%), {rate:.1f} {self.unit}/s, ETA {eta}"
              f"{status}", file=sys.stderr, flush=True)
        self._printed = self.completed


_STAGES: contextvars.ContextVar = contextvars.ContextVar("embrm_stages", default=None)


class Stages(Progress):
    """A few slow named steps of one task: ``done(name)`` counts one step and shows it. Outside a terminal every
    step gets a line (default ``every`` = 0). Code deep inside a step (a trainer's epochs, a scorer's blocks) shows
    its own count under it with ``step_progress`` without being handed the Stages."""

    def __init__(self, label: str, total: int, enabled: bool | None = None, every: float = 0.0):
        super().__init__(total, label, "steps", enabled, every)
        self._token = None

    def __enter__(self) -> Stages:
        super().__enter__()
        self._token = _STAGES.set(self)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        _STAGES.reset(self._token)
        super().__exit__(exc_type, *exc)

    def done(self, name: str) -> None:
        self.set_description(f"{name} done")
        self.advance()


def step_progress(total: int, label: str, unit: str = "items") -> Progress:
    """A count shown under the running Stages (e.g. a fit's epochs: the step moves, with an ETA), silent when none
    runs. Lines every 30 s outside a terminal, whatever the Stages' own interval."""
    stages = _STAGES.get()
    return Progress(total, label, unit, enabled=stages if stages is not None else False)
