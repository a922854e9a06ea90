"""What the terminal shows: a progress bar on a TTY, nothing noisy otherwise; --help everywhere."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

VERBS = ["keygen", "push", "ls", "pull", "verify"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(cli, verb):
    proc = cli(verb, "--help")
    assert proc.returncode == 0 and "usage: ckpt-sync" in proc.stdout


def _run_with_tty_stderr(args: list[str]) -> tuple[int, str]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ckpt_sync.cli", *args], stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO once the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def test_push_and_pull_show_a_progress_bar_on_a_terminal(tmp_path, key, repo_url):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 << 20))
    rc, shown = _run_with_tty_stderr(["push", "--repo", repo_url, str(src), "--chunk-size", "64K"])
    assert rc == 0 and "push big.bin" in shown and "%|" in shown
    rc, shown = _run_with_tty_stderr(["pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "o")])
    assert rc == 0 and "pull big.bin" in shown and "%|" in shown


def test_nothing_on_stderr_when_not_a_terminal(tmp_path, key, repo_url, cli):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1 << 20))
    for args in (["push", str(src)], ["ls"], ["pull", "--latest", "--to", str(tmp_path / "o")], ["verify"]):
        proc = cli(*args, "--repo", repo_url, check=True)
        assert proc.stderr == "", (args, proc.stderr)
