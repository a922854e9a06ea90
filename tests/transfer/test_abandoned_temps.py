"""Temp files in a local repository are removed only when abandoned: a writer provably alive on
this host keeps its temp whatever its age (a ``prune --grace 0`` once broke a running ``tag``);
a dead writer's goes at once; one whose writer cannot be checked from here (another host, an
unparseable name) goes by age, never younger than FOREIGN_TEMP_MIN_AGE. A write whose temp vanishes
anyway (an older prune elsewhere) writes it once more. Real processes, a real local repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ckpt_sync.providers.local import FOREIGN_TEMP_MIN_AGE, LocalProvider
from helpers import make_torch_checkpoint

from ckpt_sync.errors import StorageError
from ckpt_sync.fs.atomic import Leftover, is_temp_name, leftover
from ckpt_sync.owners import host_tag

# Writes an object with the real put_if_absent, pausing between writing its temp and linking it.
PAUSED_WRITER = """
import sys
from ckpt_sync.providers.local import LocalProvider
p = LocalProvider(sys.argv[1])
real = p.write_temp
def paused(path, data, **kw):
    tmp = real(path, data, **kw)
    print(tmp, flush=True)
    sys.stdin.readline()
    return tmp
p.write_temp = paused
print("linked" if p.put_if_absent("probe/live-writer", b"written while a prune ran") else "exists", flush=True)
"""

KILLED_WRITER = """
import os, sys
from pathlib import Path
from ckpt_sync.providers.local import LocalProvider
p = LocalProvider(sys.argv[1])
print(p.write_temp(Path(sys.argv[1]) / "probe" / "dead-writer", b"half an object"), flush=True)
os.kill(os.getpid(), 9)
"""

DAY = 86400.0


def _repo(tmp_path, repo_url, cli):
    ck = make_torch_checkpoint(tmp_path / "src" / "checkpoint_t_1.pt", hidden=32)
    cli("push", str(ck), "--to", repo_url, check=True)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _prune(cli, repo_url, *grace):
    out = cli("prune", "--repo", repo_url, "--keep", "5", *grace, "--json", check=True).stdout
    return json.loads(out)["temp_removed"]


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if is_temp_name(p.name)]


def _start_ticks(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rindex(b")") + 2 :].split()[19])


def test_prune_grace_0_never_removes_the_temp_of_a_writer_alive_here_however_old(
    tmp_path, key, repo_url, repo_dir, cli
):
    _repo(tmp_path, repo_url, cli)
    writer = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, str(repo_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        tmp = Path(writer.stdout.readline().strip())
        assert leftover(tmp.name) == Leftover(alive=True) and tmp.exists()  # named after its writer, alive
        _age(tmp, 2 * DAY)  # age says nothing about a writer we can see running
        assert _prune(cli, repo_url, "--grace", "0") == 0
        assert tmp.exists()
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "linked"
    finally:
        writer.kill()
        writer.wait()
    assert (repo_dir / "probe" / "live-writer").read_bytes() == b"written while a prune ran"
    assert not _temps(repo_dir)


def test_a_dead_writers_temp_is_removed_by_the_next_prune_however_young(tmp_path, key, repo_url, repo_dir, cli):
    _repo(tmp_path, repo_url, cli)
    out = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(repo_dir)], capture_output=True, text=True)
    tmp = Path(out.stdout.strip())
    assert tmp.exists()
    _prune(cli, repo_url)  # the default grace: a dead writer needs none (the prune's first write may sweep it)
    assert not tmp.exists()


def test_a_live_pid_that_is_not_the_writer_does_not_keep_its_temp(tmp_path, key, repo_url, repo_dir, cli):
    """A pid reused by another process: the start time in the name tells them apart."""
    _repo(tmp_path, repo_url, cli)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        reused = repo_dir / "chunks" / f".tmp-{host_tag()}-{other.pid}.{_start_ticks(other.pid) + 1}-abc123-x"
        reused.write_bytes(b"left by the pid's previous owner")
        mine = repo_dir / "chunks" / f".tmp-{host_tag()}-{other.pid}.{_start_ticks(other.pid)}-abc123-y"
        mine.write_bytes(b"being written by the live process")
        _age(mine, 2 * DAY)
        _prune(cli, repo_url)
        assert not reused.exists() and mine.exists()
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("name", [".tmp-0badc0de-12345-abc123-x", ".tmp-0badc0de-12345.678-abc123-x", ".tmp-x"])
def test_a_temp_whose_writer_cannot_be_checked_goes_by_age_with_a_floor(tmp_path, key, repo_url, repo_dir, cli, name):
    """Another host's (or an unparseable) temp: --grace 0 does not shorten how long another
    host's write may take, so it goes only once older than both the grace and the floor."""
    assert host_tag() != "0badc0de"
    _repo(tmp_path, repo_url, cli)
    tmp = repo_dir / "chunks" / name
    tmp.write_bytes(b"another host's write")
    _age(tmp, FOREIGN_TEMP_MIN_AGE / 2)
    assert _prune(cli, repo_url, "--grace", "0") == 0 and tmp.exists()
    _age(tmp, FOREIGN_TEMP_MIN_AGE + 60)
    assert _prune(cli, repo_url, "--grace", "0") == 1 and not tmp.exists()


class _VanishingTemps(LocalProvider):
    """A local provider whose first ``vanish`` temp files are removed right after they are
    written, as a prune elsewhere judging them abandoned would."""

    def __init__(self, root: Path, vanish: int) -> None:
        super().__init__(root)
        self.vanish = vanish

    def write_temp(self, path, data, **kw):
        tmp = super().write_temp(path, data, **kw)
        if self.vanish:
            self.vanish -= 1
            tmp.unlink()
        return tmp


@pytest.mark.parametrize("op", ["put", "put_if_absent"])
def test_a_write_whose_temp_vanishes_once_writes_it_again(tmp_path, op):
    p = _VanishingTemps(tmp_path / "repo", vanish=1)
    result = getattr(p, op)("manifests/m1", b"the commit")
    assert result in (None, True)
    assert (tmp_path / "repo" / "manifests" / "m1").read_bytes() == b"the commit"
    assert not _temps(tmp_path / "repo")


@pytest.mark.parametrize("op", ["put", "put_if_absent"])
def test_a_write_whose_temp_vanishes_twice_fails_saying_why(tmp_path, op):
    p = _VanishingTemps(tmp_path / "repo", vanish=2)
    with pytest.raises(StorageError, match="temp file was removed") as err:
        getattr(p, op)("manifests/m1", b"the commit")
    assert "manifests/m1" in str(err.value)
    assert not (tmp_path / "repo" / "manifests" / "m1").exists()


def test_a_pull_leaves_a_running_pulls_old_temp_alone_and_removes_another_hosts(tmp_path, key, repo_url, cli):
    """Restore's leftovers follow the same rule: a writer alive here keeps its temp however old."""
    _repo(tmp_path, repo_url, cli)
    dest = tmp_path / "dest"
    dest.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        running = dest / f".ckpt-sync-{host_tag()}-{other.pid}-abc123.part"  # a pull still writing (no start tag)
        foreign = dest / ".ckpt-sync-0badc0de-12345.678-abc123.part"
        dead = dest / f".ckpt-sync-{host_tag()}-{other.pid}.{_start_ticks(other.pid) + 1}-abc123.part"
        for p in (running, foreign, dead):
            p.write_bytes(b"part of a restore")
        _age(running, 2 * DAY)
        _age(foreign, 2 * DAY)
        cli("pull", "--latest", "--from", repo_url, "--to", str(dest), check=True)
        assert running.exists() and not foreign.exists() and not dead.exists()
    finally:
        other.kill()
        other.wait()
    assert (dest / "checkpoint_t_1.pt").exists()
