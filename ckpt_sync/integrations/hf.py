"""Hugging Face Trainer integration: one callback, and a restore helper for a fresh host.

    trainer = Trainer(..., callbacks=[CkptSyncCallback("s3://bucket/run")])
    restore_latest("s3://bucket/run", args.output_dir)     # on a fresh host, before:
    trainer.train(resume_from_checkpoint=True)

Each ``checkpoint-{step}/`` the Trainer saves is queued (durably, held against the Trainer's own
``save_total_limit`` rotation) as one folder checkpoint with its step, epoch, best metric and role;
the upload never blocks training. Only the world process zero uploads. Importing this module needs
``transformers`` (the ``hf`` extra); ``import ckpt_sync`` does not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import Cancelled, OperationFailed, StorageError, install_hint

try:
    from transformers import TrainerCallback
except ImportError as err:  # one clear line instead of a bare ModuleNotFoundError deep in a training script
    raise ImportError(f"ckpt_sync.hf needs Hugging Face transformers: {install_hint('hf')} ({err})") from err

from ..api import open_store
from ..format.manifest import RESUMABLE
from ..format.selection import Selection
from ..service import layouts
from ..service.settings import resolve_store
from .sync import LazySync, SyncOptions, restore_first

log = logging.getLogger("ckpt_sync.hf")

TRAINER_CHECKPOINTS = "checkpoint-[0-9]*"  # the Trainer's checkpoint-{step}/ folders


class CkptSyncCallback(TrainerCallback):
    """Queue every saved ``checkpoint-N/`` for upload to ``repo``; wait for the uploads when training ends.

    ``options``: the keywords of ``SyncOptions`` (integrations/sync.py): ``key_file``, ``state_dir``
    (default ``<output_dir>/.ckpt-sync``), ``keep``, ``worker``, ``drain_timeout``.
    """

    def __init__(self, repo: str | None = None, **options: Any) -> None:
        self.sync = LazySync(SyncOptions(repo, **options))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.sync.resume_leftovers(Path(args.output_dir))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            log.warning("[ckpt-sync] the Trainer reported a save but %s is not there; nothing queued", folder)
            return
        self._enqueue(folder, state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        best = state.best_model_checkpoint
        if args.load_best_model_at_end and best and Path(best).is_dir():
            # Already queued as best when it was saved; this only matters if it was not (a no-op otherwise).
            self._enqueue(Path(best), state, best=True)
        self.sync.drain()

    def _enqueue(self, folder: Path, state: Any, *, best: bool = False) -> None:
        saved = layouts.hf_trainer_state(folder)
        metadata = layouts.hf_metadata(folder, saved)
        if not saved:  # the folder's state file is the Trainer's own record; fall back to the live state
            metadata.update(global_step=state.global_step, epoch=state.epoch)
        tags = ("best",) if best or layouts.hf_is_best(folder, saved) else ()
        self.sync.enqueue(folder, tags=tags, metadata=metadata)


def restore_latest(
    repo: str | None, output_dir: str | os.PathLike[str], *, key_file: str | os.PathLike[str] | None = None
) -> Path | None:
    """Pull the newest resumable Trainer checkpoint into ``output_dir/checkpoint-{step}/`` (verified,
    falling back past damaged ones) and return its path; None when the repository has none yet.

    Afterwards ``trainer.train(resume_from_checkpoint=True)`` resumes from it.
    """
    dest = Path(output_dir)
    store = resolve_store(repo, key_file=key_file)
    try:
        r = open_store(store, create=True)
    except (StorageError, Cancelled) as err:  # training never waits on the store
        local = sorted(p for p in dest.glob("checkpoint-*") if p.is_dir()) if dest.is_dir() else []
        if not local:
            raise OperationFailed(
                f"no checkpoint in {dest}, and the repository {store.url} cannot be read ({err}): "
                "bring the store back, or train without resume_from_checkpoint"
            ) from None
        log.warning(
            "[ckpt-sync] cannot reach %s (%s); the Trainer resumes from the checkpoints in %s",
            store.url,
            err,
            dest,
        )
        return None
    try:
        m = restore_first(r, dest, Selection(role=RESUMABLE, name=TRAINER_CHECKPOINTS))
    finally:
        r.provider.close()
    return None if m is None else dest / m.name
