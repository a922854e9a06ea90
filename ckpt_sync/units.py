"""Sizes and durations for humans: parse ``8M`` / ``512KiB``, format ``1.2 GiB``; parse ``2d`` / ``36h``."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"8M"``, ``"8MiB"``, ``"8mb"``, ``"1048576"`` -> bytes (binary multiples)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"not a size: {text!r} (examples: 8M, 512K, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


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
