"""Who owns something (a running job, a lock, a temp file) and whether that owner is provably dead.

An owner is ``host:pid:start`` where ``start`` is the process's start time in clock ticks since
boot (``/proc/<pid>/stat``), so a pid reused by another process does not keep a dead owner alive.
Only an owner on this host can be proven dead; elsewhere callers rely on heartbeats.
"""

from __future__ import annotations

import hashlib
import os
import socket
from functools import cache


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so cut after its ')'.
    try:
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


@cache
def host_tag() -> str:
    """A short, file-name-safe tag of this host (for temp names)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}"


def pid_dead(pid: int, start: int | None = None) -> bool:
    """True only when process ``pid`` (started at ``start`` ticks, when known) is certainly gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    if start:
        now = _start_ticks(pid)
        return now is not None and now != start  # the pid was reused by another process
    return False


def owner_alive(owner: str | None) -> bool:
    """False when ``owner`` is missing or provably dead; True when alive or not on this host."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) >= 3 and parts[-1].isdigit() and parts[-2].isdigit():
        host, pid, start = ":".join(parts[:-2]), int(parts[-2]), int(parts[-1])
    elif parts[-1].isdigit():  # host:pid, as older versions wrote it
        host, pid, start = ":".join(parts[:-1]), int(parts[-1]), 0
    else:
        return True
    if host != socket.gethostname():
        return True  # cannot tell from here: rely on the heartbeat
    return not pid_dead(pid, start)
