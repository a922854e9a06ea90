"""PyTorch Lightning integration: a ``CheckpointIO`` plugin, and a resume helper for a fresh host.

    trainer = Trainer(plugins=[CkptSyncCheckpointIO("s3://bucket/run")], callbacks=[ModelCheckpoint(...)])
    trainer.fit(model, ckpt_path=latest_path("s3://bucket/run", "checkpoints/"))

Each checkpoint Lightning saves is written atomically (temp file, fsync, rename) and handed to the
durable sync queue with its step and epoch; the upload never blocks the training step.
``remove_checkpoint`` (``save_top_k`` rotation) removes only the local file: what the repository
keeps is decided by ckpt-sync's own retention (``keep``). Lightning calls ``save_checkpoint`` on
global rank 0 only, so under DDP one rank uploads. Works with ``lightning.pytorch`` and
``pytorch_lightning`` (the class is a CheckpointIO of whichever of them is installed). Importing
this module needs Lightning (the ``lightning`` extra); ``import ckpt_sync`` does not.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..api import open_repository, open_store
from ..errors import Cancelled, OperationFailed, StorageError, install_hint
from ..format.manifest import RESUMABLE, Manifest
from ..format.selection import ANY, Selection
from ..fs.atomic import atomic_open
from ..service import layouts
from ..service.settings import resolve_store
from .sync import LazySync, SyncOptions, restore_first

log = logging.getLogger("ckpt_sync.lightning")


def _torch_io_bases() -> tuple[type, ...]:
    bases = []
    for module in ("lightning.fabric.plugins.io.torch_io", "lightning_fabric.plugins.io.torch_io"):
        try:
            bases.append(importlib.import_module(module).TorchCheckpointIO)
        except ImportError:
            continue
    if not bases:
        raise ImportError(f"ckpt_sync.lightning needs PyTorch Lightning: {install_hint('lightning')}")
    return tuple(bases)


def _is_global_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class CkptSyncCheckpointIO(*_torch_io_bases()):  # type: ignore[misc]
    """Save locally (atomically), queue every checkpoint for upload to ``repo``, pull missing ones on load.

    ``options``: the keywords of ``SyncOptions`` (integrations/sync.py): ``key_file``, ``state_dir``
    (default ``<checkpoint folder>/.ckpt-sync``), ``keep``, ``worker``, ``drain_timeout`` (bounds the
    wait in ``teardown``).
    """

    def __init__(self, repo: str | None = None, **options: Any) -> None:
        super().__init__()
        self.sync = LazySync(SyncOptions(repo, **options))

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (the repository URL says where)")
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(final) as f:
            torch.save(checkpoint, f)
        self.sync.enqueue(final, metadata=checkpoint_metadata(checkpoint))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        local = Path(path)
        if _is_global_zero():
            self.sync.resume_leftovers(local.parent)  # an earlier run killed after a save: upload it now
        if not local.exists():
            self._pull(local)
        if map_location is None:
            return super().load_checkpoint(path, weights_only=weights_only)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        """Only the local file: a queued upload still goes ahead (held), and the remote copy stays."""
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.sync.drain()
        super().teardown()

    def _pull(self, local: Path) -> None:
        r = open_repository(self.sync.options.repo, key_file=self.sync.options.key_file)
        try:
            m = restore_first(r, local.parent, Selection(role=ANY, name=glob.escape(local.name)))
        finally:
            r.provider.close()
        if m is None:
            raise FileNotFoundError(f"checkpoint {local} is neither here nor in {r.url}")


def checkpoint_metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Push metadata of a Lightning checkpoint dict: step, epoch, and whether training can resume from it."""
    meta: dict[str, Any] = {"framework": "lightning"}
    for key in ("global_step", "epoch"):
        if isinstance(checkpoint.get(key), int):
            meta[key] = checkpoint[key]
    meta["role"] = layouts.RESUMABLE if checkpoint.get("optimizer_states") else layouts.MODEL_ONLY
    return meta


def _local_step(path: Path) -> int | None:
    step = layouts.file_metadata(path.name).get("global_step")
    if step is not None:
        return step
    try:  # last.ckpt and custom names: read the step (memory-mapped, no tensor data loaded)
        ck = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:
        return None
    return ck.get("global_step") if isinstance(ck, dict) and isinstance(ck.get("global_step"), int) else None


def latest_path(
    repo: str | None, dirpath: str | os.PathLike[str], *, key_file: str | os.PathLike[str] | None = None
) -> str | None:
    """The newest resumable checkpoint for ``trainer.fit(ckpt_path=...)``: a local one in ``dirpath`` when
    the repository has nothing newer, else the repository's newest, restored (verified) into ``dirpath``.
    None when there is none anywhere (a first run starts fresh)."""
    folder = Path(dirpath)
    local = [(s, p) for p in folder.glob("*.ckpt") if not p.is_symlink() and (s := _local_step(p)) is not None]
    best_local = max(local, default=None, key=lambda sp: (sp[0], sp[1].stat().st_mtime_ns))
    store = resolve_store(repo, key_file=key_file)
    try:
        r = open_store(store, create=True)
    except (StorageError, Cancelled) as err:  # training never waits on the store
        if best_local is None:
            raise OperationFailed(
                f"no checkpoint in {folder}, and the repository {store.url} cannot be read ({err}): "
                "bring the store back, or start without ckpt_path"
            ) from None
        log.warning("[ckpt-sync] cannot reach %s (%s); resuming from the local %s", store.url, err, best_local[1])
        return str(best_local[1])
    try:
        newer: Any = None
        if best_local is not None:  # only what is newer than the local one (a tie stays local)

            def newer(m: Manifest, step: int = best_local[0]) -> bool:
                return (m.position.global_step or -1) > step

        m = restore_first(r, folder, Selection(role=RESUMABLE, name="*.ckpt"), accept=newer)
    finally:
        r.provider.close()
    if m is not None:
        return str(folder / m.name)
    return str(best_local[1]) if best_local else None
