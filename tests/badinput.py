"""Harness for the table-driven bad-input suites (tests/test_bad_inputs_*.py).

A case is a command line that must fail cleanly: exit 2, exactly one line on stderr that starts with "error:"
(naming the file, row/line and the fix), no traceback, and nothing under the watched paths changed (every file's
bytes and the set of files are compared before and after)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner

from embrm.cli import app


@dataclass(frozen=True)
class Bad:
    """One bad input: `args` may hold "{root}" (the suite's fixture directory); `match` is a regex the error
    line must contain (name the file/option and the fix); `watch` lists paths (under root) that must stay
    byte-identical; `env` adds environment variables."""

    id: str
    args: tuple[str, ...]
    match: str
    watch: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)

    def argv(self, root: Path) -> list[str]:
        return [a.replace("{root}", str(root)) for a in self.args]


def snapshot(paths) -> dict[str, str]:
    """path -> sha256 of every file under the given paths (missing paths map to 'absent')."""
    state = {}
    for p in map(Path, paths):
        if not p.exists():
            state[str(p)] = "absent"
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            state[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return state


def assert_clean_failure(case: Bad, root: Path) -> str:
    """Run the case in-process; return the error line after checking every property of a clean failure."""
    watched = [root / w for w in case.watch]
    before = snapshot(watched)
    res = CliRunner().invoke(app, case.argv(root), env=case.env or None)
    lines = res.stderr.strip().splitlines()
    context = f"{case.id}: exit {res.exit_code}, stderr={res.stderr!r}, exception={res.exception!r}"
    assert res.exit_code == 2, context
    assert "Traceback" not in res.output and "Traceback" not in res.stderr, context
    assert len(lines) == 1 and lines[0].startswith("error: "), context
    assert re.search(case.match, lines[0]), f"{context}: error does not match {case.match!r}"
    assert snapshot(watched) == before, f"{case.id}: a watched file changed"
    return lines[0]
