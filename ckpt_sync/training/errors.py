"""Errors and warnings of the training side, in the core's hierarchy so the CLI prints them the same way."""

from __future__ import annotations

from ..errors import CkptSyncError, OperationFailed


class CheckpointSaveError(OperationFailed):
    """A checkpoint write failed (in the background for async saves; raised on the next call)."""


class RecoveryError(OperationFailed):
    """``recover()`` could not tell what to resume from: no local checkpoint, and the repository
    could not be read (the message says why and what to do)."""


class TrainingInterrupted(CkptSyncError):
    """SIGINT/SIGTERM arrived; an emergency checkpoint was written at a consistent step before raising.

    ``checkpoint`` is the file written, ``signum`` the signal that asked for it.
    """

    exit_code = 130

    def __init__(self, message: str, *, signum: int, checkpoint: object) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint


class CheckpointCorruptWarning(UserWarning):
    """A checkpoint failed verification and recovery walked back past it."""
