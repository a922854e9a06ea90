"""What a local-repository verb imports: no cloud SDK, no torch, nothing another verb needs.

Every ``ckpt-sync ls`` in a loop, every shell completion and every ``--help`` pays for its imports;
a cloud SDK or torch costs more than the verb. Each case runs the real CLI in a fresh interpreter
and reads ``sys.modules`` when it is done (cost is measured in bench/cli_startup.py, never here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_torch_checkpoint

# Run the CLI as `python -m ckpt_sync.cli` does, then list what got imported.
PROBE = r"""
import json, runpy, sys
sys.argv = ["ckpt-sync", *sys.argv[1:]]
try:
    runpy.run_module("ckpt_sync.cli", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print("\nMODULES " + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

SDKS_AND_TORCH = ("boto3", "botocore", "s3transfer", "azure", "google", "torch", "numpy", "lightning", "transformers")
# Only `watch` needs the inotify observer, only the queue verbs sqlite3, only third-party plugins the
# entry-point machinery.
NOT_FOR_LOCAL = ("watchdog", "sqlite3", "importlib.metadata")
OTHER_VERBS = (
    "ckpt_sync.transfer.verify",
    "ckpt_sync.transfer.stats",
    "ckpt_sync.service.status",
    "ckpt_sync.transfer.copying",
    "ckpt_sync.transfer.forget",
    "ckpt_sync.format.repo_keys",
    "ckpt_sync.service.sync_client",
    "ckpt_sync.transfer.reader",
    "ckpt_sync.service.queue",
    "ckpt_sync.service.daemon",
    "ckpt_sync.service.watcher",
    "ckpt_sync.transfer.prune",
    "ckpt_sync.service.worker",
)


def _imported(args: list[str], env: dict[str, str]) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env)
    line = proc.stdout.rsplit("\nMODULES ", 1)
    assert len(line) == 2, proc.stdout + proc.stderr
    report = json.loads(line[1])
    return report["code"], set(report["modules"])


def _roots(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.fixture
def local_repo(tmp_path: Path, key: str) -> tuple[Path, dict[str, str]]:
    """A local repository holding one real torch checkpoint (pushed with the real CLI)."""
    env = {**os.environ, "BACKUP_ENCRYPTION_KEY": key}
    src = make_torch_checkpoint(tmp_path / "src" / "checkpoint_startup_1.pt")
    push = [sys.executable, "-m", "ckpt_sync.cli", "push", "--repo", str(tmp_path / "repo"), str(src)]
    subprocess.run(push, check=True, capture_output=True, env=env)
    return tmp_path, env


@pytest.mark.parametrize(
    "verb",
    [
        ["--help"],
        ["ls"],
        ["pull", "--latest"],
        ["push"],
    ],
    ids=lambda v: v[0],
)
def test_a_local_verb_imports_no_cloud_sdk_torch_or_other_verbs(local_repo, verb: list[str]) -> None:
    work, env = local_repo
    args = list(verb)
    if verb[0] == "ls":
        args += ["--repo", str(work / "repo")]
    elif verb[0] == "pull":
        args += ["--repo", str(work / "repo"), "--to", str(work / "out")]
    elif verb[0] == "push":
        args += ["--repo", str(work / "repo"), str(work / "src" / "checkpoint_startup_1.pt")]
    code, modules = _imported(args, env)
    assert code in (0, None), f"{args} exited {code}"
    if verb[0] != "--help":
        assert "ckpt_sync.format.repository" in modules  # the probe sees what the verb imported
    assert _roots(modules, SDKS_AND_TORCH) == []
    assert _roots(modules, NOT_FOR_LOCAL) == []
    assert _roots(modules, OTHER_VERBS) == []


def test_each_verb_in_the_table_is_the_one_its_module_registers() -> None:
    """``VERBS`` maps a verb to its module so a command line imports only that one: the two must agree."""
    from ckpt_sync.cli.app import VERBS, build_parser

    def listed(parser) -> list[str]:  # the verbs its --help lists, in order
        text = parser.format_help().partition("VERB\n")[2].partition("\noptions:")[0]
        return re.findall(r"^    (\S+)", text, re.M)

    for verb in VERBS:
        assert listed(build_parser([verb])) == [verb]
    assert listed(build_parser([])) == list(VERBS)
