"""The integrations are optional extras: the sync core (watch included) imports and runs without any
framework, and each integration says in one line what to install when its framework is missing."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that makes the named top-level modules uninstallable, as on a host without them.
BLOCK = """
import sys
BLOCKED = set({blocked!r})
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
"""


def _python(code, blocked):
    script = BLOCK.format(blocked=sorted(blocked)) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_the_core_and_watch_import_without_torch_or_any_framework():
    code = (
        "import ckpt_sync, ckpt_sync.cli, ckpt_sync.service.daemon, ckpt_sync.service.layouts\n"
        "import ckpt_sync.integrations.sync\n"
        "import ckpt_sync.cli.watch, ckpt_sync.cli.pull\n"
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') if m in sys.modules))\n"
    )
    proc = _python(code, {"torch", "lightning", "pytorch_lightning", "lightning_fabric", "transformers"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("[]")


def test_an_integration_without_its_framework_names_the_extra_to_install():
    lightning = _python("import ckpt_sync.lightning", {"lightning", "pytorch_lightning", "lightning_fabric"})
    assert lightning.returncode == 1 and "pip install lightning (or pip install -e '.[lightning]'" in lightning.stderr
    hf = _python("import ckpt_sync.hf", {"transformers"})
    assert hf.returncode == 1 and "pip install transformers accelerate (or pip" in hf.stderr


def test_the_extras_are_declared_and_the_test_extra_installs_them():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("lightning") for r in extras["lightning"])
    assert any(r.startswith("transformers") for r in extras["hf"])
    (own,) = [r for r in extras["test"] if r.startswith("ckpt-sync[")]
    assert {"lightning", "hf"} <= set(own[len("ckpt-sync[") : -1].split(","))


def test_both_framework_integrations_take_one_set_of_sync_options(tmp_path):
    """CkptSyncCallback and CkptSyncCheckpointIO take the same keywords (SyncOptions); a misspelt
    one stops at construction, before any checkpoint is saved."""
    import pytest

    from ckpt_sync.hf import CkptSyncCallback
    from ckpt_sync.integrations.sync import SyncOptions
    from ckpt_sync.lightning import CkptSyncCheckpointIO

    chosen = {"key_file": tmp_path / "k", "state_dir": tmp_path / "s", "keep": 3, "worker": False, "drain_timeout": 5}
    for integration in (CkptSyncCallback, CkptSyncCheckpointIO):
        assert integration("file:///r", **chosen).sync.options == SyncOptions("file:///r", **chosen)
        with pytest.raises(TypeError, match="kep"):
            integration("file:///r", kep=3)
