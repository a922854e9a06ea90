"""Rank awareness for ``CheckpointManager`` in a ``torch.distributed`` process group.

The process group is the coordinator; ckpt-sync adds none of its own:

- **Agreement.** Every ``maybe_save`` call does ONE small all-reduce (MAX) of three flags: a
  signal seen by this rank, a save trigger that fired here, a better validation loss. So all ranks
  save the same steps, and an emergency stop seen by any rank is taken by all at the same safe
  point: they save that step and exit (or raise) together, and no rank is left in a collective.
- **Replicated state** (DDP, or plain modules): rank 0 writes, rotates and hands off to sync; the
  others only gather their RNG states to it (each rank resumes its own random streams).
- **Sharded state** (any DTensor/ShardedTensor, e.g. FSDP2 ``fully_shard``): every rank saves
  through ``torch.distributed.checkpoint`` (``get_state_dict``): into a local DCP folder, written
  under a temp name and renamed after a barrier, or with ``direct=True`` straight into the
  repository through ``ckpt_sync.dcp.Writer`` (the way to go on per-host disks).
- **Recovery.** Rank 0 decides which checkpoint and step to resume from and broadcasts it.

The code here sees its manager only through ``ManagerParts``: what is fixed when the manager is
built, and one callable to load a checkpoint into the live objects. What changes over a run (the
session id, the count of saves) stays with the manager and travels as arguments and return values.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
import torch.distributed as dist

from .. import platform
from ..format.ordering import Position, oldest_first
from ..fs.atomic import fsync_dir

if TYPE_CHECKING:
    from ..transfer.retention import RetentionPolicy
    from .handoff import SyncHandoff
    from .options import RemoteSync

log = logging.getLogger("ckpt_sync.training")

DCP_SUFFIX = ".dcp"  # checkpoint_{session}_{step}.dcp/: a DCP folder checkpoint
DCP_NAME = re.compile(r"^checkpoint_(?P<session>.+)_(?P<step>\d+)\.dcp$")


class LoadCheckpoint(Protocol):
    def __call__(self, ckpt: dict[str, Any], path: Path, *, weights_loaded: bool = False) -> dict[str, Any]:
        """Load ``ckpt`` (read from ``path``) into the manager's live objects and return what
        ``recover()`` returns; ``weights_loaded``: DCP already set the model and optimizer."""
        ...


@dataclass(frozen=True)
class ManagerParts:
    """What the rank-aware code uses of its ``CheckpointManager``, handed over once when it is built."""

    directory: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    sync: RemoteSync  # repo, key_file, direct
    retention: RetentionPolicy | None  # the folder's policy as the manager resolved it; None keeps all
    handoff: SyncHandoff | None  # set on the one rank that uploads
    load: LoadCheckpoint


class ShardedResume(NamedTuple):
    info: dict[str, Any]  # what recover() returns
    from_repository: bool  # read straight from the repository (direct=True, or nothing local)


class RankGroup:
    """This process's place in the group, and the few collectives the manager needs."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.coordinator = dist.get_global_rank(group, 0) if group is not None else 0
        backend = str(dist.get_backend(group))
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if "nccl" in backend and torch.cuda.is_available()
            else torch.device("cpu")
        )

    @classmethod
    def resolve(cls, process_group: Any) -> RankGroup | None:
        """The given group, else the initialised default group, else None (one process)."""
        if process_group is None and not (dist.is_available() and dist.is_initialized()):
            return None
        ranks = cls(process_group)
        return ranks if ranks.world > 1 else None

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def agree(self, signum: int | None, due: bool, best: bool) -> tuple[int | None, bool, bool]:
        """The one all-reduce per safe point: any rank's signal, any rank's trigger, any rank's best."""
        flags = torch.tensor([signum or 0, int(due), int(best)], dtype=torch.int64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        s, d, b = (int(x) for x in flags.tolist())
        return (s or None), bool(d), bool(b)

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.is_coordinator else None]
        dist.broadcast_object_list(box, src=self.coordinator, group=self.group)
        return box[0]

    def decide(self, choose: Callable[[], Any]) -> Any:
        """Rank 0's ``choose()``, on every rank; if it raises, every rank raises (none waits forever)."""
        outcome: tuple[bool, Any] | None = None
        if self.is_coordinator:
            try:
                outcome = (True, choose())
            except Exception as err:
                outcome = (False, err)
        ok, value = self.broadcast(outcome)
        if not ok:
            if self.is_coordinator:
                raise value
            raise RuntimeError(f"rank 0 failed: {type(value).__name__}: {value}") from None
        return value

    def gather(self, obj: Any) -> list[Any] | None:
        """Everyone's ``obj`` on rank 0 (None elsewhere)."""
        out: list[Any] | None = [None] * self.world if self.is_coordinator else None
        dist.gather_object(obj, out, dst=self.coordinator, group=self.group)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.group)


def has_sharded_state(model: torch.nn.Module) -> bool:
    """True when the model's state dict holds DTensors or ShardedTensors (FSDP2, tensor parallel...)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    return any(isinstance(v, DTensor | ShardedTensor) for v in model.state_dict().values())


# --- replicated state: rank 0 writes -------------------------------------------------------------


def restore_rank_rng(ckpt: dict[str, Any], ranks: RankGroup) -> None:
    """Each rank's own random streams, when the checkpoint has them for a group of this size."""
    from .state import restore_rng_state

    states = ckpt.get("rank_random_states")
    if isinstance(states, list) and len(states) == ranks.world:
        restore_rng_state(states[ranks.rank])
    elif states is not None:
        n = len(states) if isinstance(states, list) else "?"
        log.warning("[WARN] checkpoint holds RNG states of %s ranks, this group has %d: rank 0's used", n, ranks.world)


def share_replicated_checkpoint(
    parts: ManagerParts, ranks: RankGroup, info: dict[str, Any] | None
) -> dict[str, Any] | None:
    """After rank 0 recovered (``info``, broadcast to all), give every rank the same checkpoint and step.

    A rank that sees the same file (shared folder) loads it itself; otherwise (per-host disks)
    rank 0 sends the checkpoint over the process group.
    """
    from .verification import inspect_checkpoint

    if info is None:  # the same answer everywhere: rank 0 decided it
        return None
    path = Path(info["checkpoint"])
    name, size = path.name, ranks.broadcast(path.stat().st_size if ranks.is_coordinator else None)
    local = parts.directory / name
    here = local.is_file() and local.stat().st_size == size
    everyone = all(ranks.all_gather(here))
    ckpt: dict[str, Any] | None = None
    if not everyone:
        payload = torch.load(path, map_location="cpu", weights_only=True) if ranks.is_coordinator else None
        ckpt = ranks.broadcast(payload)
    if ranks.is_coordinator:
        assert info is not None
        if ckpt is None:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        restore_rank_rng(ckpt, ranks)
        return info
    if ckpt is None:
        result, ckpt = inspect_checkpoint(local)
        if not result.ok or ckpt is None:  # rank 0's copy verified; ours did not: take rank 0's
            raise RuntimeError(f"{local} is damaged on rank {ranks.rank} ({'; '.join(result.problems)})")
    out = parts.load(ckpt, local)
    restore_rank_rng(ckpt, ranks)
    return out


# --- sharded state: every rank writes through DCP ------------------------------------------------


@dataclass(frozen=True)
class DcpFolder:
    path: Path
    session_id: str
    global_step: int
    mtime_ns: int

    @property
    def position(self) -> Position:
        return Position(self.session_id, self.global_step, self.mtime_ns / 1e9, self.mtime_ns / 1e9, self.path.name)


def dcp_name(session_id: str, step: int) -> str:
    return f"checkpoint_{session_id}_{int(step)}{DCP_SUFFIX}"


def list_dcp_folders(directory: Path) -> list[DcpFolder]:
    """Complete DCP folder checkpoints (renamed into place, with their .metadata), oldest first by
    training position."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(directory):
            m = DCP_NAME.match(e.name)
            if m and e.is_dir(follow_symlinks=False) and (Path(e.path) / ".metadata").is_file():
                mtime = e.stat(follow_symlinks=False).st_mtime_ns
                out.append(DcpFolder(Path(e.path), m.group("session"), int(m.group("step")), mtime))
    return oldest_first(out, lambda f: f.position)


def sharded_state(parts: ManagerParts) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Model and optimizer state keyed by parameter name (DCP's ``get_state_dict``)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    from .best import unwrap

    model = unwrap(parts.model)
    if parts.optimizer is None:
        return get_model_state_dict(model), None
    return get_state_dict(model, parts.optimizer)


def _blob(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unblob(data: Any) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True) if data else None


# The DCP state of a sharded manager checkpoint: tensors DCP shards, and two opaque entries (one
# copy for the group, one per rank: DCP keeps a single copy of a key every rank saves).
MODEL, OPTIM, MANAGER, RANK = "model", "optim", "manager_state", "rank_state"


def save_sharded_checkpoint(
    parts: ManagerParts,
    ranks: RankGroup,
    content: dict[str, Any],
    *,
    session_id: str,
    step: int,
    epoch: int,
    loss: float | None,
    kind: str,
) -> Path:
    """Every rank: the manager's checkpoint ``content`` of this step as one DCP checkpoint, locally
    or in the repository (its model and optimizer state are taken again, keyed for DCP)."""
    msd, osd = sharded_state(parts)
    content.pop("model_state_dict")
    content.pop("optimizer_state_dict", None)
    rng = content.pop("random_state")
    state: dict[str, Any] = {MODEL: msd, MANAGER: _blob(content), RANK: {str(ranks.rank): _blob(rng)}}
    if osd is not None and kind == "full":
        state[OPTIM] = osd
    name = dcp_name(session_id, step)
    meta = {"session_id": session_id, "global_step": step, "epoch": epoch, "checkpoint_kind": kind}
    if loss is not None and math.isfinite(float(loss)):
        meta["loss"] = float(loss)
    path = save_sharded(parts, ranks, state, name, meta)
    log.info("[SAVE] Checkpoint saved: %s", path)
    return path


def save_sharded(parts: ManagerParts, ranks: RankGroup, state: dict[str, Any], name: str, meta: dict[str, Any]) -> Path:
    """Write ``state`` with DCP: into the repository (``direct``), else a local folder renamed into
    place after a barrier (by rank 0 on a shared folder; by each rank on its own disk)."""
    import torch.distributed.checkpoint as dcp

    directory, sync = parts.directory, parts.sync
    if sync.direct:
        from ..integrations.dcp import Writer

        writer = Writer(sync.repo, name=name, metadata=meta, key_file=sync.key_file)
        dcp.save(state, storage_writer=writer, process_group=ranks.group)
        if writer.manifest is not None:
            log.info("[SYNC] %s committed to %s (%s)", name, sync.repo, writer.manifest.id)
        return directory / name
    final = directory / name
    token = ranks.broadcast(secrets.token_hex(4))
    tmp = directory / f".{name}.{token}.tmp"
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp)), process_group=ranks.group)
    ranks.barrier()  # every rank's shards are on disk, and rank 0 wrote .metadata
    renamed = False
    if ranks.is_coordinator:
        _rename(tmp, final)
        renamed = True
    ranks.barrier()
    if not ranks.is_coordinator and tmp.exists():  # per-host disks: this rank's part is its own
        _rename(tmp, final)
        renamed = True
    if renamed:
        rotate_dcp(parts.retention, directory)
    if ranks.is_coordinator and parts.handoff is not None and meta.get("checkpoint_kind") == "full":
        parts.handoff.enqueue(final, meta, ())  # complete only on a shared folder: else use direct=True
    return final


def _rename(tmp: Path, final: Path) -> None:
    if final.exists():  # the same step saved again (a resumed run repeating it): the new one wins
        shutil.rmtree(final)
    platform.replace(tmp, final)
    fsync_dir(final.parent)


def rotate_dcp(retention: RetentionPolicy | None, directory: Path) -> None:
    """FIFO over DCP folders with the manager's retention (the newest is never removed)."""
    from ..transfer.retention import Candidate, to_remove

    if retention is None:
        return
    candidates = [Candidate(key=f.path, position=f.position) for f in list_dcp_folders(directory)]
    for c in to_remove(retention, candidates):
        shutil.rmtree(c.key, ignore_errors=True)
        log.info("[CLEAN] Removed old checkpoint: %s", c.key)


def recover_sharded(parts: ManagerParts, ranks: RankGroup) -> ShardedResume | None:
    """Rank 0 picks the newest sharded checkpoint (local folder, else the repository's newest DCP
    checkpoint of this manager's naming), every rank loads its part of it, all resume at its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    from .best import unwrap

    sync = parts.sync

    def choose() -> tuple[str, str] | None:
        folders = list_dcp_folders(parts.directory)
        if folders and not sync.direct:
            return ("local", folders[-1].path.name)
        return _newest_remote(parts) if sync.repo is not None else None

    choice = ranks.decide(choose)
    if choice is None:
        log.info("[INFO] No previous session, starting fresh")
        return None
    where, ident = choice
    msd, osd = sharded_state(parts)
    state: dict[str, Any] = {MODEL: msd, MANAGER: b"", RANK: {str(ranks.rank): b""}}
    if osd is not None:
        state[OPTIM] = osd
    path = parts.directory / ident
    if where == "local":
        reader: Any = dcp.FileSystemReader(str(path))
    else:
        from ..integrations.dcp import Reader

        reader = Reader(sync.repo, checkpoint=ident, key_file=sync.key_file, process_group=ranks.group)
    # Partial: a group of another size finds no RNG state of its own for some ranks.
    planner = DefaultLoadPlanner(allow_partial_load=True)
    dcp.load(state, storage_reader=reader, planner=planner, process_group=ranks.group)
    model = unwrap(parts.model)
    if osd is not None:
        set_state_dict(model, parts.optimizer, model_state_dict=state[MODEL], optim_state_dict=state[OPTIM])
    else:
        set_model_state_dict(model, state[MODEL])
    ckpt = _unblob(state[MANAGER])
    rng = _unblob(state[RANK].get(str(ranks.rank)))
    if rng:
        ckpt["random_state"] = rng
    else:
        ckpt.pop("random_state", None)
    info = parts.load(ckpt, path, weights_loaded=True)
    log.info("[OK] Resumed from epoch %s, step %s (%s)", info["start_epoch"], info["start_step"], ident)
    return ShardedResume(info, from_repository=where == "remote")


def _newest_remote(parts: ManagerParts) -> tuple[str, str] | None:
    from .. import api
    from ..errors import Cancelled, MissingKeyError, OperationFailed, StorageError
    from ..format.lookup import latest
    from ..integrations.dcp import is_dcp_manifest
    from .errors import RecoveryError

    sync = parts.sync
    try:
        repo = api.open_repository(sync.repo, key_file=sync.key_file, create=True)
    except (StorageError, Cancelled) as err:  # the store does not answer: one line, on every rank
        raise RecoveryError(
            f"no checkpoint to resume from in {parts.directory}, and the repository {sync.repo} cannot be "
            f"read ({err}): bring the store back, or pass repo=None to start fresh"
        ) from None
    try:  # the one rule of "latest" (lookup.py), among this manager's DCP saves
        m = latest(repo, accept=lambda m: is_dcp_manifest(m) and bool(DCP_NAME.match(m.name)), warn=log.warning)
    except MissingKeyError:
        raise
    except OperationFailed:
        return None
    finally:
        with contextlib.suppress(Exception):
            repo.provider.close()
    return ("remote", m.id)
