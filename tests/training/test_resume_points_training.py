"""Resume points on the training side: the README's script with ``repo=`` restores and resumes from
its highest step; retention keeps ``max_keep`` resumable checkpoints plus the newest best; a copied
folder with shuffled mtimes still resumes from (and repairs to) the highest sound step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_training_docs import example
from training_helpers import HANG_GUARD_S, run_script

from ckpt_sync.api import open_repository
from ckpt_sync.format.selection import newest


def _run(script: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def test_readme_training_script_with_repo_restores_and_resumes_from_its_highest_step(
    tmp_path: Path, key: str, repo_url: str, cli
) -> None:
    script = tmp_path / "train.py"
    script.write_text(example())
    first_host, fresh_host = tmp_path / "host1", tmp_path / "host2"
    first_host.mkdir()
    fresh_host.mkdir()
    env = {**os.environ, "CKPT_SYNC_REPO": repo_url}
    first = _run(script, first_host, env)
    assert first.returncode == 0, first.stderr
    session = json.loads((first_host / "checkpoints" / "training" / "training_session.json").read_text())
    assert session["current_step"] == 300 and (first_host / "checkpoints/training/best_model").is_dir()

    # The repository holds exactly max_keep=5 resumable checkpoints plus the newest best model.
    manifests = newest(open_repository(repo_url).manifests())
    resumable = [m for m in manifests if m.role == "resumable"]
    bests = [m for m in manifests if m.role == "best"]
    assert [m.global_step for m in resumable] == [300, 250, 200, 150, 100]
    assert len(bests) == 1 and len(manifests) == 6
    best_meta = json.loads((first_host / "checkpoints/training/best_model/best_metadata.json").read_text())
    assert bests[0].global_step == best_meta["step"]  # the newest best, not an older one

    # A fresh host: pull --latest into an empty folder restores the highest-step resumable checkpoint...
    target = fresh_host / "checkpoints" / "training"
    pulled = cli("pull", "--latest", "--from", repo_url, "--to", str(target), check=True)
    assert [p.name for p in target.iterdir()] == [resumable[0].name], pulled.stdout
    assert resumable[0].name.endswith("_300.pt")
    # ...and the same script run there resumes from it (local only: nothing else to pull from).
    local_env = {k: v for k, v in os.environ.items() if k != "CKPT_SYNC_REPO"}
    second = _run(script, fresh_host, local_env)
    assert second.returncode == 0, second.stderr
    resumed = [ln for ln in second.stderr.splitlines() if ln.startswith("[RESUME]")]
    assert len(resumed) == 1, second.stderr
    assert resumable[0].name in resumed[0] and "step 300" in resumed[0] and "local" in resumed[0]
    assert "trained to step 300" in second.stdout


def test_a_copied_run_with_shuffled_mtimes_resumes_from_the_highest_step_and_repairs_to_the_next(
    tmp_path: Path, cli
) -> None:
    run = tmp_path / "run"
    done = run_script("--dir", str(run), "--steps", "30", "--every", "5", "--max-keep", "5")
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)  # what `cp -r` does: every mtime new
    steps = sorted(int(p.stem.rsplit("_", 1)[1]) for p in copy.glob("checkpoint_*.pt"))
    assert steps == [10, 15, 20, 25, 30]
    for i, step in enumerate(reversed(steps)):  # the highest step gets the oldest mtime
        stamp = 1_700_000_000_000_000_000 + i * 10**9
        os.utime(copy / f"checkpoint_run1_{step}.pt", ns=(stamp, stamp))

    resumed = run_script("--dir", str(copy), "--steps", "30", "--every", "5", "--recover")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from 30" in resumed.stdout
    assert "[RESUME] resuming from" in resumed.stderr and "checkpoint_run1_30.pt (step 30" in resumed.stderr

    victim = copy / "checkpoint_run1_30.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    os.utime(victim, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    repaired = cli("check", "--repair", str(copy))
    assert repaired.returncode == 0, repaired.stderr
    session = json.loads((copy / "training_session.json").read_text())
    assert session["current_step"] == 25
    assert [Path(p).name for p in session["checkpoints"]][-1] == "checkpoint_run1_25.pt"


def test_a_fresh_host_with_only_the_old_key_refuses_to_resume_from_an_older_checkpoint(
    tmp_path: Path, repo_url: str, cli, tiny
) -> None:
    import base64

    import pytest
    from cryptography.fernet import Fernet
    from helpers import make_torch_checkpoint

    from ckpt_sync.errors import MissingKeyError
    from ckpt_sync.format.crypto import fingerprint
    from ckpt_sync.training import CheckpointManager

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    old_ring, rotated_ring = tmp_path / "old.key", tmp_path / "rotated.key"
    old_ring.write_text(old + "\n")
    rotated_ring.write_text(f"{new}\n{old}\n")
    for step, ring in ((10, old_ring), (20, rotated_ring)):
        src = make_torch_checkpoint(tmp_path / "src" / f"checkpoint_run_{step}.pt", step=step)
        cli("push", "--repo", repo_url, "--key-file", str(ring), str(src), check=True)
    model, opt, _ = tiny()
    mgr = CheckpointManager(
        tmp_path / "fresh", model=model, optimizer=opt, repo=repo_url, key_file=old_ring, handle_signals=False
    )
    with mgr, pytest.raises(MissingKeyError, match=fingerprint(base64.urlsafe_b64decode(new))):
        mgr.recover()
    assert not list((tmp_path / "fresh").glob("checkpoint_*"))  # nothing older was restored behind its back
