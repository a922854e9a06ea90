"""Safe loading of checkpoints: ``weights_only=True`` always, ``mmap=True`` by default, any codec.

A pickle can run code, so nothing here ever unpickles arbitrary objects (a bare
``torch.load`` would); a checkpoint that needs that is reported as not loadable, not trusted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..fs.atomic import temp_path_for
from .compression import decompress
from .naming import parse_checkpoint_path


@contextlib.contextmanager
def plain_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The checkpoint as a plain ``torch.save`` file: itself, or a decompressed temp copy removed afterwards."""
    path = Path(path)
    parsed = parse_checkpoint_path(path)
    codec = parsed[2] if parsed else ""
    if not codec:
        yield path
        return
    # Beside the checkpoint when we can write there (same disk, big enough); else the system temp dir.
    try:
        tmp = temp_path_for(path)
        f = open(tmp, "xb")  # noqa: SIM115 - closed below, before the file is used
    except OSError:
        fd, name = tempfile.mkstemp(suffix=".pt")
        tmp, f = Path(name), os.fdopen(fd, "wb")
    try:
        with f:
            decompress(path, f, codec)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = True) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)``, decompressing first if needed.

    With ``mmap=True`` tensors are mapped copy-on-write from the file, so loading a large checkpoint
    costs little memory and time until values are used (a load-time optimisation).
    """
    # Windows cannot remove a mapped file, so compressed checkpoints load fully there.
    with plain_file(path) as plain:
        use_mmap = mmap and not (sys.platform == "win32" and Path(plain) != Path(path))
        obj = torch.load(plain, map_location="cpu", weights_only=True, mmap=use_mmap)
    if not isinstance(obj, dict):
        raise TypeError(f"{Path(path).name} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj
