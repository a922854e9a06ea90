"""Checking checkpoints (``verify_checkpoint`` / ``validate_checkpoint_integrity``) and repair.

Differences from a plain ``torch.load`` check, on purpose:
- loads use ``weights_only=True`` (a checkpoint is a pickle; a pickle can run code) and ``mmap=True``;
- the zip container's CRC-32s are checked too: ``torch.load`` with mmap never reads tensor bytes, so
  without this a flipped byte in the weights would pass;
- ``repair`` moves bad files to ``quarantine/`` (with a note saying why) instead of deleting them:
  a file that fails here may still be the only copy of hours of training, worth a second look.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import platform
from ..errors import UsageError
from ..fs.atomic import fsync_dir, is_temp_name
from .loading import load_checkpoint, plain_file
from .naming import QUARANTINE_DIR, list_checkpoints, parse_checkpoint_path
from .session import read_session, rebuild_session, session_path

log = logging.getLogger("ckpt_sync.training")

REQUIRED_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch", "global_step")
MODEL_ONLY_KEYS = ("model_state_dict", "epoch", "global_step")


@dataclass(frozen=True)
class CheckResult:
    path: Path
    ok: bool
    problems: tuple[str, ...] = ()
    checks: dict[str, bool] = field(default_factory=dict)
    global_step: int | None = None
    epoch: int | None = None
    kind: str | None = None  # "full" or "model_only"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "problems": list(self.problems),
            "checks": self.checks,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "kind": self.kind,
        }


def _crc_ok(plain: Path) -> str | None:
    """None when every zip member's CRC-32 matches; else what is wrong."""
    try:
        with zipfile.ZipFile(plain) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"not a complete torch.save archive ({err})"
    return None if bad is None else f"checksum mismatch in member {bad}"


def _why(err: Exception) -> str:
    """One line: torch's weights-only errors put the useful part (the refused global) deep in a long message."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = next(
        (ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln), lines[0] if lines else ""
    )
    return f"{type(err).__name__}: {useful[:240]}"


def inspect_checkpoint(path: str | os.PathLike[str], *, crc: bool = True) -> tuple[CheckResult, dict[str, Any] | None]:
    """Check one checkpoint; also return its loaded (mmap) content when it is sound, for reuse."""
    path = Path(path)
    checks = {
        "file_exists": path.is_file(),
        "loadable": False,
        "has_model": False,
        "has_optimizer": False,
        "state_dict_valid": False,
        "checksums_valid": False,
    }
    if not checks["file_exists"]:
        return CheckResult(path, False, ("file not found",), checks), None
    problems: list[str] = []
    ckpt: dict[str, Any] | None = None
    try:
        with plain_file(path) as plain:
            crc_problem = _crc_ok(plain) if crc else None
            checks["checksums_valid"] = crc and crc_problem is None
            if crc_problem:
                problems.append(crc_problem)
            else:
                ckpt = load_checkpoint(plain)
                checks["loadable"] = True
    except Exception as err:
        problems.append(f"cannot load with weights_only=True: {_why(err)}")
    if ckpt is None:
        return CheckResult(path, False, tuple(problems), checks), None

    kind = ckpt.get("checkpoint_kind", "full")
    required = MODEL_ONLY_KEYS if kind == "model_only" else REQUIRED_KEYS
    problems += [f"missing key {k!r}" for k in required if k not in ckpt]
    checks["has_model"] = "model_state_dict" in ckpt
    checks["has_optimizer"] = "optimizer_state_dict" in ckpt
    sd = ckpt.get("model_state_dict")
    checks["state_dict_valid"] = (
        isinstance(sd, dict) and len(sd) > 0 and all(isinstance(v, torch.Tensor) for v in sd.values())
    )
    if checks["has_model"] and not checks["state_dict_valid"]:
        problems.append("model_state_dict is not a non-empty dict of tensors")
    opt = ckpt.get("optimizer_state_dict")
    if kind != "model_only" and opt is not None and not (isinstance(opt, dict) and "param_groups" in opt):
        problems.append("optimizer_state_dict is not an optimizer state dict")
    step = ckpt.get("global_step")
    parsed = parse_checkpoint_path(path)
    if parsed and isinstance(step, int) and parsed[1] != step:
        problems.append(f"file name says step {parsed[1]} but the content says {step} (renamed or swapped file)")
    result = CheckResult(
        path,
        not problems,
        tuple(problems),
        checks,
        step if isinstance(step, int) else None,
        ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None,
        kind,
    )
    return result, (ckpt if not problems else None)


def check_checkpoint(path: str | os.PathLike[str], *, crc: bool = True) -> CheckResult:
    return inspect_checkpoint(path, crc=crc)[0]


def verify_checkpoint(path: str | os.PathLike[str]) -> bool:
    """The quick check: loads (safely), has the required keys and a valid model state dict."""
    result = check_checkpoint(path)
    if result.ok:
        log.info("[OK] Checkpoint verified: %s", path)
    else:
        log.error("[ERROR] Checkpoint verification failed: %s: %s", path, "; ".join(result.problems))
    return result.ok


def validate_checkpoint_integrity(path: str | os.PathLike[str]) -> dict[str, bool]:
    """The integrity report: file_exists, loadable, has_model, has_optimizer, state_dict_valid
    (plus checksums_valid: the archive's CRC-32s match)."""
    return dict(check_checkpoint(path).checks)


def check_directory(directory: str | os.PathLike[str]) -> list[CheckResult]:
    """Check every manager-named checkpoint in ``directory``, oldest first; UsageError if it is not a folder."""
    if not Path(directory).is_dir():
        raise UsageError(f"{directory} is not a folder")
    return [check_checkpoint(c.path) for c in list_checkpoints(directory)]


def quarantine(path: Path, directory: str | os.PathLike[str], reason: str) -> Path:
    """Move ``path`` into ``directory/quarantine/`` (never overwriting) with a ``.reason.txt`` beside it."""
    qdir = Path(directory) / QUARANTINE_DIR
    qdir.mkdir(exist_ok=True)
    dest = qdir / path.name
    n = 1
    while dest.exists():
        dest = qdir / f"{path.name}.{n}"
        n += 1
    platform.replace(path, dest)
    (qdir / f"{dest.name}.reason.txt").write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {reason}\n")
    fsync_dir(qdir)
    fsync_dir(path.parent)
    log.warning("[REPAIR] quarantined %s -> %s (%s)", path, dest, reason)
    return dest


@dataclass
class RepairReport:
    results: list[CheckResult]
    quarantined: list[tuple[Path, Path]]
    session_file: Path


def leftover_temps(directory: str | os.PathLike[str], older_than_s: float) -> list[Path]:
    """Temp files of interrupted saves (``.checkpoint_….tmp``), left alone while they may still be written."""
    cutoff = time.time() - older_than_s
    out = []
    for p in Path(directory).glob(".checkpoint_*"):
        if p.is_file() and is_temp_name(p.name) and p.stat().st_mtime <= cutoff:
            out.append(p)
    return sorted(out)


def repair(directory: str | os.PathLike[str], *, temp_grace_s: float = 300.0) -> RepairReport:
    """Quarantine bad checkpoints and stale temp files, then rebuild ``training_session.json``.

    Temp files younger than ``temp_grace_s`` are left alone: a running trainer may still be writing them.
    """
    directory = Path(directory)
    results = check_directory(directory)
    base = read_session(directory)
    moved: list[tuple[Path, Path]] = []
    for r in results:
        if not r.ok:
            moved.append((r.path, quarantine(r.path, directory, "; ".join(r.problems))))
    for tmp in leftover_temps(directory, temp_grace_s):
        moved.append((tmp, quarantine(tmp, directory, "partial write of an interrupted save")))
    rebuild_session(directory, base, epoch_of=lambda p: load_checkpoint(p).get("epoch"))
    return RepairReport(results, moved, session_path(directory))


def recovery_drill(
    directory: str | os.PathLike[str], make_model: Callable[[], torch.nn.Module], sample_input: Any
) -> bool:
    """The weekly recovery test: load the newest checkpoint into a fresh model and run a forward pass."""
    files = list_checkpoints(directory)
    if not files:
        log.error("[ERROR] No checkpoints found in %s", directory)
        return False
    latest = files[-1].path
    try:
        ckpt = load_checkpoint(latest)
        model = make_model()
        model.load_state_dict(ckpt["model_state_dict"])
        model.eval()
        with torch.no_grad():
            model(sample_input)
    except Exception as err:
        log.error("[ERROR] Recovery test failed on %s: %s", latest, err)
        return False
    log.info("[OK] Recovery test passed: %s", latest)
    return True
