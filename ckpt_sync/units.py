"""Sizes, rates and durations for humans: parse ``8M`` / ``512KiB`` / ``50MB`` / ``20MiB/s``, format
``1.2 GiB``; parse ``2d`` / ``36h``. The one place a size or a rate is read, so every option and
setting takes the same units."""

from __future__ import annotations

import re

from .errors import UsageError

_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?b)?|(b))?\s*", re.IGNORECASE)
SIZE_EXAMPLES = "8M, 8MiB (8 x 2^20 bytes), 8MB (8 x 10^6 bytes), 512K, 1G"


class AsWritten(int):
    """A number of bytes (or bytes per second) that remembers how it was written (``"50MB"``), so that
    ``config show`` shows it back as the user wrote it; otherwise a plain int."""

    written: str

    def __new__(cls, value: int, written: str) -> AsWritten:
        number = super().__new__(cls, value)
        number.written = written.strip()
        return number


def parse_size(text: str) -> int:
    """Bytes from a size as people write it. ``KiB``/``MiB``/... and a letter alone (``8M``, as it
    always was here and in rclone) are powers of 1024; ``kB``/``MB``/``GB``/``TB`` are powers of 1000
    (SI), so ``"50MB"`` is 50,000,000 bytes; ``"1048576"`` and ``"100B"`` are bytes."""
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise UsageError(f"not a size: {text!r} (examples: {SIZE_EXAMPLES})")
    number, letter, suffix = m.group(1), (m.group(2) or "").upper(), (m.group(3) or "").lower()
    base = 1000 if suffix == "b" else 1024  # "MB" is SI; "M" and "MiB" are binary
    return int(float(number) * base ** _POWERS[letter])


def parse_rate(text: str) -> int:
    """Bytes per second: a size (``parse_size``), optionally followed by ``/s`` (``"50MB/s"``)."""
    size = re.sub(r"\s*/\s*s(ec)?\s*$", "", str(text), flags=re.IGNORECASE)
    try:
        return AsWritten(parse_size(size), str(text))
    except UsageError:
        raise UsageError(f"not a rate: {text!r} (examples: 50M, 50MB/s, 20MiB/s)") from None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``"2d"``, ``"36h"``, ``"90m"``, ``"1w"``, ``"3600"`` (seconds) -> seconds; combinations such as
    ``"1d12h"`` add up."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", str(text).strip().lower())
    if not parts or re.sub(r"[\d.\s]+[smhdw]?", "", str(text).strip().lower()):
        raise UsageError(f"not a duration: {text!r} (examples: 2d, 36h, 90m, 1w)")
    seconds = sum(float(n) * _SECONDS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"not a positive duration: {text!r}")
    return seconds
