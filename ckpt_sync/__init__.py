"""ckpt-sync: keep PyTorch training checkpoints safe off-machine.

The sync core imports without torch; only the training-side manager needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import api
from .api import *  # noqa: F403 - the library surface: push, pull, open, ... (api.__all__)
from .errors import CkptSyncError
from .format.repo_config import RepositorySettings

if TYPE_CHECKING:
    from .service.sync_client import SyncClient
    from .training import CheckpointManager
    from .transfer.reader import CheckpointFile

__version__ = "0.1.0"
__all__ = [
    "CheckpointFile",
    "CheckpointManager",
    "CkptSyncError",
    "RepositorySettings",
    "SyncClient",
    "__version__",
    *api.__all__,
]


# Imported on first touch: `import ckpt_sync` never imports torch (CheckpointManager), and a CLI
# verb does not pay for the durable queue (SyncClient: sqlite3, the worker) or the lazy reader.
_LAZY = {
    "CheckpointManager": ("training", "CheckpointManager"),
    "SyncClient": ("service.sync_client", "SyncClient"),
    "CheckpointFile": ("transfer.reader", "CheckpointFile"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
