"""Path safety: one set of rules for the names push agrees to store and pull agrees to write.

A manifest is authentic but may still name paths no host should write (a buggy writer, a crafted
copy): absolute paths, ``..``, control characters, names Windows or macOS cannot hold apart. Push
refuses them before uploading anything; a reader refuses them before writing anything.

Some names only some hosts cannot hold: the names Windows reserves (``CON``, ``NUL``, ``COM1``,
with or without an extension), a trailing dot or space, ``<>"|?*``; and, on a file system that folds
case (Windows, macOS by default), two paths that differ only in case. Those are pure checks here;
a restore applies them where they matter (transfer/restore.py, platform.py deciding which apply).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

from ..errors import IntegrityError

NAME_MAX = 255  # bytes per path component (every common filesystem's limit)
PATH_MAX = 4096  # bytes per relative path
MAX_PATH_DEPTH = 64  # components per path
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def component_problem(part: str) -> str | None:
    """Why ``part`` cannot be one path component on every host we restore to, or None."""
    if part in ("", ".", ".."):
        return "empty, '.' or '..' component"
    if _CONTROL.search(part):
        return "control character (newline, tab, ...) in a name"
    if "\\" in part or "/" in part:
        return "slash or backslash in a name"
    if ":" in part:
        return "':' in a name (a drive letter or an NTFS stream)"
    if part != part.strip():
        return "leading or trailing whitespace in a name"
    try:
        encoded = part.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"a name longer than {NAME_MAX} bytes"
    return None


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe relative POSIX path inside a checkpoint, or None."""
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path, escaping the target folder"
    if len(path.encode("utf-8", "surrogatepass")) > PATH_MAX:
        return f"longer than {PATH_MAX} bytes"
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        return f"more than {MAX_PATH_DEPTH} levels deep"
    for part in parts:
        problem = component_problem(part)
        if problem:
            return problem if part != ".." else "'..' component, escaping the target folder"
    return None


def file_set_problem(paths: list[str]) -> str | None:
    """Why these paths cannot all be files of one checkpoint (a duplicate, or a file that is also a
    folder of another), or None."""
    seen: set[str] = set()
    for p in paths:
        if p in seen:
            return f"{p!r} is listed twice"
        seen.add(p)
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in seen:
                return f"{prefix!r} is both a file and a folder (of {p!r})"
    return None


def safe_relative_path(path: str) -> PurePosixPath:
    """A manifest path as a PurePosixPath, or IntegrityError when it is not safe to write (see
    ``path_problem``)."""
    problem = path_problem(path) if isinstance(path, str) else "not a string"
    if problem:
        raise IntegrityError(f"unsafe path in manifest: {path!r} ({problem})")
    return PurePosixPath(path)


# Names Windows cannot hold, whatever the extension (``CON.txt`` is the console too).
WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))]
)
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*\x00-\x1f]')


def windows_component_problem(part: str) -> str | None:
    """Why Windows cannot hold ``part`` as a file or folder name, or None."""
    bad = _WINDOWS_FORBIDDEN.search(part)
    if bad:
        shown = repr(bad.group()) if bad.group().isprintable() else f"control character {bad.group()!r}"
        return f"{shown} is not allowed in a Windows name"
    if part.endswith((".", " ")):
        return "Windows drops a trailing dot or space from a name"
    stem = part.split(".", 1)[0].rstrip(" ")
    if stem.upper() in WINDOWS_RESERVED:
        return f"{stem.upper()} is a device name on Windows, with or without an extension"
    return None


def windows_path_problem(path: str) -> str | None:
    """Why Windows cannot hold the relative POSIX path ``path`` (its first bad component), or None."""
    for part in path.split("/"):
        problem = windows_component_problem(part)
        if problem:
            return f"{part!r}: {problem}"
    return None


def folded(path: str) -> str:
    """``path`` as a case-insensitive file system compares it: one Unicode normal form, case folded."""
    return unicodedata.normalize("NFC", path).casefold()


def case_collisions(paths: list[str]) -> list[tuple[str, str]]:
    """Pairs of paths (or folders on their way) that differ only in case or Unicode form, each pair
    once, in the order found: on a case-insensitive file system the second would land on the first."""
    seen: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for p in paths:
        parts = p.split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            first = seen.setdefault(folded(prefix), prefix)
            if first != prefix:
                if (first, prefix) not in pairs:
                    pairs.append((first, prefix))
                break
    return pairs
