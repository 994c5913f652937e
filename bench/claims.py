"""Claim files: at most one live worker computes a shard, across processes and machines.

A claim is a small file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on
NFSv3+): whoever creates it owns the shard. It holds the owner's host, pid, process start time and a
random token. The owner's heartbeat thread touches its claims' mtime every ``heartbeat_s``; a claim
is stale when its mtime is older than ``timeout_s``, or at once when its owner is a process on this
host that no longer exists. A stale claim is taken over in three steps, each atomic:

1. create ``<claim>.takeover-<token>`` with ``O_EXCL``: one process per stale token wins;
2. the winner checks the claim still carries that token and unlinks it;
3. it creates a fresh claim with ``O_EXCL`` (where another worker got there first, that one owns it).

Owners check their token before touching or removing a claim, so a worker that was silent past the
timeout never removes its successor's claim. What can still happen is that such a worker finishes
the shard its successor also computes: both write the same deterministic state with an atomic
rename, so the file is whole either way.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

__all__ = ["Claims", "DEFAULT_TIMEOUT_S", "DEFAULT_HEARTBEAT_S"]

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_HEARTBEAT_S = 10.0


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/<pid>/stat): tells a reused pid from the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return started is None or now is None or now == started


class Claims:
    """The claims held by this process, kept alive by a heartbeat thread.

    Args:
        timeout_s: a claim untouched for this long is stale (env ``SCOREBENCH_CLAIM_TIMEOUT_S``).
        heartbeat_s: how often held claims are touched (env ``SCOREBENCH_CLAIM_HEARTBEAT_S``).
    """

    def __init__(self, timeout_s: float | None = None, heartbeat_s: float | None = None) -> None:
        self.timeout_s = float(timeout_s or os.environ.get("SCOREBENCH_CLAIM_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        self.heartbeat_s = float(heartbeat_s or os.environ.get("SCOREBENCH_CLAIM_HEARTBEAT_S",
                                                               min(DEFAULT_HEARTBEAT_S, self.timeout_s / 4)))
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = {"host": self.host, "pid": self.pid, "started": _start_time(self.pid)}
        self._held: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- claiming ------------------------------------------------------------------------------
    def try_claim(self, path: Path) -> bool:
        """Claim ``path`` if it is free or stale; True if this process now holds it."""
        path = Path(path)
        if self._create(path):
            return True
        info = self._read(path)
        if info is None or not self.is_stale(path, info):
            return False
        token = info.get("token", "")
        marker = path.with_name(f"{path.name}.takeover-{token}")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False  # another worker is taking it over
        try:
            if (self._read(path) or {}).get("token") == token:
                path.unlink(missing_ok=True)
            return self._create(path)
        finally:
            marker.unlink(missing_ok=True)

    def _create(self, path: Path) -> bool:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({**self.owner, "token": token, "claimed": time.time()}, f)
        with self._lock:
            self._held[path] = token
        self._ensure_heartbeat()
        return True

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: judged by its age alone
        return info if isinstance(info, dict) else {}

    def is_stale(self, path: Path, info: dict | None = None) -> bool:
        """True where the claim's heartbeat is older than the timeout or its owner is dead on this host."""
        info = self._read(path) if info is None else info
        if info is None:
            return True
        if info.get("host") == self.host and isinstance(info.get("pid"), int) and info["pid"] != self.pid:
            if not _alive(info["pid"], info.get("started")):
                return True
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.timeout_s

    def holds(self, path: Path) -> bool:
        """True while ``path`` is this process's claim (its token is in the file)."""
        path = Path(path)
        with self._lock:
            token = self._held.get(path)
        return token is not None and (self._read(path) or {}).get("token") == token

    def release(self, path: Path) -> None:
        """Remove the claim, if it is still this process's."""
        path = Path(path)
        with self._lock:
            token = self._held.pop(path, None)
        if token is not None and (self._read(path) or {}).get("token") == token:
            path.unlink(missing_ok=True)

    def release_all(self) -> None:
        for path in list(self._held):
            self.release(path)
        self._stop.set()

    # --- heartbeat -----------------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="claims-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                held = list(self._held.items())
            for path, token in held:
                if (self._read(path) or {}).get("token") == token:
                    try:
                        os.utime(path)
                    except FileNotFoundError:
                        pass
