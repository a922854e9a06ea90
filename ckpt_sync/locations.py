"""Default places on the user's machine (XDG folders)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_REPO = "CKPT_SYNC_REPO"


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/ckpt-sync`` (default ``~/.config/ckpt-sync``): the default key lives here."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "ckpt-sync"


def data_dir() -> Path:
    """``$XDG_DATA_HOME/ckpt-sync`` (default ``~/.local/share/ckpt-sync``)."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ckpt-sync"


def state_home() -> Path:
    """``$XDG_STATE_HOME/ckpt-sync`` (default ``~/.local/state/ckpt-sync``): queues not tied to a folder."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "ckpt-sync"


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/ckpt-sync`` (default ``~/.cache/ckpt-sync``): copies that can be dropped any time."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ckpt-sync"


def default_key_file() -> Path:
    return config_dir() / "key"


def default_repo_url() -> str:
    """The embedded default repository: a local folder, so everything works with no cloud account."""
    return (data_dir() / "repo").as_uri()
