"""What a checkpoint's files hold, read without unpickling: the role and training position a push
records when nobody said (docs/FORMAT.md, "Which checkpoint is newest").

A name is only a hint (``final_model.pt`` and ``checkpoint_3.pt`` look alike); content says more:

- a ``torch.save`` zip: its ``data.pkl`` is walked as pickle opcodes (``pickletools.genops``, which
  parses and never executes). Optimizer state shows as ``param_groups`` (every torch optimizer's
  state dict has it; Lightning nests them under ``optimizer_states``); tensors as persistent ids; a
  position as an integer stored under ``global_step`` (an ``epoch`` beside it is read too);
- a safetensors file: weights only (its JSON header may carry a ``global_step``);
- a folder: a Hugging Face ``trainer_state.json`` (step, epoch; resumable when optimizer files are
  beside it), a torch.distributed.checkpoint ``.metadata`` (resumable when it names optimizer state),
  or only weight and configuration files (model-only).

The rule: optimizer state or a training position makes a checkpoint resumable; tensors without
either make it model-only; anything else (a YAML file pushed by hand) is undecided here, and then
has no position either, so it never outranks a checkpoint that has one (ordering.py).
"""

from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import BEST_MARKER, MODEL_ONLY, RESUMABLE, WEIGHT_FILES

MAX_PICKLE_BYTES = 64 << 20  # a data.pkl larger than this is not walked (the role stays undecided)
MAX_HEADER_BYTES = 16 << 20
HF_STATE = "trainer_state.json"
HF_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin", "optimizer.safetensors")
DCP_METADATA = ".metadata"
_OPTIMIZER_STRINGS = ("param_groups", "optimizer_states")
_PERSISTENT = ("BINPERSID", "PERSID")
_MEMO = ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")


@dataclass(frozen=True)
class Content:
    """What the files say: ``role`` resumable or model-only (None: cannot tell), and a position."""

    role: str | None = None
    global_step: int | None = None
    epoch: int | float | None = None

    def metadata(self) -> dict[str, Any]:
        """As push metadata (only what is known)."""
        out: dict[str, Any] = {}
        if self.global_step is not None:
            out["global_step"] = self.global_step
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out


def role_of(*, optimizer: bool, position: bool, tensors: bool) -> str | None:
    """The one rule: optimizer state or a position -> resumable; tensors alone -> model-only."""
    if optimizer or position:
        return RESUMABLE
    return MODEL_ONLY if tensors else None


def pickle_facts(data: bytes) -> tuple[bool, bool, dict[str, Any]] | None:
    """(names optimizer state, holds tensors, {global_step, epoch} found) of a pickle, from its
    opcodes; None when it is not one (then nothing can be told)."""
    optimizer = tensors = False
    found: dict[str, Any] = {}
    key: str | None = None
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in _MEMO:
                continue
            if op.name in _PERSISTENT:
                tensors = True
            number = isinstance(arg, int | float) and not isinstance(arg, bool) and arg >= 0
            if key in ("global_step", "epoch") and key not in found and number and (key == "epoch" or type(arg) is int):
                found[key] = arg
            key = arg if isinstance(arg, str) and "UNICODE" in op.name else None
            if key is not None and (key in _OPTIMIZER_STRINGS or key.startswith("optim")):
                optimizer = True
    except (ValueError, EOFError, struct.error, UnicodeDecodeError):
        return None
    return optimizer, tensors, found


def torch_zip(path: Path) -> Content | None:
    """A ``torch.save`` (zip) file's content, or None when ``path`` is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1 or z.getinfo(names[0]).file_size > MAX_PICKLE_BYTES:
                return None
            data = z.read(names[0])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return None
    return pickle_content(data)


def pickle_content(data: bytes) -> Content | None:
    """The content a ``torch.save``'s ``data.pkl`` describes (None: not a pickle)."""
    facts = pickle_facts(data)
    if facts is None:
        return None
    optimizer, tensors, found = facts
    role = role_of(optimizer=optimizer, position="global_step" in found, tensors=tensors)
    return Content(role, found.get("global_step"), found.get("epoch") if "global_step" in found else None)


def torch_stream_head(head: bytes | bytearray) -> Content | None:
    """What a ``torch.save`` holds, from the first bytes it wrote (a checkpoint saved straight into a
    repository is never read back): its first zip member is ``<archive>/data.pkl``, and walking the
    pickle stops at its STOP opcode, so the bytes after it do not matter. None when ``head`` does not
    open with that member or ends before its pickle does."""
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    name = bytes(head[30 : 30 + name_len])
    if not name.endswith(b"/data.pkl") or name.count(b"/") != 1:
        return None
    return pickle_content(bytes(head[30 + name_len + extra_len :]))


def safetensors_file(path: Path) -> Content | None:
    """A safetensors file's content (weights only), or None when ``path`` is not one."""
    try:
        with path.open("rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if not 2 <= size <= MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
    step = meta.get("global_step")
    position = int(step) if isinstance(step, str) and step.isdigit() else None
    return Content(role_of(optimizer=False, position=position is not None, tensors=True), position)


def file_content(path: Path) -> Content:
    """What one file holds (``Content()`` when it cannot tell)."""
    return torch_zip(path) or safetensors_file(path) or Content()


def folder_content(folder: Path, files: list[str]) -> Content:
    """What a folder checkpoint holds, from its files (relative POSIX paths)."""
    if BEST_MARKER in files:
        return Content()  # the best-model folder: its role is best (push.py), whatever it holds
    if HF_STATE in files:
        try:
            state = json.loads((folder / HF_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        state = state if isinstance(state, dict) else {}
        step, epoch = state.get("global_step"), state.get("epoch")
        optimizer = any(f in files for f in HF_OPTIMIZER_FILES) or any("optim_states" in f for f in files)
        return Content(
            role_of(optimizer=optimizer, position=False, tensors=True),
            step if isinstance(step, int) and not isinstance(step, bool) else None,
            epoch if isinstance(epoch, int | float) and not isinstance(epoch, bool) else None,
        )
    if DCP_METADATA in files:
        try:
            data = (folder / DCP_METADATA).read_bytes()
        except OSError:
            return Content()
        facts = pickle_facts(data) if len(data) <= MAX_PICKLE_BYTES else None
        return Content() if facts is None else Content(role_of(optimizer=facts[0], position=False, tensors=True))
    if files and all(WEIGHT_FILES.match(Path(f).name) for f in files):
        return Content(MODEL_ONLY)
    return Content()
