"""Third-party providers: the example in docs/PROVIDERS.md, installed as a real distribution with an
entry point in the ``ckpt_sync.providers`` group, is found by scheme and works for push and pull."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ckpt_sync.providers import RetryingProvider, open_provider

from ckpt_sync.api import open_repository
from ckpt_sync.errors import UsageError
from ckpt_sync.format.chunking import ChunkPolicy
from ckpt_sync.transfer.push import push_path
from ckpt_sync.transfer.restore import pull

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROVIDERS.md"


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What ``pip install`` of the plug-in leaves on sys.path: its module and a dist-info with the entry point."""
    text = DOC.read_text()
    example = re.search(r"<!-- plugin-example.*?-->\s*```python\n(.*?)```", text, re.S)
    entry = re.search(r'\[project\.entry-points\."ckpt_sync\.providers"\]\n(\w+) = "([\w.:]+)"', text)
    assert example and entry, "docs/PROVIDERS.md lost its plug-in example"
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "ckpt_sync_memstore.py").write_text(example.group(1))
    dist = site / "ckpt_sync_memstore-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ckpt-sync-memstore\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ckpt_sync.providers]\n{entry.group(1)} = {entry.group(2)}\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    sys.modules.pop("ckpt_sync_memstore", None)


def test_a_provider_registered_by_entry_point_is_found_by_its_scheme(installed_plugin: Path) -> None:
    provider = open_provider("mem://found", retry=None)
    assert type(provider).__name__ == "MemoryProvider" and type(provider).__module__ == "ckpt_sync_memstore"
    assert isinstance(open_provider("mem://found"), RetryingProvider)  # wrapped in retries like the built-ins
    with pytest.raises(UsageError, match=r"known: .*\bmem\b"):
        open_provider("nosuch://x")


def test_the_documented_example_provider_carries_a_push_and_pull(
    installed_plugin: Path, key: str, tmp_path: Path, torch_checkpoint: Callable[..., Path]
) -> None:
    ckpt = torch_checkpoint(tmp_path / "ckpt" / "model.pt")
    repo = open_repository("mem://demo", create=True)
    manifest, _ = push_path(repo, ckpt, policy=ChunkPolicy.of_size(65536))
    restored, _ = pull(repo, tmp_path / "restored")
    assert restored.id == manifest.id
    assert (tmp_path / "restored" / ckpt.name).read_bytes() == ckpt.read_bytes()


def test_without_the_plugin_the_scheme_is_unknown() -> None:
    with pytest.raises(UsageError, match="unknown repository URL scheme mem://"):
        open_provider("mem://demo")
