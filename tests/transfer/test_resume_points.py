"""Resume points: "newest" is training position (session, step), then source mtime, then commit time;
``pull --latest`` restores the newest *resumable* checkpoint; filters on ``ls`` and ``pull``."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

import ckpt_sync
from ckpt_sync.api import open_repository
from ckpt_sync.format.layout import manifest_key, new_manifest_id
from ckpt_sync.format.manifest import Manifest
from ckpt_sync.format.ordering import Position, newest_first


def _push(cli, repo_url, path, *args):
    return json.loads(cli("push", "--repo", repo_url, str(path), "--json", *args, check=True).stdout)[0]


def _ls(cli, repo_url, *args):
    return json.loads(cli("ls", "--repo", repo_url, "--json", *args, check=True).stdout)


def _best_folder(tmp_path: Path, torch_checkpoint, seed: int = 9) -> Path:
    best = tmp_path / "best_model"
    torch_checkpoint(best / "model_state_dict.pt", seed=seed)
    (best / "best_metadata.json").write_text(json.dumps({"best_loss": 0.1, "step": 200}))
    return best


def test_pull_latest_restores_the_newest_resumable_checkpoint_not_the_best_model(
    tmp_path, key, repo_url, torch_checkpoint, cli
):
    for step in (100, 200):
        _push(cli, repo_url, torch_checkpoint(tmp_path / f"checkpoint_run_{step}.pt", seed=step, step=step))
    best = _push(cli, repo_url, _best_folder(tmp_path, torch_checkpoint))  # committed last, like the manager does
    assert best["role"] == "best"  # from the best_metadata.json marker
    out = tmp_path / "out"
    pulled = cli("pull", "--latest", "--repo", repo_url, "--to", str(out), check=True)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_run_200.pt"], pulled.stdout
    assert "resumable, step 200" in pulled.stdout
    # The best model is still there for whoever asks for it.
    anyrole = tmp_path / "any"
    cli("pull", "--latest", "--role", "best", "--repo", repo_url, "--to", str(anyrole), check=True)
    assert (anyrole / "best_model" / "best_metadata.json").exists()


def test_ls_and_pull_latest_order_by_step_not_by_commit_time(tmp_path, key, repo_url, torch_checkpoint, cli):
    # Step 300 is committed first, step 100 last (a late retry): newest is still 300.
    for step in (300, 200, 100):
        _push(cli, repo_url, torch_checkpoint(tmp_path / f"checkpoint_run_{step}.pt", seed=step, step=step))
    assert [r["step"] for r in _ls(cli, repo_url)] == [300, 200, 100]
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "o"), check=True)
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["checkpoint_run_300.pt"]


def test_filters_on_ls_and_pull_latest(tmp_path, key, repo_url, torch_checkpoint, cli):
    names = {}
    for session, step in (("20251101_090000", 50), ("20251101_090000", 150), ("20251102_090000", 20)):
        p = torch_checkpoint(tmp_path / session / f"checkpoint_{session}_{step}.pt", seed=step, step=step)
        names[(session, step)] = _push(cli, repo_url, p)["name"]
    _push(cli, repo_url, torch_checkpoint(tmp_path / "weights.pt", seed=1), "--role", "model-only", "--tag", "export")
    # A later session is newer than an earlier one whatever its step.
    assert [r["step"] for r in _ls(cli, repo_url, "--role", "resumable")] == [20, 150, 50]
    assert [r["name"] for r in _ls(cli, repo_url, "--tag", "export")] == ["weights.pt"]
    assert [r["role"] for r in _ls(cli, repo_url, "--role", "model-only")] == ["model-only"]
    assert [r["step"] for r in _ls(cli, repo_url, "--session", "20251101_090000")] == [150, 50]
    assert [r["step"] for r in _ls(cli, repo_url, "--before-step", "100", "--role", "resumable")] == [20, 50]
    assert [r["step"] for r in _ls(cli, repo_url, "--step", "150")] == [150]
    assert [r["step"] for r in _ls(cli, repo_url, "--name", "checkpoint_*_1??.pt")] == [150]
    assert len(_ls(cli, repo_url, "--host", socket.gethostname())) == 4
    assert _ls(cli, repo_url, "--host", "elsewhere") == []

    out = tmp_path / "o1"
    cli("pull", "--latest", "--session", "20251101_090000", "--repo", repo_url, "--to", str(out), check=True)
    assert [p.name for p in out.iterdir()] == [names[("20251101_090000", 150)]]
    out = tmp_path / "o2"
    cli("pull", "--latest", "--before-step", "100", "--repo", repo_url, "--to", str(out), check=True)
    assert [p.name for p in out.iterdir()] == [names[("20251102_090000", 20)]]
    none = cli("pull", "--latest", "--step", "999", "--repo", repo_url, "--to", str(tmp_path / "o3"))
    assert none.returncode == 1 and "no resumable checkpoint with step=999" in none.stderr, none.stderr

    # The library takes the same filters.
    m = ckpt_sync.pull(to=tmp_path / "o4", repo=repo_url, session="20251101_090000", before_step=100)
    assert m.global_step == 50 and (tmp_path / "o4" / m.name).exists()
    m = ckpt_sync.pull(to=tmp_path / "o5", repo=repo_url, role="any", tag="export")
    assert m.name == "weights.pt" and m.role == "model-only"


def test_a_version_1_manifest_without_a_role_stays_readable(tmp_path, key, repo_url, torch_checkpoint, cli):
    """Manifests written before roles existed: tagged best -> best, else resumable."""
    src = torch_checkpoint(tmp_path / "checkpoint_run_10.pt", step=10)
    repo = open_repository(ckpt_sync.push(src, repo=repo_url) and repo_url)
    base = next(repo.manifests())
    for tags in ((), ("best",)):
        old = base.to_json()
        del old["role"]
        for f in old["files"]:
            del f["mtime_ns"]
        old.update(id=new_manifest_id(), tags=list(tags), name=f"old{len(tags)}.pt")
        repo.provider.put(manifest_key(old["id"]), repo.keys.encrypt(json.dumps(old).encode()))
    roles = {r["name"]: r["role"] for r in _ls(cli, repo_url)}
    assert roles == {"checkpoint_run_10.pt": "resumable", "old0.pt": "resumable", "old1.pt": "best"}


def _pos(session=None, step=None, mtime=None, created=0.0, key=""):
    return Position(session, step, mtime, created, key)


def test_the_ordering_compares_sessions_then_steps_then_mtime_then_commit_time():
    later_session_low_step = _pos("20251102_000000", 5, mtime=1.0, key="a")
    early_session_high_step = _pos("20251101_000000", 900, mtime=2.0, key="b")
    resaved_step = _pos("20251101_000000", 900, mtime=3.0, key="c")
    committed_later = _pos("20251101_000000", 900, mtime=3.0, created=9.0, key="d")
    items = [committed_later, later_session_low_step, resaved_step, early_session_high_step]
    assert newest_first(items, lambda p: p) == [later_session_low_step, committed_later, resaved_step,
                                                 early_session_high_step]  # fmt: skip
    # Arbitrary session ids: a session starts with its earliest checkpoint.
    run_a = [_pos("run-a", s, mtime=100.0 + s) for s in (1, 2, 3)]
    run_b = [_pos("run-b", s, mtime=200.0 + s) for s in (1, 2)]
    assert newest_first(run_a + run_b, lambda p: p) == [run_b[1], run_b[0], run_a[2], run_a[1], run_a[0]]
    # With mtimes shuffled (a `cp -r`), the step still decides inside a session.
    copied = [_pos("run-a", s, mtime=m) for s, m in ((1, 30.0), (2, 10.0), (3, 20.0))]
    assert [p.global_step for p in newest_first(copied, lambda p: p)] == [3, 2, 1]
    # Nothing known but times: mtime, then commit time.
    plain = [_pos(mtime=5.0, created=1.0, key="x"), _pos(mtime=None, created=7.0, key="y")]
    assert [p.key for p in newest_first(plain, lambda p: p)] == ["y", "x"]


@pytest.mark.parametrize("how", ["cli", "library"])
def test_every_push_path_records_the_source_mtime(tmp_path, key, repo_url, torch_checkpoint, cli, how):
    src = torch_checkpoint(tmp_path / "checkpoint_run_5.pt", step=5)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    if how == "cli":
        _push(cli, repo_url, src)
    else:
        ckpt_sync.push(src, repo=repo_url)
    m: Manifest = next(open_repository(repo_url).manifests())
    assert m.source_mtime_ns == 1_600_000_000_123_456_789 == m.files[0].mtime_ns


def _worker_setup(tmp_path, repo_url, keep):
    from ckpt_sync.providers import open_provider
    from ckpt_sync.providers.faults import FaultyProvider

    from ckpt_sync.format.keys import load_keyring
    from ckpt_sync.format.repository import Repository
    from ckpt_sync.service.queue import JobQueue
    from ckpt_sync.service.worker import SyncWorker

    faulty = FaultyProvider(open_provider(repo_url, retry=None))
    repo = Repository.open(faulty, load_keyring(), create=True)
    queue = JobQueue(tmp_path / "state")
    return faulty, queue, SyncWorker(repo, queue, keep=keep, grace=0.0)


def _names(repo_url):
    return sorted(m.name for m in open_repository(repo_url).manifests())


def test_an_older_step_committed_late_is_not_the_latest_and_retention_keeps_the_highest(
    tmp_path, key, repo_url, torch_checkpoint, cli
):
    import threading

    from ckpt_sync.service.queue import DONE

    folder = tmp_path / "ckpt"
    paths = [torch_checkpoint(folder / f"checkpoint_run_{s}.pt", seed=s, step=s) for s in (100, 200, 300)]
    faulty, queue, worker = _worker_setup(tmp_path, repo_url, keep=2)
    faulty.fail_next("put_if_absent")  # the first commit, step 100's, fails once and is retried after the others
    for p in paths:
        queue.enqueue(p)
    worker.run(threading.Event(), drain=True, poll=0.05)
    done = sorted(queue.jobs(DONE), key=lambda j: j.manifest_id)
    assert [j.name for j in done][-1] == "checkpoint_run_100.pt"  # committed last
    assert _names(repo_url) == ["checkpoint_run_200.pt", "checkpoint_run_300.pt"]  # --keep 2: the two highest
    out = tmp_path / "out"
    cli("pull", "--latest", "--repo", repo_url, "--to", str(out), check=True)
    assert [p.name for p in out.iterdir()] == ["checkpoint_run_300.pt"]

    # The old file touched meanwhile and queued again: still not the newest, the newer ones stay.
    os.utime(paths[0])
    queue.enqueue(paths[0])
    worker.run(threading.Event(), drain=True, poll=0.05)
    assert _names(repo_url) == ["checkpoint_run_200.pt", "checkpoint_run_300.pt"]
    cli("prune", "--repo", repo_url, "--keep", "2", "--grace", "0", check=True)
    assert _names(repo_url) == ["checkpoint_run_200.pt", "checkpoint_run_300.pt"]


def test_a_commit_whose_answer_was_lost_is_retried_into_the_same_checkpoint(tmp_path, key, repo_url, torch_checkpoint):
    import threading

    from ckpt_sync.service.queue import DONE

    src = torch_checkpoint(tmp_path / "ckpt" / "checkpoint_run_7.pt", step=7)
    faulty, queue, worker = _worker_setup(tmp_path, repo_url, keep=None)
    faulty.fail_next("put_if_absent", "after")  # the manifest is written, then the answer is lost
    job = queue.enqueue(src)
    worker.run(threading.Event(), drain=True, poll=0.05)
    [m] = list(open_repository(repo_url).manifests())
    assert queue.get(job).status == DONE and queue.get(job).manifest_id == m.id and queue.get(job).attempts == 1
    # Pushing the same version again (library or CLI) returns the committed checkpoint.
    assert ckpt_sync.push(src, repo=repo_url) == m.id
    assert [x.id for x in open_repository(repo_url).manifests()] == [m.id]


DIE_AFTER_MANIFEST = """
import os, signal, sys
from ckpt_sync.providers import local
real = local.LocalProvider.put_if_absent
def put_if_absent(self, key, data):
    done = real(self, key, data)
    if key.startswith("manifests/"):
        os.kill(os.getpid(), signal.SIGKILL)  # after the commit point, before the job is recorded as done
    return done
local.LocalProvider.put_if_absent = put_if_absent
from ckpt_sync.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_right_after_the_manifest_write_commits_the_checkpoint_once(
    tmp_path, key, repo_url, torch_checkpoint, cli
):
    import signal
    import subprocess
    import sys

    folder = tmp_path / "ckpt"
    torch_checkpoint(folder / "checkpoint_run_5.pt", step=5)
    args = ["watch", str(folder), "--to", repo_url, "--once", "--settle", "0"]
    killed = subprocess.run([sys.executable, "-c", DIE_AFTER_MANIFEST, *args], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list(open_repository(repo_url).manifests())) == 1
    cli(*args, check=True)  # restart: the orphaned job runs again and finds its version committed
    assert _names(repo_url) == ["checkpoint_run_5.pt"]
    status = json.loads(cli("status", str(folder), "--repo", repo_url, "--json", check=True).stdout)
    assert status["backlog"] == 0 and status["jobs"]["done"] == 1


@pytest.mark.parametrize("how", ["cli", "library"])
def test_push_then_pull_keeps_the_mtime_and_watch_on_the_restored_folder_commits_nothing(
    tmp_path, key, repo_url, torch_checkpoint, cli, how
):
    src = tmp_path / "src"
    file_ckpt = torch_checkpoint(src / "checkpoint_run_9.pt", step=9)
    folder_ckpt = src / "sharded"
    torch_checkpoint(folder_ckpt / "shard0.pt", seed=1)
    torch_checkpoint(folder_ckpt / "sub" / "shard1.pt", seed=2)
    (folder_ckpt / ".metadata").write_bytes(b"dcp")
    stamps = {}
    for i, p in enumerate([file_ckpt, folder_ckpt / "shard0.pt", folder_ckpt / "sub" / "shard1.pt"]):
        os.utime(p, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i))
        stamps[p.relative_to(src).as_posix()] = p.stat().st_mtime_ns
    os.utime(folder_ckpt, ns=(1_700_000_000_000_000_009, 1_700_000_000_000_000_009))
    for p in (file_ckpt, folder_ckpt):
        if how == "cli":
            _push(cli, repo_url, p)
        else:
            ckpt_sync.push(p, repo=repo_url)
    out = tmp_path / "restored"
    cli("pull", "checkpoint_run_9.pt", "--repo", repo_url, "--to", str(out), check=True)
    cli("pull", "sharded", "--repo", repo_url, "--to", str(out), check=True)
    for rel, mtime in stamps.items():
        assert (out / rel).stat().st_mtime_ns == mtime, rel
    before = sorted(m.id for m in open_repository(repo_url).manifests())
    cli("watch", str(out), "--to", repo_url, "--once", "--settle", "0", check=True)
    assert sorted(m.id for m in open_repository(repo_url).manifests()) == before


def test_after_a_key_rotation_an_old_key_host_refuses_to_roll_back_unless_allowed(
    tmp_path, repo_url, torch_checkpoint, cli
):
    from cryptography.fernet import Fernet

    from ckpt_sync.format.crypto import fingerprint

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    old_ring, rotated_ring = tmp_path / "old.key", tmp_path / "rotated.key"
    old_ring.write_text(old + "\n")
    rotated_ring.write_text(f"{new}\n{old}\n")  # the new key first: it encrypts, both decrypt
    for step, ring in ((100, old_ring), (200, rotated_ring), (300, rotated_ring)):
        src = torch_checkpoint(tmp_path / f"checkpoint_run_{step}.pt", seed=step, step=step)
        cli("push", "--repo", repo_url, "--key-file", str(ring), str(src), check=True)
    new_fp = fingerprint(__import__("base64").urlsafe_b64decode(new))

    # The old-key host: the newest checkpoints are not "damaged", they need a key it lacks.
    refused = cli("pull", "--latest", "--repo", repo_url, "--key-file", str(old_ring), "--to", str(tmp_path / "a"))
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "encrypted with a key this host does not have" in last and new_fp in last, refused.stderr
    assert "damaged" not in refused.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    listed = cli("ls", "--repo", repo_url, "--key-file", str(old_ring))
    assert "encrypted with a key this host does not have" in listed.stderr and "damaged" not in listed.stderr
    verify = cli("verify", "--repo", repo_url, "--key-file", str(old_ring))
    assert verify.returncode == 2 and "DAMAGED" not in verify.stdout and new_fp in verify.stderr

    pull_old = ("pull", "--latest", "--repo", repo_url, "--key-file", str(old_ring))
    allowed = cli(*pull_old, "--allow-older", "--to", str(tmp_path / "b"))
    assert allowed.returncode == 0, allowed.stderr
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["checkpoint_run_100.pt"]
    assert "warning: restoring an older checkpoint (checkpoint_run_100.pt)" in allowed.stderr
    assert new_fp in allowed.stderr

    # The rotated host reads everything and restores the highest step.
    rotated = ("pull", "--latest", "--repo", repo_url, "--key-file", str(rotated_ring))
    cli(*rotated, "--to", str(tmp_path / "c"), check=True)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["checkpoint_run_300.pt"]


def test_pull_over_an_identical_file_skips_it_and_over_a_different_one_needs_overwrite(
    tmp_path, key, repo_url, torch_checkpoint, cli
):
    src = torch_checkpoint(tmp_path / "src" / "checkpoint_run_50.pt", step=50)
    _push(cli, repo_url, src)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy2(src, out / src.name)
    same = cli("pull", "--latest", "--repo", repo_url, "--to", str(out), "--json", check=True)
    assert json.loads(same.stdout)["stats"]["files_skipped"] == 1

    other = torch_checkpoint(out / src.name, seed=7, step=50)  # same name, different content
    mine = other.read_bytes()
    refused = cli("pull", "--latest", "--repo", repo_url, "--to", str(out))
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert str(other) in refused.stderr and "--overwrite" in refused.stderr
    assert other.read_bytes() == mine  # untouched
    cli("pull", "--latest", "--repo", repo_url, "--to", str(out), "--overwrite", check=True)
    assert (out / src.name).read_bytes() == src.read_bytes()


def test_a_folder_checkpoint_restored_over_an_older_copy_leaves_no_stale_files(
    tmp_path, key, repo_url, torch_checkpoint, cli
):
    folder = tmp_path / "src" / "sharded"
    torch_checkpoint(folder / "shard0.pt", seed=1)
    torch_checkpoint(folder / "shard1.pt", seed=2)
    old_id = _push(cli, repo_url, folder)["id"]
    (folder / "shard1.pt").unlink()  # the newer version has one shard fewer and a changed one
    torch_checkpoint(folder / "shard0.pt", seed=3)
    new_id = _push(cli, repo_url, folder)["id"]
    out = tmp_path / "out"
    cli("pull", old_id, "--repo", repo_url, "--to", str(out), check=True)
    assert sorted(p.name for p in (out / "sharded").iterdir()) == ["shard0.pt", "shard1.pt"]
    refused = cli("pull", new_id, "--repo", repo_url, "--to", str(out))
    assert refused.returncode == 2 and "--overwrite" in refused.stderr, refused.stderr
    cli("pull", new_id, "--repo", repo_url, "--to", str(out), "--overwrite", check=True)
    assert sorted(p.name for p in (out / "sharded").iterdir()) == ["shard0.pt"]
    assert (out / "sharded" / "shard0.pt").read_bytes() == (folder / "shard0.pt").read_bytes()
