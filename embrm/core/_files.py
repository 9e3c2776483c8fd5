"""Atomic file writes: readers, and a run resumed after a kill, see the old file or the whole new one, never part."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, content: bytes | str | Callable[[Path], None], *, durable: bool = False) -> None:
    """Write `content` (bytes or any buffer, text, or a function that writes the given temp path) to a hidden temp name beside
    `path`, then rename it over `path`. `durable` also fsyncs the file before the rename (the cache's parts and
    manifest: a power cut must not leave a listed part that is empty). A failed or killed write leaves at most the
    temp file, which is removed here when the failure is an exception."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only there when writing or renaming failed
