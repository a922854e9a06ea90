"""A read-only fsspec filesystem over a repository: ``ckptsync://<checkpoint>/<path>``.

``<checkpoint>`` is an id, a unique id prefix, a name or ``latest``; ``<path>`` a file inside it.
Anything that reads fsspec URLs can then read checkpoints without a local copy::

    fsspec.open("ckptsync://latest/model.pt", repo="s3://bucket/run42").open()

Registered under the ``fsspec.specs`` entry-point group (pyproject.toml); needs the ``fsspec``
extra. Storage options: ``repo`` (URL; default ``$CKPT_SYNC_REPO``, else the embedded repository),
``key_file`` (default ``$BACKUP_ENCRYPTION_KEY``, else the default key file), ``cache_bytes``.
The root lists one directory per checkpoint, named by its id. Files are ``reader.CheckpointFile``
objects: every chunk verified on read.
"""

from __future__ import annotations

import os
from typing import Any

from fsspec.spec import AbstractFileSystem

from ..errors import OperationFailed, UsageError
from ..format.manifest import Manifest
from ..format.repository import Repository
from ..transfer.reader import DEFAULT_CACHE_BYTES, CheckpointFile


class CkptSyncFileSystem(AbstractFileSystem):
    protocol = "ckptsync"
    root_marker = ""

    def __init__(
        self,
        repo: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.repo_url = repo
        self.key_file = key_file
        self.cache_bytes = cache_bytes
        self._repo: Repository | None = None

    @property
    def repository(self) -> Repository:
        if self._repo is None:
            from ..api import open_repository

            self._repo = open_repository(self.repo_url, key_file=self.key_file)
        return self._repo

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = path[len("ckptsync://") :] if path.startswith("ckptsync://") else path
        return path.strip("/")

    def _split(self, path: str) -> tuple[Manifest | None, str]:
        """(the checkpoint the path names, the path inside it); (None, "") for the root."""
        from ..format.lookup import find_manifest

        path = self._strip_protocol(path)
        if not path:
            return None, ""
        selector, _, inner = path.partition("/")
        try:
            return find_manifest(self.repository, selector), inner
        except (UsageError, OperationFailed) as err:
            raise FileNotFoundError(f"ckptsync://{path}: {err}") from None

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        manifest, inner = self._split(path)
        if manifest is None:
            entries = [
                {"name": m.id, "size": m.size, "type": "directory", "checkpoint": m.name, "created": m.created}
                for m in self.repository.manifests()
            ]
        else:
            entries = self._children(manifest, path, inner)
        return entries if detail else [e["name"] for e in entries]

    def _children(self, manifest: Manifest, path: str, inner: str) -> list[dict[str, Any]]:
        base = self._strip_protocol(path)
        prefix = f"{inner}/" if inner else ""
        seen: dict[str, dict[str, Any]] = {}
        for f in manifest.files:
            if f.path == inner:
                return [{"name": base, "size": f.size, "type": "file", "sha256": f.sha256, "blake3": f.blake3}]
            if not f.path.startswith(prefix):
                continue
            head, sep, _ = f.path[len(prefix) :].partition("/")
            name = f"{base}/{head}"
            if sep:
                d = seen.setdefault(name, {"name": name, "size": 0, "type": "directory"})
                d["size"] += f.size
            else:
                seen[name] = {"name": name, "size": f.size, "type": "file", "sha256": f.sha256, "blake3": f.blake3}
        if not seen:
            raise FileNotFoundError(f"ckptsync://{base}: no such file in checkpoint {manifest.name} ({manifest.id})")
        return sorted(seen.values(), key=lambda e: e["name"])

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        manifest, inner = self._split(path)
        name = self._strip_protocol(path)
        if manifest is None:
            return {"name": "", "size": 0, "type": "directory"}
        if not inner:
            return {"name": name, "size": manifest.size, "type": "directory", "checkpoint": manifest.name}
        for f in manifest.files:
            if f.path == inner:
                return {"name": name, "size": f.size, "type": "file", "sha256": f.sha256, "blake3": f.blake3}
        if any(f.path.startswith(f"{inner}/") for f in manifest.files):
            size = sum(f.size for f in manifest.files if f.path.startswith(f"{inner}/"))
            return {"name": name, "size": size, "type": "directory"}
        raise FileNotFoundError(f"ckptsync://{name}: no such file in checkpoint {manifest.name} ({manifest.id})")

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> CheckpointFile:
        if mode != "rb":
            raise PermissionError(f"ckptsync:// is read-only (mode {mode!r}); write with `ckpt-sync push`")
        from ..format.contents import file_entry

        manifest, inner = self._split(path)
        if manifest is None or not inner:
            raise IsADirectoryError(f"ckptsync://{self._strip_protocol(path)} is a checkpoint, not a file in it")
        try:
            entry = file_entry(manifest, inner)
        except UsageError as err:
            raise FileNotFoundError(f"ckptsync://{self._strip_protocol(path)}: {err}") from None
        return CheckpointFile(self.repository, manifest, entry, cache_bytes=self.cache_bytes)
