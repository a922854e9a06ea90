"""Error types and the exit codes they map to.

Every failure a user can cause or meet is one of these, so the CLI can print one clear line and
choose the exit code in one place: 2 for usage/configuration (bad URL, missing or wrong key),
1 for an operation that failed (verification, nothing valid to pull, storage failures).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# What each optional part of ckpt-sync needs installed (pyproject.toml's extras): named in the one
# line that says it is missing. ckpt-sync is installed from its checkout, not from an index.
EXTRAS = {
    "s3": "boto3",
    "azure": "azure-storage-blob",
    "gcs": "google-cloud-storage",
    "lightning": "lightning",
    "hf": "transformers accelerate",
    "fsspec": "fsspec",
}


def install_hint(extra: str) -> str:
    """How to install what the ``extra`` part needs, into the environment ckpt-sync runs in."""
    return f"pip install {EXTRAS[extra]} (or pip install -e '.[{extra}]' in the ckpt-sync checkout)"


class CkptSyncError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = EXIT_FAILED


class UsageError(CkptSyncError):
    """Bad arguments, malformed URL, unknown scheme."""

    exit_code = EXIT_USAGE


class ConfigError(CkptSyncError):
    """Missing key, missing repository, bad settings: fix the configuration and re-run."""

    exit_code = EXIT_USAGE


class KeyMismatchError(ConfigError):
    """The key(s) given do not open this repository."""


class OperationFailed(CkptSyncError):
    """The operation ran and failed (verification failed, nothing valid to restore)."""

    exit_code = EXIT_FAILED


class LocalTargetError(OperationFailed):
    """Where a restore writes on this host is the problem (a symlink in the way, permissions, a
    read-only or full disk), not the checkpoint: no older checkpoint is tried instead."""


class NoSpace(LocalTargetError):
    """The destination's disk is full: no other checkpoint would fit better, so nothing falls back."""


class IntegrityError(OperationFailed):
    """Stored data failed authentication, hashing or size checks."""


class ChunkDamaged(IntegrityError):
    """A stored chunk fails its checks (authentication, its id, its size): ``chunk_id`` names it, so
    it can be remembered (``verify``) and healed (``repair``, the next ``push``)."""

    def __init__(self, message: str, chunk_id: str) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id


class MissingKeyError(IntegrityError):
    """A manifest no key in the ring opens, in a repository whose config lists keys the ring lacks:
    most likely written after a key rotation this host has not seen. Not damage: add the key."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, fingerprints: list[str]) -> None:
        super().__init__(message)
        self.fingerprints = fingerprints


class Cancelled(CkptSyncError):
    """Stopped on request (SIGTERM); nothing was committed and the work can resume later."""


# --- storage errors, raised by providers after classifying their SDK's exceptions ---------------


class StorageError(CkptSyncError):
    """A provider call failed."""


class NotFound(StorageError):
    """The object does not exist."""


class PermanentStorageError(StorageError):
    """Retrying will not help: no such bucket, access denied, bad credentials."""

    exit_code = EXIT_USAGE


class TransientStorageError(StorageError):
    """Worth retrying: timeouts, connection resets, 5xx, throttling."""
