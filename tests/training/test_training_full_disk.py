"""A CheckpointManager save into a full disk (a real, small tmpfs): one clear error that says there is
no space, where, and about how much was needed; no partial file; the earlier checkpoint intact."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ckpt_sync.training import CheckpointManager, CheckpointSaveError, load_checkpoint


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s filesystem until about ``leave`` bytes are free."""
    with open(folder / "filler", "wb") as f:
        while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave + (64 << 10):
            f.write(b"\0" * (64 << 10))
            f.flush()


@pytest.mark.parametrize("mode", ["sync", "async", "compressed"])
def test_a_save_into_a_full_disk_says_no_space_where_and_how_much(tiny_disk: Path, mode: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(512, 512)  # 1 MiB of weights
    directory = tiny_disk / "ck"
    mgr = CheckpointManager(
        directory,
        model=model,
        interval_s=None,
        handle_signals=False,
        async_save=mode == "async",
        compression=mode == "compressed",
        max_keep=5,
    )
    first = mgr.save(1, 0)
    mgr.wait()
    _fill(tiny_disk, leave=256 << 10)
    with pytest.raises(CheckpointSaveError) as raised:
        mgr.save(2, 0)
        mgr.wait()
    message = str(raised.value)
    assert "no space left on device" in message, message
    assert str(directory) in message, message
    assert re.search(r"needs about 1\.\d MiB", message), message  # the weights, about 1 MiB
    assert "unexpected" not in message and "\n" not in message, message
    mgr.close()
    left = sorted(p.name for p in directory.iterdir() if p.name.startswith((".checkpoint", "checkpoint")))
    assert left == [first.name]  # no partial or temp file of step 2
    (tiny_disk / "filler").unlink()
    assert torch.equal(load_checkpoint(first)["model_state_dict"]["weight"], model.weight.detach())
