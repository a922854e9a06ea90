"""A TCP proxy on loopback that breaks a share of the requests passing through it.

Put it in front of a real server and point the client's endpoint at ``proxy.url``. Whenever a
client starts a new request on a connection (it sends after the server last answered), the proxy
draws that request's fate:

- pass it through (most of them);
- ``reset_request``: cut the connection (TCP RST) before the server has the request;
- ``reset_response``: let the request reach the server (which may act on it), then cut the
  connection before the client has the answer: the case that makes retried writes interesting;
- ``stall``: move nothing in either direction for ``stall_seconds`` then cut it, or, with
  ``stall_seconds=None``, until the client gives up (its read timeout) or the proxy stops.

``down_after_bytes`` turns the store off for good once that many request bytes went through:
every open and new connection is reset from then on. ``counts`` records what happened;
``bytes_up`` and ``bytes_down`` count what went through to the server and back (with no faults,
a byte meter of a client's traffic with the store).
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence

FAULTS = ("reset_request", "reset_response", "stall")


def _reset(*socks: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


class FaultProxy:
    def __init__(
        self,
        target_port: int,
        *,
        fault_rate: float = 0.0,
        faults: Sequence[str] = FAULTS,
        stall_seconds: float | None = 1.0,
        down_after_bytes: int | None = None,
        seed: int = 0,
    ) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        self.target = ("127.0.0.1", target_port)
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.stall_seconds = stall_seconds
        self.down_after_bytes = down_after_bytes
        self.counts: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0
        self.down = False
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def injected(self) -> int:
        return sum(self.counts[f] for f in FAULTS)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        t = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the proxy -------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.down:
                self.counts["refused"] += 1
                _reset(client)
                continue
            t = threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True)
            t.start()
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _draw(self) -> str:
        with self._lock:
            self.counts["requests"] += 1
            if self._rng.random() >= self.fault_rate:
                return "pass"
            fate = self._rng.choice(self.faults)
            self.counts[fate] += 1
            return fate

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            fate, answered, stalled_at = "pass", True, 0.0
            while not self._stopping.is_set():
                if self.down:
                    _reset(client, upstream)
                    return
                if (
                    fate == "stall"
                    and self.stall_seconds is not None
                    and time.monotonic() - stalled_at > self.stall_seconds
                ):
                    _reset(client, upstream)
                    return
                for key, _ in sel.select(timeout=0.1):
                    sock = key.fileobj
                    try:
                        data = sock.recv(1 << 16)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:  # one side closed: close the other (everything read was forwarded)
                        client.close()
                        upstream.close()
                        return
                    if sock is client:
                        if answered:  # a new request starts on this connection
                            fate, answered = self._draw(), False
                            stalled_at = time.monotonic()
                        with self._lock:
                            self.bytes_up += len(data)
                            if self.down_after_bytes is not None and self.bytes_up > self.down_after_bytes:
                                self.down = True
                        if fate == "reset_request" or self.down:
                            _reset(client, upstream)
                            return
                        if fate != "stall":
                            upstream.sendall(data)
                    else:
                        if fate == "stall":
                            continue
                        if fate == "reset_response":
                            _reset(client, upstream)
                            return
                        answered = True
                        with self._lock:
                            self.bytes_down += len(data)
                        client.sendall(data)
            _reset(client, upstream)
