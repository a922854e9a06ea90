"""What one checkpoint is in a watched folder: the folder layouts frameworks write.

A folder is one checkpoint when a framework's layout claims it, by its marker file or by the name
the framework gives it (so its first files are already known to belong to it, before the marker
exists):

- torch.distributed.checkpoint (DCP): ``.metadata`` (written last by the coordinator) beside the
  ``*.distcp`` shards; complete once every shard file ``.metadata`` names is present on this host.
- CheckpointManager's best model: ``best_metadata.json`` (tagged ``best``).
- Hugging Face Trainer: ``checkpoint-N/``; complete once ``trainer_state.json`` (written last) exists.
- DeepSpeed: ``global_stepN/``; complete once the ``latest`` file at its parent names it (or a later step).

The outermost claimed folder is the checkpoint (a Trainer's ``checkpoint-N/`` holding DeepSpeed's
``global_stepN/`` is one checkpoint); files inside it are never checkpoints on their own. Single files
(``*.pt``, Lightning's ``*.ckpt``) stay single-file checkpoints; a symlink (Lightning's ``last.ckpt``
with ``save_last="link"``, Composer's ``latest-rank0.pt``) is another name for one, never a checkpoint itself.

This module only reads what is on disk (no torch: ``.metadata`` is walked as pickle opcodes, never
unpickled, since a pickle can run code).
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..format.manifest import BEST, BEST_MARKER, MODEL_ONLY, RESUMABLE

DCP_METADATA = ".metadata"
BEST_METADATA = BEST_MARKER
HF_STATE = "trainer_state.json"
HF_DIR = re.compile(r"^(?P<tmp>tmp-)?checkpoint-(?P<step>\d+)$")  # tmp-: older Trainers, renamed when done
DEEPSPEED_DIR = re.compile(r"^global_step(?P<step>\d+)$")
DEEPSPEED_LATEST = "latest"
# Optimizer state a Hugging Face checkpoint holds unless saved with save_only_model.
HF_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin", "optimizer.safetensors")
STEP_IN_NAME = re.compile(r"(?:^|[-_=])(?:step|checkpoint)[-_=]?(?P<step>\d+)$")
LIGHTNING_FIELDS = re.compile(r"(?:^|[-_])(?P<key>epoch|step)=(?P<value>\d+)")


@dataclass(frozen=True)
class Layout:
    """One framework's folder checkpoint: how to recognise it, when it is complete, what it records."""

    name: str
    claims: Callable[[Path], bool]
    missing: Callable[[Path], str | None]  # why the folder is not complete yet; None once it is
    describe: Callable[[Path], dict[str, Any]]  # push metadata: global_step, epoch, role, ...
    tags: Callable[[Path], tuple[str, ...]] = lambda _folder: ()


# --- torch.distributed.checkpoint ------------------------------------------------------------------


def dcp_shard_files(metadata_file: Path) -> set[str] | None:
    """The relative paths of the shard files a DCP ``.metadata`` names, or None if it cannot be read.

    Walks the pickle's opcodes (no unpickling): each ``_StorageInfo`` state is a dict whose
    ``relative_path`` key is followed by the shard's file name.
    """
    try:
        data = metadata_file.read_bytes()
        memo: dict[int, object] = {}
        top: object = None
        after_key = False
        found: set[str] = set()
        for op, arg, _ in pickletools.genops(data):
            if op.name == "MEMOIZE":
                memo[len(memo)] = top
                continue
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = top  # type: ignore[arg-type]
                continue
            if op.name in ("GET", "BINGET", "LONG_BINGET"):
                top = memo.get(int(arg))  # type: ignore[arg-type]
            elif isinstance(arg, str) and "UNICODE" in op.name:
                top = arg
            else:
                top = None
            if after_key and isinstance(top, str):
                found.add(top)
            after_key = top == "relative_path"
    except (OSError, ValueError, EOFError, struct.error):
        return None
    return found or None


def _dcp_claims(folder: Path) -> bool:
    if (folder / DCP_METADATA).is_file():
        return True
    try:
        return any(e.name.endswith(".distcp") for e in os.scandir(folder))
    except OSError:
        return False


def _dcp_missing(folder: Path) -> str | None:
    meta = folder / DCP_METADATA
    if not meta.is_file():
        return (
            f"it has shard files but no {DCP_METADATA} (written last by the coordinator rank, on its own host's "
            "disk?); save with ckpt_sync.dcp.Writer to commit every rank's shards as one checkpoint"
        )
    shards = dcp_shard_files(meta)
    if shards is None:
        return None  # no shard list to check against (not written by DCP's own writers): the marker decides
    absent = sorted(s for s in shards if not (folder / s).is_file())
    if not absent:
        return None
    return (
        f"{len(absent)} of {len(shards)} shard file(s) named in {DCP_METADATA} are not on this host "
        f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}): the other ranks wrote them to their own "
        "disks; save with ckpt_sync.dcp.Writer to commit every rank's shards as one checkpoint"
    )


def _step_from_name(folder: Path) -> dict[str, Any]:
    m = STEP_IN_NAME.search(folder.name)
    return {"global_step": int(m.group("step"))} if m else {}


# The role is left to what the folder holds (checkpoint_content.py: optimizer state in .metadata).
DCP = Layout("dcp", _dcp_claims, _dcp_missing, lambda folder: {"framework": "dcp", **_step_from_name(folder)})

# --- CheckpointManager's best model ----------------------------------------------------------------

BEST_MODEL = Layout(
    "best",
    lambda folder: (folder / BEST_METADATA).is_file(),
    lambda _folder: None,
    lambda _folder: {"role": BEST},
    lambda _folder: (BEST,),
)

# --- Hugging Face Trainer --------------------------------------------------------------------------


def hf_trainer_state(folder: Path) -> dict[str, Any]:
    """The Trainer's ``trainer_state.json`` of a ``checkpoint-N/`` folder ({} when absent or unreadable)."""
    try:
        state = json.loads((folder / HF_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def hf_metadata(folder: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Push metadata of a Trainer checkpoint: step and epoch from its state (else the step from its name)."""
    state = hf_trainer_state(folder) if state is None else state
    m = HF_DIR.match(folder.name)
    step = state.get("global_step")
    meta: dict[str, Any] = {"framework": "hf"}
    if isinstance(step, int):
        meta["global_step"] = step
    elif m:
        meta["global_step"] = int(m.group("step"))
    if isinstance(state.get("epoch"), (int, float)):
        meta["epoch"] = state["epoch"]
    for key in ("best_metric", "best_global_step"):
        if state.get(key) is not None:
            meta[key] = state[key]
    resumable = any((folder / f).is_file() for f in HF_OPTIMIZER_FILES) or any(
        DEEPSPEED_DIR.match(p.name) for p in _subdirs(folder)
    )
    meta["role"] = RESUMABLE if resumable else MODEL_ONLY
    return meta


def hf_is_best(folder: Path, state: dict[str, Any] | None = None) -> bool:
    """Whether the Trainer's state names this folder as its best model checkpoint."""
    state = hf_trainer_state(folder) if state is None else state
    best = state.get("best_model_checkpoint")
    return isinstance(best, str) and Path(best).name == folder.name


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _hf_missing(folder: Path) -> str | None:
    m = HF_DIR.match(folder.name)
    if m and m.group("tmp"):
        return "the Trainer is still writing it (it renames the folder when done)"
    return None if (folder / HF_STATE).is_file() else f"{HF_STATE} (the Trainer writes it last) is not there yet"


HF = Layout(
    "hf",
    lambda folder: bool(HF_DIR.match(folder.name)) or (folder / HF_STATE).is_file(),
    _hf_missing,
    hf_metadata,
    lambda folder: (BEST,) if hf_is_best(folder) else (),
)

# --- DeepSpeed -------------------------------------------------------------------------------------


def _deepspeed_missing(folder: Path) -> str | None:
    latest = folder.parent / DEEPSPEED_LATEST
    try:
        tag = latest.read_text(encoding="utf-8").strip()
    except OSError:
        return f"DeepSpeed has not written {latest.name} beside it yet"
    if tag == folder.name:
        return None
    mine, theirs = DEEPSPEED_DIR.match(folder.name), DEEPSPEED_DIR.match(tag)
    if mine and theirs and int(theirs.group("step")) > int(mine.group("step")):
        return None  # a later save finished, so this one did
    return f"DeepSpeed's {latest.name} names {tag!r}, not this folder, yet"


def _deepspeed_metadata(folder: Path) -> dict[str, Any]:
    m = DEEPSPEED_DIR.match(folder.name)
    meta: dict[str, Any] = {"role": RESUMABLE, "framework": "deepspeed", "deepspeed_tag": folder.name}
    if m:
        meta["global_step"] = int(m.group("step"))
    return meta


DEEPSPEED = Layout(
    "deepspeed", lambda folder: bool(DEEPSPEED_DIR.match(folder.name)), _deepspeed_missing, _deepspeed_metadata
)

LAYOUTS = (BEST_MODEL, HF, DEEPSPEED, DCP)


def folder_layout(folder: Path) -> Layout | None:
    """The layout that makes ``folder`` one checkpoint, or None for a plain folder."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    for layout in LAYOUTS:
        if layout.claims(folder):
            return layout
    return None


def file_metadata(name: str) -> dict[str, Any]:
    """Push metadata read from a single-file checkpoint's name: Lightning's ``epoch=E-step=S.ckpt``."""
    fields = {m.group("key"): int(m.group("value")) for m in LIGHTNING_FIELDS.finditer(Path(name).stem)}
    meta: dict[str, Any] = {}
    if "step" in fields:
        meta["global_step"] = fields["step"]
    if "epoch" in fields:
        meta["epoch"] = fields["epoch"]
    return meta


def is_alias(path: Path) -> bool:
    """A symlink: another name for a checkpoint (``last.ckpt``, ``latest-rank0.pt``), never one itself."""
    return path.is_symlink()
