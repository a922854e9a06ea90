"""The "use it in your training loop" example in docs/TRAINING.md runs as written, and resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from training_helpers import HANG_GUARD_S

DOC = Path(__file__).resolve().parents[2] / "docs" / "TRAINING.md"


def example() -> str:
    text = DOC.read_text()
    section = text.split("## Use it in your training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_documented_training_loop_runs_and_resumes_after_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    # Same script, plus one line that stops it with a real SIGTERM in the middle of step 120.
    interrupted = example().replace(
        "        optimizer.step()\n",
        "        optimizer.step()\n"
        "        if step == 120 and os.environ.get('STOP_AT_120'):\n"
        "            os.kill(os.getpid(), __import__('signal').SIGTERM)\n",
    )
    assert interrupted != example()
    script.write_text(interrupted)
    env = {k: v for k, v in os.environ.items() if k != "CKPT_SYNC_REPO"}

    first = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env={**env, "STOP_AT_120": "1"},
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    ckpt_dir = tmp_path / "checkpoints" / "training"
    session = json.loads((ckpt_dir / "training_session.json").read_text())
    assert session["current_step"] == 120 and Path(session["checkpoints"][-1]).name.endswith("_120.pt")
    assert not (tmp_path / "logs" / "training.pid").exists()

    second = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert second.returncode == 0, second.stderr
    assert "trained to step 300" in second.stdout
    session = json.loads((ckpt_dir / "training_session.json").read_text())
    assert session["current_step"] == 300 and len(session["checkpoints"]) == 5
    assert (ckpt_dir / "best_model" / "best_metadata.json").exists()


def test_the_readme_shows_the_same_training_loop_example() -> None:
    readme = (DOC.parents[1] / "README.md").read_text()
    section = readme.split("## Use it in your training loop", 1)[1]
    shown = re.search(r"```python\n(.*?)```", section, re.S)
    assert shown is not None and shown.group(1) == example()
