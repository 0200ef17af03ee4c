"""The local control socket: ``mptcp-tunnel status`` asks the running agent for a snapshot.

A Unix stream socket (mode 0600 in a 0750 directory: root and the agent's user only). Each
connection gets one JSON snapshot and is closed; nothing is read from the client, so a client can
neither change nor stall the agent. Served by a daemon thread: the agent's event loop never waits
for a client, and status works while the CPE is between sessions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mptcp_tunnel.control")

CLIENT_TIMEOUT_S = 5.0


class ControlError(Exception):
    pass


class ControlServer:
    def __init__(self, path: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.snapshot = snapshot
        self.sock: socket.socket | None = None

    def start(self) -> bool:
        """Bind and serve; on any problem log it and carry on without a control socket."""
        try:
            self.sock = _bind(self.path)
        except (OSError, ControlError) as exc:
            log.warning("no control socket (status unavailable): %s", exc)
            return False
        threading.Thread(target=self._serve, name="control", daemon=True).start()
        log.info("control socket %s", self.path)
        return True

    def _serve(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(1.0)
                try:
                    data = json.dumps(self.snapshot()).encode() + b"\n"
                except Exception as exc:  # a status bug must never harm the agent
                    log.exception("status snapshot failed")
                    data = json.dumps({"error": f"snapshot failed: {exc}"}).encode() + b"\n"
                with contextlib.suppress(OSError):
                    conn.sendall(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.sock = None


def _bind(path: str) -> socket.socket:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o750, exist_ok=True)
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ControlError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(path)
            raise ControlError(f"{path} is in use by another running agent")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # left behind by an agent that died
        except OSError:
            os.unlink(path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(8)
    return sock


def query(path: str, timeout: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """One snapshot from the agent at ``path``; ControlError with a readable reason otherwise."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except FileNotFoundError:
        raise ControlError(f"no agent control socket at {path} (is the agent running?)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (run as root)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        snap: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"{path}: the agent sent no valid snapshot") from None
    if "error" in snap:
        raise ControlError(f"the agent could not take a snapshot: {snap['error']}")
    return snap
