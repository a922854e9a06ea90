"""The best model: ``best_model/`` with ``best_metadata.json`` (``save_if_best``).

Written as a whole directory into a hidden temp folder, then swapped in, so ``best_model/`` is
always one complete best model. A crash in the middle of the swap leaves the previous one under a
hidden ``.old`` name, which ``heal_best_dir`` puts back on the next start.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .. import platform
from ..fs.atomic import atomic_write_json, fsync_dir
from .naming import BEST_METADATA

log = logging.getLogger("ckpt_sync.training")

STATE_DICT_FILE = "model_state_dict.pt"


def unwrap(model: Any) -> Any:
    """The module whose state dict is portable: strips DDP/DataParallel ``.module`` and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def has_save_pretrained(model: Any) -> bool:
    return callable(getattr(model, "save_pretrained", None))


def save_pretrained_takes_state_dict(model: Any) -> bool:
    """Hugging Face's ``save_pretrained(dir, state_dict=...)`` can write a snapshot from a background thread."""
    try:
        return "state_dict" in inspect.signature(model.save_pretrained).parameters
    except (TypeError, ValueError):
        return False


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def write_best(
    best_dir: Path,
    *,
    metadata: dict[str, Any],
    state_dict: dict[str, Any] | None,
    model: Any = None,
    tokenizer: Any = None,
) -> Path:
    """Replace ``best_dir`` with a new best model.

    With a model that has ``save_pretrained`` it is used (given ``state_dict`` when it accepts one);
    otherwise ``state_dict`` goes to ``model_state_dict.pt``. ``metadata`` becomes ``best_metadata.json``.
    """
    parent = best_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{best_dir.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        if model is not None and has_save_pretrained(model):
            if state_dict is not None and save_pretrained_takes_state_dict(model):
                model.save_pretrained(tmp, state_dict=state_dict)
            else:
                model.save_pretrained(tmp)
        else:
            if state_dict is None:
                raise ValueError("write_best needs a state_dict when the model has no save_pretrained")
            torch.save(state_dict, tmp / STATE_DICT_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {**metadata, "timestamp": metadata.get("timestamp") or datetime.now().isoformat()}
        atomic_write_json(tmp / BEST_METADATA, meta)
        _fsync_tree(tmp)
        _swap_in(tmp, best_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return best_dir


def _swap_in(new: Path, final: Path) -> None:
    old = final.parent / f".{final.name}.{secrets.token_hex(4)}.old"
    had_old = final.exists()
    if had_old:
        platform.replace(final, old)
    platform.replace(new, final)
    fsync_dir(final.parent)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def heal_best_dir(best_dir: Path) -> None:
    """Undo a swap interrupted by a crash; drop half-written temp folders (never a complete best model)."""
    parent = best_dir.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{best_dir.name}.*.old"), key=lambda p: p.stat().st_mtime_ns)
    if not best_dir.exists() and olds:
        platform.replace(olds[-1], best_dir)
        log.warning("[REPAIR] restored %s from an interrupted best-model swap", best_dir)
        olds = olds[:-1]
    for p in [*olds, *parent.glob(f".{best_dir.name}.*.tmp")]:
        with contextlib.suppress(OSError):
            shutil.rmtree(p)


def read_best_metadata(best_dir: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((best_dir / BEST_METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
