"""The examples in docs/INTEGRATIONS.md run as written, and on a fresh host resume from the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEGRATIONS.md"
HANG_GUARD_S = 600  # only turns a hang into a failure


def example(section: str) -> str:
    text = DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    return code


def _run(script: str, cwd: Path, repo_url: str) -> str:
    cwd.mkdir(parents=True)
    (cwd / "train.py").write_text(script)
    env = {**os.environ, "CKPT_SYNC_REPO": repo_url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py"], cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("section", "longer", "first", "second"),
    [
        (
            "PyTorch Lightning",
            ("max_epochs=2", "max_epochs=3"),
            "trained to step 16 (resumed from None)",
            r"trained to step 24 \(resumed from checkpoints/(last|epoch=1-step=16)\.ckpt\)",
        ),
        (
            "Hugging Face Trainer",
            ("max_steps=6", "max_steps=8"),
            "trained to step 6 (resumed from None)",
            r"trained to step 8 \(resumed from out/checkpoint-6\)",
        ),
    ],
)
def test_the_documented_example_runs_and_a_fresh_host_resumes_from_the_repository(
    tmp_path, key, repo_url, section, longer, first, second
):
    pytest.importorskip("lightning" if section == "PyTorch Lightning" else "transformers")
    script = example(section)
    assert first in _run(script, tmp_path / "host-a", repo_url)
    resumed = script.replace(*longer)
    assert resumed != script
    out = _run(resumed, tmp_path / "host-b", repo_url)  # an empty folder: everything comes from the repository
    assert re.search(second, out), out
