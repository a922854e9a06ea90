"""``CheckpointManager``: checkpointing for a PyTorch training loop (docs/TRAINING.md).

Call ``maybe_save(step, epoch, val_loss=...)`` once per step (after ``optimizer.step()``): it saves
when the time or step trigger fires, saves the best model when ``val_loss`` improves, and is the
safe point where a pending SIGINT/SIGTERM turns into an emergency checkpoint. ``recover()`` at start
resumes from the newest valid checkpoint (walking back past damaged ones, pulling from ``repo`` on
a fresh host). Files: ``checkpoint_{session_id}_{global_step}.pt``, ``training_session.json``,
``best_model/`` — all written atomically; FIFO rotation keeps ``max_keep``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import secrets
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import torch

from .. import platform
from ..errors import (
    Cancelled,
    CkptSyncError,
    IntegrityError,
    MissingKeyError,
    NotFound,
    OperationFailed,
    StorageError,
    UsageError,
)
from ..format.lookup import latest_candidates
from ..format.manifest import BEST, RESUMABLE, Manifest
from ..format.manifest import MODEL_ONLY as MODEL_ONLY_ROLE
from ..format.selection import Selection, select
from ..fs.atomic import atomic_open, fsync_dir, temp_path_for, write_keeping_errors
from ..transfer.retention import Candidate, RetentionPolicy, fifo_with_tags, to_remove
from ..units import format_bytes
from .async_save import BackgroundWriter
from .backup import backup_checkpoint
from .best import heal_best_dir, save_pretrained_takes_state_dict, unwrap, write_best
from .compression import compress, resolve_codec
from .config import CheckpointConfig, load_checkpoint_config
from .distributed import (
    ManagerParts,
    RankGroup,
    has_sharded_state,
    recover_sharded,
    save_sharded_checkpoint,
    share_replicated_checkpoint,
)
from .emergency import EmergencySignals
from .errors import CheckpointCorruptWarning, CheckpointSaveError, RecoveryError, TrainingInterrupted
from .handoff import SyncHandoff, make_handoff
from .naming import (
    BEST_DIR,
    check_session_id,
    checkpoint_name,
    list_checkpoints,
    new_session_id,
    parse_checkpoint_path,
)
from .options import UNSET, AsyncWrites, Emergency, LocalRetention, RemoteSync, Triggers, group_of, resolve
from .session import build_session, listed_path, load_or_rebuild, read_session, write_session
from .state import (
    Snapshotter,
    capture_rng_state,
    check_loadable,
    gpu_memory,
    restore_rng_state,
    system_metadata,
    tensor_bytes,
)
from .triggers import BestMetric, SaveContext, SaveTrigger
from .verification import inspect_checkpoint, leftover_temps, quarantine

log = logging.getLogger("ckpt_sync.training")

FULL = "full"
MODEL_ONLY = "model_only"
_BUILTIN_STATS = ("loss_history", "learning_rates", "gpu_memory")


class CheckpointManager:
    """Saves, rotates, syncs and recovers training checkpoints. Use as a context manager (or call ``close()``).

    The options come in five groups (options.py), each with defaults that work; pass a group whole
    (``triggers=Triggers(every_n_steps=100)``) or its fields as the loose keywords they have always
    been (``every_n_steps=100``), not both. A YAML or TOML ``checkpoint_config`` maps onto them:
    ``interval_s`` and ``every_n_steps`` (``Triggers``), ``max_keep`` and ``rotation``
    (``LocalRetention``), ``async_save`` (``AsyncWrites``); ``compression`` (False, True = zstd when
    installed else zip, or a codec name) stays a keyword of its own.

    - ``triggers=Triggers(...)``: ``interval_s`` (time trigger, seconds; None turns it off, default
      180), ``every_n_steps`` (step trigger), ``trigger`` (any policy object, replaces both),
      ``best_metric``, and ``full_every=K``: only every K-th save holds optimizer/scheduler state, the
      rest are model-only (smaller and faster); recovery uses the newest full one, rotation always
      keeps it, and only full checkpoints are handed to sync.
    - ``local_retention=LocalRetention(...)``: ``max_keep`` (FIFO, default 5; None keeps all),
      ``retention`` (field ``policy``: a policy from ckpt_sync.retention such as
      ``build_policy(keep_every_steps=1000, keep_last=3)``, replaces it), ``rotation`` (only
      ``"FIFO"``), ``backup_dir`` (a local backup folder, rotated the same way).
    - ``async_writes=AsyncWrites(...)``: ``async_save`` (field ``enabled``), ``reuse_snapshot_buffers``
      (keep the host copy between saves and refill it in place: faster snapshots, fewer page faults),
      ``if_busy`` (a trigger while the previous write is still running: ``"wait"`` for it, or
      ``"skip"`` this save; best-model and emergency saves always wait).
    - ``remote_sync=RemoteSync(...)``: ``repo``, a repository URL: each finished checkpoint is handed to
      sync in the background, the best model tagged ``best``; ``recover()`` pulls from it when the
      folder has no valid checkpoint. ``key_file``. ``remote_keep`` prunes the repository to that
      many newest checkpoints (plus ``best``) after each upload; default ``max_keep`` (as
      ``ckpt-sync watch --keep``), 0 never prunes. ``remote_retention`` (a policy, e.g.
      ``build_policy(keep_last=3, keep_every_steps=10000)``) replaces that count. ``direct`` (below).
    - ``emergency=Emergency(...)``: ``on_signal``: after the emergency checkpoint, ``"raise"``
      TrainingInterrupted or ``"exit"`` (``exit_code``, default 128 + signal number).
      ``handle_signals=False`` leaves signals alone. ``pid_file``: written at start, removed at
      close, for external power-event hooks.

    Keywords of no group: the live objects (``model``, ``optimizer``, ``scheduler``, ``swa_model``,
    ``tokenizer``), ``session_id``, ``total_steps``, ``best_dir``, ``compression``; ``handoff`` (any
    ``SyncHandoff``, instead of the one ``repo`` makes), ``clock`` (for tests), and:

    - ``process_group``: in a ``torch.distributed`` group (default: the initialised default group)
      the manager is rank-aware (see ``distributed.py``): replicated state is saved by rank 0 only,
      sharded state (DTensor, FSDP2) by every rank through DCP (``direct=True``: straight into
      ``repo`` through ``ckpt_sync.dcp.Writer``), ``maybe_save`` agrees on saves and emergency
      stops with one small all-reduce, and ``recover()`` resumes every rank from rank 0's choice.
      ``maybe_save``, ``save``, ``safe_point`` and ``recover`` are then collective calls.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        interval_s: float | None = UNSET,
        every_n_steps: int | None = UNSET,
        max_keep: int | None = UNSET,
        async_save: bool = UNSET,
        reuse_snapshot_buffers: bool = UNSET,
        session_id: str | None = None,
        repo: str | None = UNSET,
        key_file: str | os.PathLike[str] | None = UNSET,
        remote_keep: int | None = UNSET,
        if_busy: Literal["wait", "skip"] = UNSET,
        full_every: int | None = UNSET,
        compression: bool | str = False,
        rotation: str = UNSET,
        total_steps: int | None = None,
        swa_model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        best_dir: str | os.PathLike[str] | None = None,
        best_metric: BestMetric | None = UNSET,
        backup_dir: str | os.PathLike[str] | None = UNSET,
        handle_signals: bool = UNSET,
        on_signal: Literal["raise", "exit"] = UNSET,
        exit_code: int | None = UNSET,
        pid_file: str | os.PathLike[str] | None = UNSET,
        trigger: SaveTrigger | None = UNSET,
        handoff: SyncHandoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        process_group: Any = None,
        direct: bool = UNSET,
        retention: RetentionPolicy | None = UNSET,
        remote_retention: RetentionPolicy | None = UNSET,
        triggers: Triggers | None = None,
        local_retention: LocalRetention | None = None,
        async_writes: AsyncWrites | None = None,
        remote_sync: RemoteSync | None = None,
        emergency: Emergency | None = None,
    ) -> None:
        # Each group: the caller's, or one built (and checked) from its loose keywords; UNSET: not given.
        given = dict(locals())
        self.async_writes = resolve(AsyncWrites, async_writes, given)
        self.emergency = resolve(Emergency, emergency, given)
        self.local_retention = resolve(LocalRetention, local_retention, given)
        self.triggers = resolve(Triggers, triggers, given)
        self.remote_sync = resolve(RemoteSync, remote_sync, given)
        sync, keep = self.remote_sync, self.local_retention
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.swa_model = swa_model
        self.tokenizer = tokenizer
        self.total_steps = total_steps
        self.best_dir = Path(best_dir) if best_dir is not None else self.directory / BEST_DIR
        self._backup_dir = Path(keep.backup_dir) if keep.backup_dir is not None else None
        self.best_loss: float = self.triggers.best_metric.initial
        self.training_stats: dict[str, list[Any]] = {k: [] for k in _BUILTIN_STATS}
        self._explicit_session = session_id is not None
        self.session_id = check_session_id(session_id) if session_id else new_session_id()
        self._start_time = time.time()
        self._codec = resolve_codec(compression)
        # Local FIFO counts every checkpoint file (model-only ones too); the newest full one is pinned.
        # A retention policy (retention.py's objects, the same ones `ckpt-sync prune` composes) replaces it.
        self._retention = keep.policy
        if self._retention is None and keep.max_keep:
            self._retention = fifo_with_tags(keep.max_keep, (RESUMABLE, MODEL_ONLY_ROLE))
        self._trigger = self.triggers.save_trigger()
        self._clock = clock
        self._last_save_step: int | None = None
        self._last_save_time = clock()
        self._saves = 0
        self._lock = threading.RLock()
        self._metadata = system_metadata()
        self._writer = BackgroundWriter() if self.async_writes.enabled else None
        self._snapshot = Snapshotter(reuse=self.async_writes.reuse_snapshot_buffers)
        self._closed = False
        self._warned_sharded_best = False
        self._ranks = RankGroup.resolve(process_group)
        self._sharded = self._ranks is not None and has_sharded_state(unwrap(model))
        if sync.direct and sync.repo is None:
            raise UsageError("direct=True saves checkpoints straight into repo=: give it")
        # Single-process (or replicated) state saved straight into the repository: no local copy of
        # full checkpoints (direct_save.py); sharded state goes through DCP's Writer instead.
        self._direct = sync.direct and not self._sharded
        if self._direct and self._codec:
            raise UsageError("direct=True saves torch.save bytes straight into the repository: leave compression off")
        self._direct_repo: Any = None
        self._direct_ids: set[str] = set()
        if self._ranks is not None:
            self.session_id = self._ranks.broadcast(self.session_id)  # one name per checkpoint, all ranks
            if self._sharded and self._writer is not None:
                self._writer.close()  # DCP saves are collectives: on the training thread, in step
                self._writer = None
        # Replicated state in a group: only rank 0 writes files and uploads them.
        self._writes = self._ranks is None or self._sharded or self._ranks.is_coordinator

        heal_best_dir(self.best_dir)
        session = read_session(self.directory)
        self._model_only: set[str] = set(session.get("model_only") or ()) if session else set()
        temps = leftover_temps(self.directory, 0)
        if temps:
            log.warning(
                "[WARN] %d partial file(s) from interrupted saves in %s (earlier checkpoints are intact); "
                "`ckpt-sync check --repair %s` moves them to quarantine/",
                len(temps),
                self.directory,
                self.directory,
            )
        coordinator = self._ranks is None or self._ranks.is_coordinator  # the one rank that uploads
        # With direct=True the hand-off still takes the best model, and any save the store refused.
        if handoff is None and sync.repo is not None and coordinator and not (sync.direct and self._sharded):
            handoff = make_handoff(
                sync.repo,
                directory=self.directory,
                key_file=sync.key_file,
                remote_keep=keep.max_keep if sync.remote_keep is None else sync.remote_keep,
                remote_retention=sync.remote_retention,
            )
        self._handoff = handoff
        # All the rank-aware code (distributed.py) sees of this manager.
        self._parts = ManagerParts(
            directory=self.directory,
            model=model,
            optimizer=optimizer,
            sync=sync,
            retention=self._retention,
            handoff=handoff,
            load=self._apply,
        )
        self._signals: EmergencySignals | None = None
        handle, pid_file = self.emergency.handle_signals, self.emergency.pid_file
        if handle or pid_file:
            self._signals = EmergencySignals(() if not handle else None, pid_file=pid_file)
            self._signals.install()

    @classmethod
    def from_config(
        cls, config: str | os.PathLike[str] | CheckpointConfig, directory: str | os.PathLike[str], **kwargs: Any
    ) -> CheckpointManager:
        """A manager whose ``checkpoint_config`` comes from a YAML/TOML file; ``kwargs`` win over the file."""
        cfg = config if isinstance(config, CheckpointConfig) else load_checkpoint_config(config)
        # A group given whole wins over the file's settings of that group, as any keyword does.
        from_file = {k: v for k, v in cfg.manager_kwargs().items() if group_of(k) not in kwargs}
        return cls(directory, **{**from_file, **kwargs})

    # --- saving ----------------------------------------------------------------------------------

    def maybe_save(
        self, global_step: int, epoch: int, *, val_loss: float | None = None, loss: float | None = None, **extra: Any
    ) -> Path | None:
        """Call once per step, after ``optimizer.step()``: the safe point for triggers and emergency saves.

        Records ``loss`` (and the learning rates) in ``training_stats``; saves a checkpoint when a
        trigger fires; saves the best model when ``val_loss`` improves. ``extra`` (tensors, numbers,
        strings, containers of them) is stored in the checkpoint and returned by ``recover()``.
        Returns the checkpoint path (written, or being written in the background), or None.
        """
        self._check_open()
        self._raise_pending()
        if loss is not None:
            self.training_stats["loss_history"].append(float(loss))
            if self.optimizer is not None:
                self.training_stats["learning_rates"].append([float(g["lr"]) for g in self.optimizer.param_groups])
        best = val_loss is not None and self.triggers.best_metric.is_better(float(val_loss), self.best_loss)
        ctx = SaveContext(global_step, self._clock(), self._last_save_step, self._last_save_time)
        due = self._trigger.should_save(ctx)
        if self._ranks is None:
            self.safe_point(global_step, epoch, loss=loss, **extra)
        else:  # the one collective per call: every rank takes the same decisions at this step
            signum, due, best = self._ranks.agree(self._signal_pending(), due, best)
            self._emergency(signum, global_step, epoch, loss, extra)
        if best and val_loss is not None:
            self.best_loss = float(val_loss)
        if not (due or best):
            return None
        return self._save(global_step, epoch, loss, extra, checkpoint=due, best=best, val_loss=val_loss)

    def save(self, global_step: int, epoch: int, *, loss: float | None = None, **extra: Any) -> Path:
        """Save a checkpoint now, whatever the triggers say (waits for a write in flight)."""
        self._check_open()
        self._raise_pending()
        path = self._save(global_step, epoch, loss, extra, checkpoint=True, best=False, force=True)
        assert path is not None
        return path

    def save_best(self, global_step: int, epoch: int, val_loss: float) -> Path:
        """Write ``best_model/`` now (normally ``maybe_save(val_loss=...)`` decides); sets ``best_loss``."""
        self._check_open()
        self._raise_pending()
        self.best_loss = float(val_loss)
        self._save(global_step, epoch, None, {}, checkpoint=False, best=True, val_loss=val_loss)
        return self.best_dir

    def safe_point(self, global_step: int, epoch: int, *, loss: float | None = None, **extra: Any) -> None:
        """If SIGINT/SIGTERM arrived, write an emergency checkpoint of this (consistent) step, then raise or exit.

        ``maybe_save`` calls this; call it yourself at other points where model and optimizer agree
        (e.g. inside long validation loops).
        """
        signum = self._signal_pending()
        if self._ranks is not None:
            signum = self._ranks.agree(signum, False, False)[0]
        self._emergency(signum, global_step, epoch, loss, extra)

    def _signal_pending(self) -> int | None:
        return self._signals.requested if self._signals is not None else None

    def _emergency(self, signum: int | None, global_step: int, epoch: int, loss: float | None, extra: Any) -> None:
        """Write the emergency checkpoint of this step (all ranks agreed on ``signum``), then raise or exit."""
        if signum is None:
            return
        signals = self._signals
        if signals is None:
            signals = self._signals = EmergencySignals(())
        signals.clear()
        signals.uninstall(keep_pid_file=True)  # after the save a signal has its usual effect again
        with signals.finishing():  # meanwhile a second Ctrl-C says it is finishing, and waits for the save
            if self._writer is not None:
                with contextlib.suppress(CheckpointSaveError):  # the emergency save matters more; logged below
                    self._writer.wait()
            path = self._save(global_step, epoch, loss, extra, checkpoint=True, best=False, force=True, signum=signum)
            if self._ranks is not None:
                self._ranks.barrier()  # no rank exits before the checkpoint is on disk
        name = platform.signal_name(signum)
        msg = f"{name} received: emergency checkpoint {path} written at step {global_step} (epoch {epoch})"
        if self.emergency.on_signal == "exit" or signals.again is not None:  # one line says it all: [EXIT] below
            code = 128 + signum if self.emergency.exit_code is None else self.emergency.exit_code
            try:
                self.close()
            finally:
                print(f"[EXIT] {msg}; exiting with status {code}", file=sys.stderr)
                sys.exit(code)
        log.warning("[EMERGENCY] %s", msg)
        raise TrainingInterrupted(msg, signum=signum, checkpoint=path)

    @property
    def emergency_requested(self) -> bool:
        return self._signals is not None and self._signals.requested is not None

    def _save(
        self,
        step: int,
        epoch: int,
        loss: float | None,
        extra: dict[str, Any],
        *,
        checkpoint: bool,
        best: bool,
        val_loss: float | None = None,
        force: bool = False,
        signum: int | None = None,
    ) -> Path | None:
        check_loadable(extra, "extra")
        if self._writer is not None and self._writer.busy():
            if checkpoint and not best and not force and self.async_writes.if_busy == "skip":
                log.info("[ASYNC] previous checkpoint still being written; skipping step %d", step)
                return None
            self._writer.wait()
        kind = FULL
        full_every = self.triggers.full_every
        if checkpoint and full_every and signum is None:
            kind = FULL if self._saves % full_every == 0 else MODEL_ONLY
        path = self.directory / checkpoint_name(self.session_id, step, self._codec)
        rank_rng = None
        if self._ranks is not None:
            if self._sharded:
                return self._save_sharded(step, epoch, loss, extra, kind, checkpoint, signum)
            rank_rng = self._ranks.gather(capture_rng_state()) if checkpoint else None
            if not self._writes:  # replicated state: rank 0 writes it
                self._count_save(checkpoint, step)
                return path if checkpoint else None
        content = self._content(step, epoch, kind, extra, signum) if checkpoint else None
        if content is not None and rank_rng is not None:
            content["rank_random_states"] = rank_rng  # every rank resumes its own random streams
        best_sd = None
        if best:
            best_sd = content["model_state_dict"] if content is not None else unwrap(self.model).state_dict()
        best_meta = {
            "best_loss": float(val_loss) if val_loss is not None else self.best_loss,
            "epoch": epoch,
            "step": step,
            "session_id": self.session_id,
            "timestamp": datetime.now().isoformat(),
        }
        sync_meta = {"session_id": self.session_id, "global_step": step, "epoch": epoch, "loss": _finite(loss)}
        # save_pretrained without a state_dict parameter reads the live model: only safe on this thread.
        bare = unwrap(self.model)
        pretrained_live = best and hasattr(bare, "save_pretrained") and not save_pretrained_takes_state_dict(bare)
        background = self._writer is not None and signum is None  # emergency saves are on disk before we return
        if background:
            content, best_sd = self._snapshot((content, best_sd))  # the only part that blocks the training loop

        def job() -> None:
            if content is not None:
                self._write_checkpoint(content, path, kind, step, epoch, sync_meta)
            if best and not pretrained_live:
                self._write_best(best_sd, best_meta, sync_meta)

        self._count_save(checkpoint, step)
        if pretrained_live:
            self._write_best(None, best_meta, sync_meta)
        if background:
            self._writer.submit(job, path.name if checkpoint else self.best_dir.name)  # type: ignore[union-attr]
        else:
            job()
        return path if checkpoint else None

    def _save_sharded(
        self,
        step: int,
        epoch: int,
        loss: float | None,
        extra: dict[str, Any],
        kind: str,
        checkpoint: bool,
        signum: int | None,
    ) -> Path | None:
        """Every rank: this step's checkpoint through DCP (distributed.py)."""
        assert self._ranks is not None
        if not checkpoint:
            if self._ranks.is_coordinator and not self._warned_sharded_best:
                self._warned_sharded_best = True
                log.warning("[WARN] best-model saves of sharded state are not supported yet; use the checkpoints")
            return None
        content = self._content(step, epoch, kind, extra, signum)
        path = save_sharded_checkpoint(
            self._parts, self._ranks, content, session_id=self.session_id, step=step, epoch=epoch, loss=loss, kind=kind
        )
        self._count_save(True, step)
        return path

    def _count_save(self, checkpoint: bool, step: int) -> None:
        if checkpoint:
            self._saves += 1
            self._last_save_step = step
            self._last_save_time = self._clock()

    def _content(self, step: int, epoch: int, kind: str, extra: dict[str, Any], signum: int | None) -> dict[str, Any]:
        """The checkpoint dict (docs/TRAINING.md, "What ends up on disk"): live references; the caller
        snapshots it for background writes."""
        mem = gpu_memory()
        if mem is not None:
            self.training_stats["gpu_memory"].append(mem)
        for k, v in self.training_stats.items():
            if k not in _BUILTIN_STATS:
                check_loadable(v, f"training_stats[{k!r}]")
        content: dict[str, Any] = {"model_state_dict": unwrap(self.model).state_dict()}
        if kind == FULL:
            content["optimizer_state_dict"] = self.optimizer.state_dict() if self.optimizer is not None else None
            content["scheduler_state_dict"] = self.scheduler.state_dict() if self.scheduler is not None else None
        content.update(
            epoch=int(epoch),
            global_step=int(step),
            best_loss=self.best_loss,
            session_id=self.session_id,
            timestamp=datetime.now().isoformat(),
            training_stats={k: list(v) for k, v in self.training_stats.items()},
        )
        if self.swa_model is not None:
            n = getattr(self.swa_model, "n_averaged", None)
            swa_n = int(n) if n is not None else 0
            content["swa_state"] = {"swa_model": self.swa_model.state_dict(), "swa_n": swa_n, "swa_active": swa_n > 0}
        content["random_state"] = capture_rng_state()
        content["metadata"] = {**self._metadata, "timestamp": content["timestamp"]}
        content["checkpoint_kind"] = kind
        content["extra"] = dict(extra)
        if signum is not None:
            content["emergency"] = {"signal": int(signum)}
        return content

    def _write_checkpoint(
        self, content: dict[str, Any], path: Path, kind: str, step: int, epoch: int, sync_meta: dict[str, Any]
    ) -> None:
        if self._direct and kind == FULL and "emergency" not in content and self._save_direct(content, path, sync_meta):
            return

        def save(f: IO[bytes]) -> None:
            write_keeping_errors(f, lambda out: torch.save(content, out))

        try:
            if not self._codec:
                with atomic_open(path) as f:
                    save(f)
            else:
                plain = temp_path_for(path)
                try:
                    with open(plain, "xb") as f:
                        save(f)
                    with atomic_open(path) as out:
                        compress(plain, out, self._codec, checkpoint_name(self.session_id, step))
                finally:
                    plain.unlink(missing_ok=True)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                free = shutil.disk_usage(path.parent).free  # the partial file is gone by now
                raise CheckpointSaveError(
                    f"no space left on device in {path.parent} writing {path.name}: it needs about "
                    f"{format_bytes(tensor_bytes(content))}, {format_bytes(free)} free; earlier checkpoints are "
                    "intact: free some space (or keep fewer with max_keep)"
                ) from err
            raise
        log.info("[SAVE] Checkpoint saved: %s", path)
        with self._lock:
            if kind == MODEL_ONLY:
                self._model_only.add(path.name)
            else:
                self._model_only.discard(path.name)
            # Before rotation: once handed off (held), rotation cannot lose the upload. Model-only files
            # stay local: they cannot resume training, and remote FIFO must not push out the full ones.
            if self._handoff is not None and kind == FULL:
                self._handoff.enqueue(path, {**sync_meta, "checkpoint_kind": kind}, ())
            if self._backup_dir is not None:
                backup_checkpoint(path, self._backup_dir)
                self._rotate(self._backup_dir)
            self._rotate(self.directory)
            self._write_session(step, epoch)

    def _save_direct(self, content: dict[str, Any], path: Path, sync_meta: dict[str, Any]) -> bool:
        """Save a full checkpoint straight into the repository (no local file), then apply remote
        retention to this run's checkpoints. False when the store could not take it: the caller then
        saves it locally, and the hand-off uploads it once the store is back (an emergency save is
        always written locally first: it must not wait on a network)."""
        from ..api import open_repository
        from ..transfer.direct_save import CheckpointWriter

        sync = self.remote_sync
        try:
            if self._direct_repo is None:
                self._direct_repo = open_repository(sync.repo, key_file=sync.key_file, create=True)
            meta = {**sync_meta, "checkpoint_kind": FULL}
            with CheckpointWriter(self._direct_repo, path.name, metadata=meta) as stream:
                write_keeping_errors(stream, lambda out: torch.save(content, out))
        except (CkptSyncError, OSError) as err:
            log.warning(
                "[SYNC] cannot save %s straight into %s (%s); saving it locally and queueing it",
                path.name,
                sync.repo,
                err,
            )
            return False
        assert stream.manifest is not None
        log.info("[SAVE] Checkpoint saved into %s: %s (%s)", sync.repo, path.name, stream.manifest.id)
        self._direct_ids.add(stream.manifest.id)
        self._prune_direct()
        with self._lock:
            self._write_session(int(sync_meta["global_step"]), int(sync_meta["epoch"]))
        return True

    def _prune_direct(self) -> None:
        """Remote retention over this run's direct saves, as a watch applies ``--keep`` to its run."""
        from ..transfer.prune import prune
        from ..transfer.retention import RunScope, fifo_with_tags

        sync = self.remote_sync
        keep = self.local_retention.max_keep if sync.remote_keep is None else sync.remote_keep
        policy = sync.remote_retention or (fifo_with_tags(keep) if keep else None)
        if policy is None:
            return
        try:
            report = prune(self._direct_repo, policy, scope=RunScope(frozenset(self._direct_ids)))
        except CkptSyncError as err:
            log.warning("[SYNC] remote retention in %s skipped: %s", sync.repo, err)
            return
        self._direct_ids -= set(report.removed)

    def _write_best(self, state_dict: dict[str, Any] | None, meta: dict[str, Any], sync_meta: dict[str, Any]) -> None:
        model = unwrap(self.model)
        use_model = model if hasattr(model, "save_pretrained") else None
        write_best(self.best_dir, metadata=meta, state_dict=state_dict, model=use_model, tokenizer=self.tokenizer)
        log.info("[BEST] New best model saved (loss: %.4f)", meta["best_loss"])
        if self._handoff is not None:
            with self._lock:
                meta_out = {**sync_meta, "loss": _finite(meta["best_loss"]), "checkpoint_kind": "best"}
                self._handoff.enqueue(self.best_dir, meta_out, ("best",))

    def _rotate(self, directory: Path) -> None:
        """FIFO through the shared retention policies; the newest full checkpoint is pinned (one being
        uploaded needs no pin: the hand-off holds its own copy from ``enqueue`` on)."""
        if self._retention is None:
            return
        files = list_checkpoints(directory)
        newest_full = next((f.path for f in reversed(files) if f.path.name not in self._model_only), None)
        candidates = [
            Candidate(
                key=f.path,
                position=f.position,
                role=MODEL_ONLY_ROLE if f.path.name in self._model_only else RESUMABLE,
                tags=frozenset({"pinned"}) if f.path == newest_full else frozenset(),
            )
            for f in files
        ]
        removed = False
        for c in to_remove(self._retention, candidates):
            with contextlib.suppress(FileNotFoundError):
                Path(c.key).unlink()  # type: ignore[arg-type]
                removed = True
                log.info("[CLEAN] Removed old checkpoint: %s", c.key)
        if removed:
            fsync_dir(directory)

    def _write_session(self, step: int | None, epoch: int | None) -> None:
        session = build_session(
            self.directory,
            session_id=self.session_id,
            start_time=self._start_time,
            current_epoch=epoch,
            current_step=step,
            total_steps=self.total_steps,
            best_loss=self.best_loss,
            last_checkpoint=time.time(),
            model_only=self._model_only,
        )
        write_session(self.directory, session)

    # --- recovery --------------------------------------------------------------------------------

    def recover(self) -> dict[str, Any] | None:
        """Recovery: the session file, the newest checkpoint, load the states; returns ``start_epoch``,
        ``start_step``, ``best_loss`` and the saved extras.

        Loads model, optimizer, scheduler, SWA and RNG states from the newest checkpoint that verifies
        (CRC, ``weights_only=True`` load, required keys); a damaged one is skipped with a
        ``CheckpointCorruptWarning``. With ``repo`` set and no valid local checkpoint, pulls the newest
        committed one (and the best model) first. Returns None when there is nothing to resume.
        The step returned is the last *completed* step: continue with ``start_step + 1``.
        """
        self._check_open()
        if self._ranks is not None:
            if self._sharded:
                resumed = recover_sharded(self._parts, self._ranks)
                if resumed is None:
                    return None
                if resumed.from_repository:  # a run resumed from the repository continues its session's names
                    self.session_id = resumed.info["session_id"] or self.session_id
                return resumed.info
            return share_replicated_checkpoint(self._parts, self._ranks, self._ranks.decide(self._recover_here))
        return self._recover_here()

    def _recover_here(self) -> dict[str, Any] | None:
        if self._writer is not None:
            self._writer.wait()
        tried: set[tuple[str, int, int]] = set()
        result = self._recover_local(tried, "local")
        repo = self.remote_sync.repo
        if result is None and repo is not None and self._pull_from_repo(repo):
            result = self._recover_local(tried, f"pulled from {repo}")
        if result is None:
            log.info("[INFO] No previous session, starting fresh")
        return result

    def _recover_local(self, tried: set[tuple[str, int, int]], source: str) -> dict[str, Any] | None:
        session = load_or_rebuild(self.directory)
        if session is None:
            return None
        self._model_only |= set(session.get("model_only") or ())
        listed = [listed_path(self.directory, str(e)) for e in session["checkpoints"]]
        skipped: list[str] = []
        for path in reversed(listed):
            if path.name in self._model_only:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            ident = (path.name, st.st_ino, st.st_mtime_ns)
            if ident in tried:
                continue
            tried.add(ident)
            result, ckpt = inspect_checkpoint(path)
            if not result.ok or ckpt is None or ckpt.get("checkpoint_kind", FULL) != FULL:
                if result.ok:  # a model-only file from a run that did not record it: not resumable
                    self._model_only.add(path.name)
                    continue
                msg = f"checkpoint {path} is damaged ({'; '.join(result.problems)}); falling back to the previous one"
                log.warning("[WARN] %s", msg)
                warnings.warn(msg, CheckpointCorruptWarning, stacklevel=3)
                skipped.append(path.name)
                continue
            info = self._apply(ckpt, path)
            if skipped:
                log.warning(
                    "[WARN] skipped %d damaged checkpoint(s): %s; `ckpt-sync check --repair %s` quarantines them",
                    len(skipped),
                    ", ".join(skipped),
                    self.directory,
                )
            log.info("[OK] Resumed from epoch %s, step %s (%s)", info["start_epoch"], info["start_step"], path.name)
            # One line on stderr whatever the logging set-up: what this run resumes from, and where it came from.
            print(
                f"[RESUME] resuming from {path} (step {info['start_step']}, epoch {info['start_epoch']}; {source})",
                file=sys.stderr,
                flush=True,
            )
            return info
        return None

    def _apply(self, ckpt: dict[str, Any], path: Path, *, weights_loaded: bool = False) -> dict[str, Any]:
        """Load ``ckpt`` into the live objects (``weights_loaded``: DCP already set model and optimizer)."""
        if not weights_loaded:
            unwrap(self.model).load_state_dict(ckpt["model_state_dict"])
        for what, obj, key in (
            ("optimizer", self.optimizer, "optimizer_state_dict"),
            ("scheduler", self.scheduler, "scheduler_state_dict"),
        ):
            if obj is None or (weights_loaded and key == "optimizer_state_dict"):
                continue
            state = ckpt.get(key)
            if state is None:
                log.warning("[WARN] %s has no %s state; the %s starts fresh", path.name, what, what)
            else:
                obj.load_state_dict(state)
        swa = ckpt.get("swa_state")
        if self.swa_model is not None and swa:
            self.swa_model.load_state_dict(swa["swa_model"])
        if "random_state" in ckpt:
            restore_rng_state(ckpt["random_state"])
        best = ckpt.get("best_loss")
        self.best_loss = float(best) if isinstance(best, int | float) else self.triggers.best_metric.initial
        stats = ckpt.get("training_stats") or {}
        self.training_stats = {k: list(stats.get(k, [])) for k in _BUILTIN_STATS}
        self.training_stats.update({k: list(v) for k, v in stats.items() if k not in _BUILTIN_STATS})
        sid = ckpt.get("session_id")
        if not self._explicit_session and isinstance(sid, str):
            self.session_id = check_session_id(sid)  # a resumed run continues its session (and file names)
        session = read_session(self.directory) or {}
        if session.get("session_id") == self.session_id and isinstance(session.get("start_time"), int | float):
            self._start_time = float(session["start_time"])
        step, epoch = int(ckpt["global_step"]), int(ckpt["epoch"])
        self._last_save_step = step
        self._last_save_time = self._clock()
        extra = dict(ckpt.get("extra") or {})
        return {
            **extra,
            "start_epoch": epoch,
            "start_step": step,
            "best_loss": self.best_loss,
            "session_id": sid,
            "checkpoint": path,
            "emergency": ckpt.get("emergency"),
            "training_stats": self.training_stats,
            "extra": extra,
        }

    def _pull_from_repo(self, url: str) -> bool:
        """Fresh host: restore the newest committed full checkpoint that verifies (and the best model)."""
        from .. import api

        try:  # created when new, as the sync client does: a first run starts fresh
            repo = api.open_repository(url, key_file=self.remote_sync.key_file, create=True)
        except (StorageError, Cancelled) as err:  # the store does not answer: say so in one line
            raise RecoveryError(
                f"no checkpoint to resume from in {self.directory}, and the repository {url} cannot be "
                f"read ({err}): bring the store back, or pass repo=None to start fresh"
            ) from None
        pulled = False
        try:
            manifests = list(
                repo.manifests(
                    lambda mid, err: log.warning("[WARN] skipping unreadable remote checkpoint %s: %s", mid, err)
                )
            )
            try:  # the one rule of "latest" (lookup.py); only files named as this manager names them resume here
                candidates = latest_candidates(
                    repo,
                    Selection(),
                    accept=lambda m: m.kind == "file" and parse_checkpoint_path(m.name) is not None,
                    warn=lambda line: log.warning("[WARN] %s", line),
                )
            except MissingKeyError:
                raise  # never a silent rollback past checkpoints this host cannot decrypt
            except OperationFailed as err:
                log.info("[SYNC] nothing to resume from in %s (%s)", repo.url, err)
                candidates = []
            for m in _until_exhausted(candidates, repo.url):
                local = self.directory / m.name
                if local.exists():  # a damaged local copy: keep it for inspection, take the committed one
                    quarantine(local, self.directory, f"replaced by the committed copy {m.id} from {repo.url}")
                try:
                    log.info("[SYNC] pulling %s (%s) from %s", m.name, m.id, repo.url)
                    api.pull(to=self.directory, repo=repo, checkpoint=m.id)
                except (IntegrityError, NotFound) as err:  # the checkpoint's; a local problem (LocalTargetError) stops
                    log.warning("[WARN] remote checkpoint %s is damaged (%s); trying the previous one", m.name, err)
                    continue
                result = inspect_checkpoint(local)[0]
                if not result.ok:
                    quarantine(local, self.directory, "; ".join(result.problems))
                    continue
                pulled = True
                break
            if pulled and not self.best_dir.exists():
                best = next((m for m in select(manifests, Selection(BEST)) if m.kind == "dir"), None)
                if best is not None:
                    tmp = self.best_dir.parent / f".{self.best_dir.name}.{secrets.token_hex(4)}.tmp"
                    try:
                        api.pull(to=tmp, repo=repo, checkpoint=best.id)  # a folder lands as tmp/<name>/
                        platform.replace(tmp / best.name, self.best_dir)
                    except CkptSyncError as err:
                        log.warning("[WARN] could not restore the best model from %s: %s", repo.url, err)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
        finally:
            with contextlib.suppress(Exception):
                repo.provider.close()
        if pulled:
            load_or_rebuild(self.directory)
        return pulled

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def checkpoints(self) -> list[Path]:
        """Checkpoint files in the folder, oldest first."""
        return [c.path for c in list_checkpoints(self.directory)]

    @property
    def latest_checkpoint(self) -> Path | None:
        files = self.checkpoints
        return files[-1] if files else None

    def wait(self) -> None:
        """Block until the write in flight and all hand-offs are done; raise their errors."""
        if self._writer is not None:
            self._writer.wait()
        if self._handoff is not None:
            self._handoff.wait()

    def close(self) -> None:
        """Finish the write in flight and the uploads, restore signal handlers, remove the pid file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            try:
                if self._handoff is not None:
                    self._handoff.close()
            finally:
                if self._signals is not None:
                    self._signals.uninstall()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # do not mask the exception that is already on its way out
            self.close()
        except Exception as err:
            log.error("[ERROR] while closing the checkpoint manager: %s", err)

    def _raise_pending(self) -> None:
        if self._writer is not None:
            self._writer.raise_pending_error()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this CheckpointManager is closed")


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _until_exhausted(candidates: Iterable[Manifest], url: str) -> Iterator[Manifest]:
    """The candidates ``latest_candidates`` yields; the end of them (every one damaged) is logged,
    not raised: recovery then starts fresh as it would from an empty repository."""
    try:
        yield from candidates
    except OperationFailed as err:
        log.info("[SYNC] nothing to resume from in %s (%s)", url, err)
