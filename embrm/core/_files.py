"""Atomic file writes: readers, and a run resumed after a kill, see the old file or the whole new one, never part.
And one writer per result: a process writing a result directory or file holds a lock on it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from embrm.core._errors import EmbrmError

STATE_ENV = "EMBRM_STATE_DIR"


def state_dir() -> Path:
    """Where embrm remembers facts about files and models (digests, checks, converted models) and keeps generated
    arrays: $EMBRM_STATE_DIR, else ~/.cache/embrm."""
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".cache" / "embrm").expanduser()


def write_atomic(path: Path, content: bytes | str | Callable[[Path], None], *, durable: bool = False) -> None:
    """Write `content` (bytes or any buffer, text, or a function that writes the given temp path) to a hidden temp
    name beside `path`, then rename it over `path`. `durable` also fsyncs the file before the rename (the cache's
    parts and manifest: a power cut must not leave a listed part that is empty). A failed or killed write leaves at
    most the temp file, which is removed here when the failure is an exception; a failure is one line naming
    `path`."""
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
    except OSError as e:  # e.g. a full disk: name the file the user asked for, not the temp name
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    except Exception as e:  # a writer library's own error for a failed write (polars says "Invalid thrift:
        if not _writer_library(e):  # transport error" for a full disk): whatever it says, the file is not written
            raise
        raise EmbrmError(f"{path}: could not write it ({_first_line(e)}): free space on its disk, or choose another "
                         f"path") from None
    finally:
        tmp.unlink(missing_ok=True)  # only there when writing or renaming failed


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a write failed for room: a full disk, a size limit, a quota
STAGE_PREFIX = ".stage-"  # staged's hidden directories inside a results directory


@contextlib.contextmanager
def staged(out_dir: Path):
    """A hidden directory inside `out_dir` to write a set of result files into; when the block ends they move into
    `out_dir` (renames: they cannot fail for space), and when it fails they are removed: a full disk or an error
    mid-way leaves the earlier results, never some files of the new ones. (A killed process leaves the hidden
    directory; whoever next writes `out_dir` may remove it: `stale_stages`.)"""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = out_dir / f"{STAGE_PREFIX}{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        for f in sorted(stage.rglob("*")):
            if f.is_file():
                (out_dir / f.relative_to(stage)).parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, out_dir / f.relative_to(stage))
    except OSError as e:  # name the file the user will look for, not its staged twin
        raise OSError(e.errno, e.strerror or str(e), str(e.filename or out_dir).replace(str(stage), str(out_dir)))
    except EmbrmError as e:
        raise EmbrmError(str(e).replace(str(stage), str(out_dir)), field=e.field) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def stale_stages(out_dir: Path) -> list[Path]:
    """The staging directories killed writers left in `out_dir` (remove them only while holding its lock)."""
    return sorted(p for p in Path(out_dir).glob(f"{STAGE_PREFIX}*") if p.is_dir() and not p.is_symlink())


def file_stem(text: str) -> str:
    """A name (a dataset's, an exclusion's, a job's) as a plain file name: every character but ASCII letters,
    digits and . _ - @ + = , becomes '_', and no leading dot, so no name can reach outside the directory it is
    written in (declared names are checked where they enter; this is the writers' own guard)."""
    stem = re.sub(r"[^A-Za-z0-9._@+=,-]+", "_", str(text)).lstrip(".")[:150]
    return stem or "_"


def _writer_library(e: Exception) -> bool:
    """An exception of the libraries that write our files (polars, pyarrow, PIL): they raise their own types."""
    return type(e).__module__.split(".")[0] in ("polars", "pyarrow", "PIL")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _lock_dir() -> Path:
    """This user's directory of one-writer locks in the system's temp dir, refused if someone else made it (another
    user could otherwise hold or redirect our locks)."""
    locks = Path(tempfile.gettempdir()) / f"embrm-locks-{os.getuid()}"
    locks.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(locks)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise EmbrmError(f"{locks}: not a directory of this user's (another user made it): remove it, or set TMPDIR "
                         f"to a directory of your own")
    return locks


@contextlib.contextmanager
def exclusive(target: Path, option: str = "--out"):
    """Hold the one-writer lock of `target` (a result directory or file) while the block runs: a second process
    asking for the same target fails at once in one line instead of replacing or mixing results. The lock is a file
    named by the target's resolved path in a per-user directory of the system's temp dir (so nothing is written
    beside the user's files, and no directory need exist yet); POSIX flock, which the kernel releases when a process
    dies, so a killed run never leaves the target locked."""
    import fcntl  # POSIX only; here so that importing embrm needs nothing platform-specific

    target = Path(target)
    lock = _lock_dir() / (hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:32] + ".lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise EmbrmError(f"{option} {target} is being written by another embrm process: wait for it to finish, or "
                         f"choose another {option}", field=option) from None
    try:
        yield target
    finally:
        os.close(fd)  # the lock file stays (empty): unlinking it would let a waiting process lock a stale inode
