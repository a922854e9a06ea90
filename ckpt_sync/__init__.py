"""ckpt-sync: keep PyTorch training checkpoints safe off-machine.

The sync core imports without torch; only the training-side manager needs it.
"""

from __future__ import annotations

from .api import cat, checkpoint, init_repository, open_repository, pull, push
from .errors import CkptSyncError
from .reader import CheckpointFile
from .reader import open_file as open  # ckpt_sync.open(...) mirrors the builtin on purpose
from .sync_client import SyncClient

__version__ = "0.1.0"
__all__ = [
    "CheckpointFile",
    "CheckpointManager",
    "CkptSyncError",
    "SyncClient",
    "__version__",
    "cat",
    "checkpoint",
    "init_repository",
    "open",
    "open_repository",
    "pull",
    "push",
]


def __getattr__(name: str) -> object:
    # Lazy, so `import ckpt_sync` never imports torch: only touching CheckpointManager does.
    if name == "CheckpointManager":
        from .training import CheckpointManager

        return CheckpointManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
