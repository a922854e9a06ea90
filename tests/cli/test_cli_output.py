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
    assert rc == 0 and "push big.bin" in shown and "% [" in shown
    rc, shown = _run_with_tty_stderr(["pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "o")])
    assert rc == 0 and "pull big.bin" in shown and "% [" in shown


def test_nothing_on_stderr_when_not_a_terminal(tmp_path, key, repo_url, cli):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1 << 20))
    for args in (["push", str(src)], ["ls"], ["pull", "--latest", "--to", str(tmp_path / "o")], ["verify"]):
        proc = cli(*args, "--repo", repo_url, check=True)
        assert proc.stderr == "", (args, proc.stderr)


# --- one unit family, a sane ETA, a bar that fits, a live line in watch, --quiet (issue 13) --------


def _pty(args: list[str], columns: int = 80, until: str | None = None, env: dict[str, str] | None = None):
    """Run ``ckpt-sync ARGS`` with stderr on a terminal of ``columns`` columns; with ``until``, SIGTERM it
    once that text was shown. Returns (exit code, everything shown)."""
    import fcntl
    import signal
    import struct
    import termios
    import time

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    from helpers import SLOW_CLI

    proc = subprocess.Popen(
        [sys.executable, SLOW_CLI, *args], stdout=subprocess.DEVNULL, stderr=follower, env={**os.environ, **(env or {})}
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    sent = False
    os.set_blocking(leader, False)
    while True:
        try:
            data = os.read(leader, 65536)
            if not data:
                break
            chunks.append(data)
        except BlockingIOError:
            if proc.poll() is not None:
                continue
            time.sleep(0.05)
        except OSError:
            break
        if until and not sent and until in b"".join(chunks).decode(errors="replace"):
            proc.send_signal(signal.SIGTERM)
            sent = True
        if time.monotonic() > deadline:
            proc.kill()
    os.close(leader)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def _drawn_lines(shown: str) -> list[str]:
    """Each state the terminal line went through (split on carriage returns, escape codes removed)."""
    import re

    clean = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", shown)
    return [x for x in re.split(r"[\r\n]", clean) if x.strip()]


def test_the_bar_fits_80_columns_uses_binary_units_and_waits_for_a_sane_eta():
    from ckpt_sync.cli.progress import render

    name = "push checkpoint_20251106_120000_37500_with_a_really_long_name.pt"
    early = render(name, 8 << 20, 1 << 30, 0.05, 80)  # one chunk in: no rate, no ETA yet
    assert len(early) <= 79 and "[" in early and "ETA --:--" in early and "MiB" in early
    bar = early[early.index("[") + 1 : early.index("]")]
    assert len(bar) >= 10
    later = render(name, 512 << 20, 1 << 30, 10.0, 80)  # 51.2 MiB/s, 512 MiB to go: 10 s
    assert "51.2 MiB/s" in later and "ETA 0:10" in later and len(later) <= 79
    for columns in (40, 60, 80, 120, 200):
        assert len(render(name, 1, 2, 2.0, columns)) <= columns - 1
    assert "MB/s" not in later.replace("MiB/s", "")


def test_push_on_an_80_column_terminal_draws_lines_that_fit(tmp_path, key, repo_url):
    src = tmp_path / "checkpoint_with_a_long_enough_name_to_need_shortening_20251106.bin"
    src.write_bytes(os.urandom(4 << 20))
    rc, shown = _pty(["push", "--repo", repo_url, str(src), "--chunk-size", "64K"], env={"CKPT_TEST_PUT_DELAY": "0.02"})
    assert rc == 0, shown
    drawn = [x for x in _drawn_lines(shown) if "%" in x]
    assert drawn and all(len(x) <= 79 for x in drawn), drawn
    assert all("MiB" in x or "KiB" in x for x in drawn) and not any("MB/s" in x.replace("MiB/s", "") for x in drawn)
    assert all(len(x[x.index("[") + 1 : x.index("]")]) >= 10 for x in drawn)


def test_watch_on_a_terminal_shows_a_live_line_for_the_job_in_flight(tmp_path, key, repo_url):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    (ckdir / "checkpoint_run_1.pt").write_bytes(os.urandom(4 << 20))
    rc, shown = _pty(
        ["watch", str(ckdir), "--to", repo_url, "--settle", "0.2", "--chunk-size", "64K", "--workers", "1"],
        until="uploading checkpoint_run_1.pt",
        env={"CKPT_TEST_PUT_DELAY": "0.05"},
    )
    assert rc == 0, shown
    live = [x for x in _drawn_lines(shown) if x.startswith("uploading checkpoint_run_1.pt")]
    assert live and all(len(x) <= 79 and "% [" in x for x in live), shown


@pytest.mark.parametrize(
    "verb",
    ["init", "keygen", "push", "ls", "pull", "verify", "watch", "prune", "status", "check", "cat", "stats", "copy",
     "forget", "tag"],
)
def test_every_verb_takes_quiet(cli, verb):
    proc = cli(verb, "--help")
    if proc.returncode != 0 and "invalid choice" in proc.stderr:
        pytest.skip(f"no {verb} verb here")
    assert "--quiet" in proc.stdout


def test_quiet_prints_nothing_but_errors(tmp_path, key, repo_url, cli):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1 << 20))
    for args in (
        ["init", "--repo", repo_url],
        ["push", str(src), "--repo", repo_url],
        ["pull", "--latest", "--to", str(tmp_path / "o"), "--repo", repo_url],
        ["verify", "--repo", repo_url],
        ["prune", "--keep", "1", "--repo", repo_url],
    ):
        proc = cli(*args, "--quiet", check=True)
        assert proc.stdout == "" and proc.stderr == "", (args, proc.stdout, proc.stderr)
    rc, shown = _pty(["push", "--repo", repo_url, str(src), "--quiet", "--tag", "again"])
    assert rc == 0 and shown.strip() == ""
    failed = cli("pull", "nope", "--to", str(tmp_path / "o"), "--repo", repo_url, "--quiet")
    assert failed.returncode == 1 and failed.stderr.startswith("ckpt-sync: error: ")
