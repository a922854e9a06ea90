"""What is inside one checkpoint: its files, a chosen part of them, one file of it.

Selection is by glob on the file's path inside the checkpoint (``fnmatch``: ``*`` also crosses
``/``), so ``--include '*.safetensors'`` or ``--exclude 'optimizer/*'`` pick files of a folder
checkpoint. A selection is a smaller manifest of the same checkpoint: restoring it is the same
verified, staged restore as a whole one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fnmatch import fnmatchcase

from .errors import UsageError
from .manifest import FileEntry, Manifest


def select_files(manifest: Manifest, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Manifest:
    """The checkpoint with only the files matching any of ``include`` (all when empty) and none of
    ``exclude``. Raises UsageError when nothing is left, naming what the checkpoint holds."""
    if not include and not exclude:
        return manifest
    kept = tuple(
        f
        for f in manifest.files
        if (not include or any(fnmatchcase(f.path, g) for g in include))
        and not any(fnmatchcase(f.path, g) for g in exclude)
    )
    if not kept:
        sample = ", ".join(f.path for f in manifest.files[:5]) + (" ..." if len(manifest.files) > 5 else "")
        raise UsageError(
            f"no file of {manifest.name} ({manifest.id}) matches --include/--exclude; it holds: {sample} "
            f"(see `ckpt-sync ls {manifest.id}`)"
        )
    return dataclasses.replace(manifest, files=kept)


def file_entry(manifest: Manifest, path: str | None) -> FileEntry:
    """One file of the checkpoint: ``path`` inside it, or None for a checkpoint of exactly one file."""
    if path is None:
        if len(manifest.files) == 1:
            return manifest.files[0]
        raise UsageError(
            f"{manifest.name} ({manifest.id}) holds {len(manifest.files)} files: name one "
            f"(see `ckpt-sync ls {manifest.id}`)"
        )
    for f in manifest.files:
        if f.path == path:
            return f
    raise UsageError(f"{manifest.name} ({manifest.id}) has no file {path!r} (see `ckpt-sync ls {manifest.id}`)")
