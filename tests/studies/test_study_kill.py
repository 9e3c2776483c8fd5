"""A SIGKILLed `embrm run` takes its worker processes and multiprocessing's resource tracker with it.

A real `embrm run` (a separate process, two spawn workers) on the renamed real pool with a pre-embedded cache (no
model loads); its jobs train long enough that the run is still going when it is killed. Processes are found
through /proc (by PPid), so this runs on Linux only."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from realdata import needs_data

pytestmark = [needs_data, pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")]

# Each job trains for minutes (no early stopping within 10,000 epochs of 32-pair batches): the kill comes first.
STUDY = """
name = "kill"
seeds = [0, 1, 2, 3]
datasets = ["{root}/pool.toml"]
human_pairs = []
methods = []
k = 2
aggregations = ["mean"]
[embedder]
dtype = "float32"
[labels]
n_pairs = 300
[[noise]]
flip = 0.25
[[learners]]
head = "mlp"
hidden = [32]
epochs = 10000
patience = 10000
batch_size = 32
"""
BUSY_CPU_SECONDS = 1.5  # a worker that has used this much CPU has imported embrm and torch and is past its start
SURVIVAL_LIMIT = 5.0  # seconds a process may take to notice its parent is gone


def stat(pid: int) -> tuple[str, int, int, float] | None:
    """(state, ppid, start time, cpu seconds) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    ticks = os.sysconf("SC_CLK_TCK")
    return fields[0], int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / ticks


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every process below root (children, grandchildren ...)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := stat(int(entry.name))) is not None:
            parents[int(entry.name)] = (s[1], s[2])
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, start) in parents.items():
            if ppid == pid and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def alive(pid: int, start: int) -> bool:
    """Still running (a zombie waiting for a reaper counts as ended; a reused pid is another process)."""
    s = stat(pid)
    return s is not None and s[0] != "Z" and s[2] == start


def workers_busy(pid: int) -> bool:
    procs = descendants(pid)
    workers = [p for p in procs if "spawn_main" in cmdline(p)]
    return len(workers) >= 2 and all((s := stat(p)) is not None and s[3] >= BUSY_CPU_SECONDS for p in workers)


def test_a_killed_run_leaves_no_process_behind(renamed_pool, tmp_path):
    (tmp_path / "study.toml").write_text(STUDY.format(root=renamed_pool))
    shutil.copytree(renamed_pool / "cache", tmp_path / "cache")
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "embrm.cli", "run", str(tmp_path / "study.toml"), "--out",
                             str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--workers", "2",
                             "--format", "json"], stdout=log, stderr=subprocess.STDOUT)
    procs = {}
    try:
        deadline = time.monotonic() + 60
        while not workers_busy(proc.pid):
            assert proc.poll() is None, f"embrm run ended early: {(tmp_path / 'run.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no two busy workers after 60 s: {descendants(proc.pid)}"
            time.sleep(0.2)
        procs = descendants(proc.pid)
        assert any("resource_tracker" in cmdline(p) for p in procs), {p: cmdline(p) for p in procs}
        commands = {p: cmdline(p) for p in procs}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + SURVIVAL_LIMIT
        while (left := [p for p, start in procs.items() if alive(p, start)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"alive {SURVIVAL_LIMIT:g} s after the parent was killed: {[commands[p] for p in left]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, start in procs.items():  # only what this test started, by pid
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        log.close()
