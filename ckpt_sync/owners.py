"""Who owns something (a running job, a lock, a temp file) and whether that owner is provably dead.

An owner is ``host:pid:start`` where ``start`` is the process's start time in clock ticks since
boot (``/proc/<pid>/stat``), so a pid reused by another process does not keep a dead owner alive.
Only an owner on this host can be proven dead; elsewhere callers rely on heartbeats. "This host" is
this host name *and* pid namespace (``this_host``): two containers of a pod share a host name but
not their pids, so to each the other's pids prove nothing.
"""

from __future__ import annotations

import hashlib
import os
import socket
from functools import cache

from . import platform


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
def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:  # not Linux: the host name alone
        return ""
    return link[5:-1] if link.startswith("pid:[") else link


def this_host() -> str:
    """The host part of an owner: the host name, and ``/<pid namespace>`` where there is one."""
    namespace = _pid_namespace()
    return socket.gethostname() + (f"/{namespace}" if namespace else "")


@cache
def host_tag() -> str:
    """A short, file-name-safe tag of ``this_host`` (for temp names)."""
    return hashlib.sha256(this_host().encode()).hexdigest()[:8]


# How a temp file's name names its writer: host tag, pid and (where known) the process's start time.
WRITER_TAG = r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)(?:\.(?P<start>\d+))?"


@cache
def _writer_tag(pid: int) -> str:
    start = _start_ticks(pid)
    return f"{host_tag()}-{pid}" + (f".{start}" if start else "")


def writer_tag() -> str:
    """This process as WRITER_TAG spells it, for the name of a temp file it writes."""
    return _writer_tag(os.getpid())


def writer_alive(host: str, pid: str | int, start: str | int | None = None) -> bool | None:
    """Whether the writer a temp name's WRITER_TAG names is running: True when it is (or may be: a
    process we may not signal), False when it is provably gone (no such pid, or the pid now belongs
    to a process started at another time), None when it cannot be told here (another host or
    namespace) and only the temp's age can judge it."""
    if host != host_tag():
        return None
    return not pid_dead(int(pid), int(start) if start else None)


def owner_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{this_host()}:{pid}:{_start_ticks(pid) or 0}"


def pid_dead(pid: int, start: int | None = None) -> bool:
    """True only when process ``pid`` (started at ``start`` ticks, when known) is certainly gone."""
    gone = platform.process_gone(pid)
    if gone:
        return True
    if gone is None:  # cannot be told here: alive, as far as anyone may act on it
        return False
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
    if host != this_host():  # another host, container, or an older version's name: rely on the heartbeat
        return True
    return not pid_dead(pid, start)
