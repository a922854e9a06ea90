"""Shared fixtures: a key in the environment, a fresh local repository, real torch checkpoints,
and a way to run the real ``ckpt-sync`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

REPO_ROOT = Path(__file__).resolve().parent.parent
# Test helper modules (helpers.py, slow_cli.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import make_torch_checkpoint  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the developer's real config, data or keys."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("CKPT_SYNC_REPO", raising=False)
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    return home


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Fernet key, exported as BACKUP_ENCRYPTION_KEY."""
    k = Fernet.generate_key().decode()
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", k)
    return k


@pytest.fixture
def repo_url(tmp_path: Path) -> str:
    return (tmp_path / "repo").as_uri()


@pytest.fixture
def repo_dir(repo_url: str) -> Path:
    return Path(repo_url[len("file://") :])


@pytest.fixture
def torch_checkpoint() -> Callable[..., Path]:
    return make_torch_checkpoint


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed ``ckpt-sync`` command (a real process) and capture its output."""

    def run(
        *args: str, check: bool | None = None, env: dict[str, str] | None = None, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "ckpt_sync.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=600,
            **kw,
        )
        if check:
            assert proc.returncode == 0, f"ckpt-sync {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


