"""Training side of ckpt-sync (needs torch): checkpointing inside a PyTorch training loop, as ``CheckpointManager``.

Import cost: this package imports torch; ``import ckpt_sync`` alone does not.
"""

from __future__ import annotations

from .backup import backup_checkpoint
from .config import CheckpointConfig, load_checkpoint_config
from .errors import CheckpointCorruptWarning, CheckpointSaveError, RecoveryError, TrainingInterrupted
from .handoff import QueueHandoff, SyncHandoff, make_handoff
from .loading import load_checkpoint
from .manager import CheckpointManager
from .options import AsyncWrites, Emergency, LocalRetention, RemoteSync, Triggers
from .triggers import AnyTrigger, BestMetric, EveryNSeconds, EveryNSteps, Never, SaveContext, SaveTrigger
from .verification import (
    CheckResult,
    RepairReport,
    check_checkpoint,
    check_directory,
    recovery_drill,
    repair,
    validate_checkpoint_integrity,
    verify_checkpoint,
)

__all__ = [
    "AnyTrigger",
    "AsyncWrites",
    "BestMetric",
    "CheckResult",
    "CheckpointConfig",
    "CheckpointCorruptWarning",
    "CheckpointManager",
    "CheckpointSaveError",
    "Emergency",
    "EveryNSeconds",
    "EveryNSteps",
    "LocalRetention",
    "Never",
    "QueueHandoff",
    "RecoveryError",
    "RemoteSync",
    "RepairReport",
    "SaveContext",
    "SaveTrigger",
    "SyncHandoff",
    "TrainingInterrupted",
    "Triggers",
    "backup_checkpoint",
    "check_checkpoint",
    "check_directory",
    "load_checkpoint",
    "load_checkpoint_config",
    "make_handoff",
    "recovery_drill",
    "repair",
    "validate_checkpoint_integrity",
    "verify_checkpoint",
]
