"""ckpt-sync where Linux's capabilities are missing, simulated here (no Windows or macOS machine).

Each test runs the real operation in a child process (simulate.py) that, before ckpt_sync is
imported, takes away what a Windows-like or a macOS-like host lacks; the child then reports what it
saw missing, and the test checks that too, so it cannot pass because a capability was there after
all. Results are compared byte for byte with the source.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_folder_checkpoint, make_torch_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SIMULATE = Path(__file__).with_name("simulate.py")
TRAIN_SCRIPT = ROOT / "tests" / "training" / "train_script.py"
PROFILES = ["windows-like", "macos-like"]
HANG_GUARD_S = 600  # turns a hang into a failure; no test asserts on time


def simulated(profile: str, *args: str, report: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CKPT_SIM_REPORT": str(report)}
    cmd = [sys.executable, str(SIMULATE), profile, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S, **kw)


def start_simulated(profile: str, *args: str, report: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CKPT_SIM_REPORT": str(report), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(SIMULATE), profile, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def assert_absent(profile: str, report: Path) -> None:
    """What the profile takes away was missing inside the child (seen from there, after the work)."""
    seen = json.loads(report.read_text())
    # Both: no O_DIRECT (no unbuffered I/O at all but macOS's F_NOCACHE, which Linux lacks), no inotify
    # (watchdog polls: no close-after-write events), no reflink.
    assert seen["uncached"] is False
    assert seen["observer"] == "PollingObserver" and seen["observer_reports_close"] is False
    assert seen["reflink"] is False
    if profile == "windows-like":
        assert seen["fcntl_importable"] is False and seen["platform_fcntl"] is False
        assert seen["platform_msvcrt_simulated"] is True  # locks went through msvcrt.locking
        assert seen["link"] == "EPERM"
        assert seen["aes_backend"] == "cryptography" and seen["libcrypto"] is False
        assert seen["os_view_has"] == [] and seen["mmap_view_has"] == [] and seen["posix_only_signals"] == []
        assert seen["stop_signals"] == ["SIGINT", "SIGTERM", "SIGBREAK"]
        assert seen["windows_names"] is True
    else:
        assert seen["fcntl_importable"] is True and seen["link"] is True
        assert "pread" in seen["os_view_has"]  # only what macOS lacks is gone


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_the_package_imports_with_fcntl_blocked():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fcntl':\n"
        "            raise ModuleNotFoundError(\"No module named 'fcntl'\", name=name)\n"
        "sys.modules.pop('fcntl', None)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import ckpt_sync, ckpt_sync.cli, ckpt_sync.training\n"
        "from ckpt_sync import platform\n"
        "print('fcntl' in sys.modules, platform.fcntl)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False None"


@pytest.mark.parametrize("profile", PROFILES)
def test_push_pull_verify_and_watch_once_work_byte_exact(profile, tmp_path, key, repo_url):
    report = tmp_path / "report.json"
    src = tmp_path / "src"
    single = make_torch_checkpoint(src / "checkpoint_run1_100.pt", seed=1, step=100)
    folder = make_folder_checkpoint(src / "sharded", seed=2)
    for path in (single, folder):
        ok(simulated(profile, "cli", "push", str(path), "--repo", repo_url, "--chunk-size", "256K", report=report))
    assert_absent(profile, report)

    out = tmp_path / "out"
    ok(simulated(profile, "cli", "pull", "--latest", "--from", repo_url, "--to", str(out), report=report))
    pulled = out / single.name if (out / single.name).exists() else out / folder.name
    if pulled.is_dir():
        same_tree(folder, pulled)
    else:
        assert pulled.read_bytes() == single.read_bytes()
    every = tmp_path / "every"
    ok(simulated(profile, "cli", "pull", single.name, "--from", repo_url, "--to", str(every), report=report))
    ok(simulated(profile, "cli", "pull", folder.name, "--from", repo_url, "--to", str(every), report=report))
    assert (every / single.name).read_bytes() == single.read_bytes()
    same_tree(folder, every / folder.name)

    verify = ok(simulated(profile, "cli", "verify", "--read-data", "--repo", repo_url, report=report))
    assert "2 of 2 checkpoint(s) sound" in verify.stdout
    assert_absent(profile, report)

    # watch --once: a folder of finished saves, uploaded through the queue, staging (held by a copy
    # where links are refused) and the worker.
    watched = tmp_path / "watched"
    saved = make_torch_checkpoint(watched / "checkpoint_run2_300.pt", seed=3, step=300)
    state = tmp_path / "state"
    once = simulated(
        profile, "cli", "watch", str(watched), "--once", "--repo", repo_url, "--state-dir", str(state),
        "--settle", "0", report=report,
    )  # fmt: skip
    ok(once)
    assert_absent(profile, report)
    back = tmp_path / "back"
    ok(simulated(profile, "cli", "pull", saved.name, "--from", repo_url, "--to", str(back), report=report))
    assert (back / saved.name).read_bytes() == saved.read_bytes()


SYNC_CLIENT = """
import hashlib, os
from pathlib import Path
import ckpt_sync
src = Path(os.environ["SIM_SRC"])
with ckpt_sync.SyncClient(os.environ["SIM_REPO"], state_dir=os.environ["SIM_STATE"]) as sync:
    sync.enqueue(src)
    sync.wait(timeout=300)
ckpt_sync.pull(os.environ["SIM_OUT"], os.environ["SIM_REPO"], checkpoint=src.name)
print("pulled", hashlib.sha256((Path(os.environ["SIM_OUT"]) / src.name).read_bytes()).hexdigest())
"""


@pytest.mark.parametrize("profile", PROFILES)
def test_sync_client_uploads_and_the_library_pulls_byte_exact(profile, tmp_path, key, repo_url, monkeypatch):
    import hashlib

    src = make_torch_checkpoint(tmp_path / "ck" / "checkpoint_run1_40.pt", seed=4, step=40)
    for name, value in {"SIM_SRC": src, "SIM_REPO": repo_url, "SIM_STATE": tmp_path / "state"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("SIM_OUT", str(tmp_path / "out"))
    report = tmp_path / "report.json"
    proc = ok(simulated(profile, "code", SYNC_CLIENT, report=report))
    assert proc.stdout.split()[-1] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert_absent(profile, report)


def _losses(path: Path) -> dict[int, str]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def _stderr_until(proc: subprocess.Popen[str], needle: str) -> str:
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the process ended (rc={proc.wait()}) before saying {needle!r}")
        if needle in line:
            return line


def _stdout_until(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the process ended (rc={proc.wait()}) before printing {prefix!r}")
        if line.startswith(prefix):
            return line.strip()


@pytest.mark.parametrize("profile", PROFILES)
def test_a_training_loop_saves_async_saves_on_sigint_and_recovers_exactly(profile, tmp_path):
    steps, every = 12, 5
    reference = tmp_path / "reference"
    plain = [sys.executable, str(TRAIN_SCRIPT), "--dir", str(tmp_path / "ref"), "--steps", str(steps), "--every", "3"]
    done = subprocess.run([*plain, "--losses", str(reference)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr

    ckpt = tmp_path / "checkpoints" / "training"
    common = ["script", str(TRAIN_SCRIPT), "--dir", str(ckpt), "--steps", str(steps), "--every", str(every)]
    report = tmp_path / "report.json"
    first_run = [*common, "--async-save", "--pause-at", "7", "--losses", str(tmp_path / "a")]
    proc = start_simulated(profile, *first_run, report=report)
    step, emergency = _interrupt(proc, 7, signal.SIGINT, "SIGINT", pid_file=ckpt / "training.pid")
    assert step == "8" and Path(emergency).is_file()
    assert_absent(profile, report)

    resumed = simulated(profile, *common, "--async-save", "--recover", "--losses", str(tmp_path / "b"), report=report)
    ok(resumed)
    assert "resumed from 8" in resumed.stdout
    assert_absent(profile, report)
    expected = _losses(reference)
    first, second = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(first) == list(range(1, 9)) and sorted(second) == list(range(9, steps + 1))
    assert {**first, **second} == expected  # bit-exact: every loss as the uninterrupted run had it
    assert sorted(p.name for p in ckpt.glob("checkpoint_*.pt"))  # the async saves landed


def test_on_windows_ctrl_break_asks_for_an_emergency_checkpoint_too(tmp_path):
    """SIGBREAK is what the power-event hook sends (deploy/windows/); in the windows-like profile it
    is this platform's SIGUSR2, whose default would end the process unsaved."""
    ckpt = tmp_path / "ckpt"
    report = tmp_path / "report.json"
    args = ["script", str(TRAIN_SCRIPT), "--dir", str(ckpt), "--steps", "8", "--every", "100", "--pause-at", "3"]
    proc = start_simulated("windows-like", *args, report=report)
    # SIGUSR2 stands for Ctrl-Break here, as the hook's GenerateConsoleCtrlEvent delivers it.
    step, emergency = _interrupt(proc, 3, signal.SIGUSR2, "SIGBREAK")
    assert step == "4" and Path(emergency).is_file()
    assert_absent("windows-like", report)


def _interrupt(proc, paused_at: int, signum: int, name: str, *, pid_file: Path | None = None) -> list[str]:
    """Signal the training script once it paused at ``paused_at``, let it go on, and return the step
    and the emergency checkpoint it reports (it exits 3 after an emergency save)."""
    try:
        _stdout_until(proc, f"paused {paused_at}")
        if pid_file is not None:
            assert int(pid_file.read_text()) == proc.pid  # what a power-event hook finds
        proc.send_signal(signum)
        _stderr_until(proc, f"[EMERGENCY] {name} received")
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        interrupted = _stdout_until(proc, "interrupted")
        assert proc.wait(timeout=HANG_GUARD_S) == 3
    finally:
        proc.kill()
        proc.wait()
    return interrupted.split()[1:3]
