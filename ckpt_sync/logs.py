"""Log setup: plain lines for people, one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Hashable

from .redact import redact

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    """Plain lines, secrets redacted (redact.py), tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class Throttle:
    """For events that repeat during an outage: the first of each kind is logged at once, repeats
    within ``period`` seconds are only counted, and the first one after the period is logged with
    that count (one summary line per kind per period instead of one line per retry)."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._shown: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> int | None:
        """None: hold this one back (log it at DEBUG). Else log it; the number is how many were held
        back since the last line of this kind."""
        now = time.monotonic()
        with self._lock:
            last = self._shown.get(key)
            if last is not None and now - last < self.period:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._shown[key] = now
            return self._held.pop(key, 0)

    def forget(self, key: Hashable) -> None:
        """The trouble is over (the job committed): the next failure is news again."""
        with self._lock:
            self._shown.pop(key, None)
            self._held.pop(key, None)


def configure(level: int, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("ckpt-sync: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python warnings of the libraries we use (a watchdog RuntimeWarning, a deprecation) are theirs,
    # not the user's: they go through logging, shown only with --debug.
    logging.captureWarnings(True)
    if level > logging.DEBUG:
        for noisy in ("botocore", "boto3", "urllib3", "azure", "google", "watchdog", "s3transfer", "py.warnings"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
