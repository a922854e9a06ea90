"""Atomic file writes: temp file in the same folder, flush, fsync, rename, fsync the folder.

A reader (or a crash at any instant) sees either the old file or the complete new one, never a
prefix. Temp names are hidden and end in ``.tmp`` so watchers and globs for ``checkpoint_*.pt`` skip them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def temp_path_for(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")


def is_temp_name(name: str) -> bool:
    return bool(TEMP_NAME.match(name))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows, or exotic filesystems: nothing more we can do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it replaces ``final`` durably, on error it leaves no trace."""
    final = Path(final)
    tmp = temp_path_for(final)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


class _KeepsWriteErrors:
    """A binary file whose ``write`` and ``flush`` keep the first OSError they raised (see
    ``write_keeping_errors``); otherwise the file itself (``fileno``, ``name``, ``with``)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _KeepsWriteErrors:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.__exit__(*exc)

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as err:
            self.error = self.error or err
            raise


def write_keeping_errors(f: IO[bytes], write: Callable[[IO[bytes]], Any]) -> None:
    """``write(f)``, with an OSError it swallowed raised as itself.

    torch.save's zip writer turns a failed write (a full disk) into RuntimeError("unexpected pos
    N vs M"), losing the errno that says what happened; the caller can only report it when it sees
    the OSError.
    """
    kept = _KeepsWriteErrors(f)
    try:
        write(kept)  # type: ignore[arg-type]
    except Exception as err:
        if kept.error is None or err is kept.error:
            raise
        raise OSError(kept.error.errno, kept.error.strerror, getattr(f, "name", None)) from err


def atomic_write(final: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    with atomic_open(final) as f:
        write(f)
    return Path(final)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(final, lambda f: f.write(data))


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> Path:
    data = (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    return atomic_write_bytes(final, data)
