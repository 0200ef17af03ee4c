"""Processes the lab starts inside its namespaces: spawn with a pid file, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def ns_argv(ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside netns ``ns`` (``ip netns exec`` execs it: same PID, own /sys)."""
    return ["ip", "netns", "exec", ns, *argv]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def process_tree(roots: list[int] | tuple[int, ...]) -> list[int]:
    """``roots`` and all their living descendants (one pass over /proc for the parent links)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in out or not alive(pid):
            continue
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def spawn(
    ns: str,
    argv: list[str],
    name: str,
    state_dir: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``ns`` in its own session; log to ``<name>.log``, pid in ``<name>.pid``."""
    log = open(state_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            ns_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    finally:
        log.close()
    (state_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def read_pid(state_dir: Path, name: str) -> int | None:
    try:
        return int((state_dir / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def terminate(pid: int, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` seconds, then SIGKILL."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        _reap(pid)
        if not alive(pid):
            return
        time.sleep(0.02)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(state_dir: Path, name: str, timeout: float = 5.0) -> None:
    pid = read_pid(state_dir, name)
    if pid is not None:
        terminate(pid, timeout)
    (state_dir / f"{name}.pid").unlink(missing_ok=True)


def pids_in_netns(inode: int) -> list[int]:
    """Every process whose network namespace is the one with ``inode``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
        except OSError:
            continue
    return found
