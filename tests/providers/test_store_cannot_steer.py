"""The store cannot steer what is deleted or how data is written: the config and key entries are
authenticated, chunk collection never deletes a chunk a readable manifest names, lock liveness never
compares two hosts' clocks, and ``forget`` removes every version of a checkpoint. Each case through
the real CLI, on the local store and on S3 (moto); objects are altered with a plain store client, as
someone with write access to the bucket (and, where said, without the key) would."""

from __future__ import annotations

import base64
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ckpt_sync.providers import open_provider
from cryptography.fernet import Fernet
from helpers import SLOW_CLI, skewed, wait_until
from store_objects import seal, unseal

from ckpt_sync.format.chunk_format import padme

CLI = [sys.executable, "-m", "ckpt_sync.cli"]


def _store(url: str):
    return open_provider(url, retry=None)


def _objects(url: str, prefix: str) -> dict[str, int]:
    return {i.key: i.size for i in _store(url).list(prefix)}


def _push(cli, url: str, path: Path, *extra: str) -> str:
    out = cli("push", str(path), "--repo", url, "--chunk-size", "64K", "--json", *extra, check=True).stdout
    return json.loads(out)[0]["id"]


def _ckpt(torch_checkpoint, tmp_path: Path, name: str, seed: int, **kw) -> Path:
    return torch_checkpoint(tmp_path / "src" / name, seed=seed, hidden=96 + 16 * seed, **kw)


def _one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ckpt-sync: error:")]
    assert len(lines) == 1, proc.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _sound(cli, url: str) -> str:
    proc = cli("verify", "--read-data", "--repo", url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# --- 1: another repository's config put in place deletes nothing and is refused ---------------------


def test_another_repositorys_config_in_place_is_refused_deletes_nothing_and_repair_puts_it_right(
    any_repo_url, new_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    other = new_repo_url(url.split(":", 1)[0])
    mine = [_ckpt(torch_checkpoint, tmp_path, f"epoch_{e:03d}.weights", seed=e, step=e * 50) for e in (1, 2, 3)]
    ids = [_push(cli, url, p) for p in mine]
    _push(cli, other, _ckpt(torch_checkpoint, tmp_path, "stranger.bin", seed=9))
    before = {**_objects(url, "chunks/"), **_objects(url, "manifests/")}
    _store(url).put("config", _store(other).get("config"))  # a mistaken copy, same key file

    late = _ckpt(torch_checkpoint, tmp_path, "epoch_004.weights", seed=4)
    dest = tmp_path / "restore"
    for verb in (
        ["ls"],
        ["push", str(late)],
        ["prune", "--keep", "1", "--grace", "0"],
        ["pull", "--latest", "--to", str(dest)],
        ["verify"],
    ):
        proc = cli(*verb, "--repo", url)
        assert proc.returncode == 2, (verb, proc.stdout, proc.stderr)
        _one_error_line(proc, "is not the config of the checkpoints it holds", "repair-config")
    assert {**_objects(url, "chunks/"), **_objects(url, "manifests/")} == before and not dest.exists()

    repair = cli("repair-config", "--repo", url)
    assert repair.returncode == 0 and "rebuilt the config" in repair.stdout, repair.stderr
    assert "3 of 3 checkpoint(s) sound" in _sound(cli, url)
    listed = json.loads(cli("ls", "--json", "--repo", url, check=True).stdout)
    assert sorted(m["id"] for m in listed) == sorted(ids)
    assert cli("repair-config", "--repo", url).returncode == 2  # sound now: nothing to repair


def test_chunks_of_manifests_another_repository_names_are_never_collected(
    any_repo_url, new_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    other = new_repo_url(url.split(":", 1)[0])
    _push(cli, url, _ckpt(torch_checkpoint, tmp_path, "ours.pt", seed=1))
    theirs = _ckpt(torch_checkpoint, tmp_path, "theirs.pt", seed=2, history=300)
    _push(cli, other, theirs)
    src, dst = _store(other), _store(url)
    copied = [i.key for i in src.list("chunks/")] + [i.key for i in src.list("manifests/")]
    for k in copied:  # a mistaken sync of the other repository's objects into ours
        dst.put(k, src.get(k))

    pruned = cli("prune", "--keep", "1", "--grace", "0", "--json", "--repo", url)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["gc_skipped"] is None
    # The foreign checkpoint is intact where it landed, every object as it came.
    assert all(dst.get(k) == src.get(k) for k in copied)
    assert json.loads(cli("ls", "--json", "--repo", other, check=True).stdout)[0]["name"] == theirs.name


# --- 3: plaintext settings are never obeyed when altered ---------------------------------------------


def _all_padded(url: str, key: str) -> bool:
    store = _store(url)
    sizes = [len(unseal(key, store.get(i.key))) for i in store.list("chunks/")]
    return bool(sizes) and all(padme(n) == n for n in sizes)


@pytest.mark.parametrize("edit", ["padding off", "padding off, MAC removed", "compression off"])
def test_an_edited_config_is_refused_and_never_weakens_what_is_written(
    edit, any_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    cli("init", "--repo", url, "--pad", "--compression", "zstd", check=True)
    _push(cli, url, _ckpt(torch_checkpoint, tmp_path, "a.state", seed=3))
    config = json.loads(_store(url).get("config"))
    assert config["pad"] == 1
    dropped = {"padding off": (), "padding off, MAC removed": ("pad", "mac"), "compression off": ("compression",)}
    altered = {k: v for k, v in config.items() if k not in dropped[edit]}
    if edit == "padding off":
        altered["pad"] = 0
    _store(url).put("config", json.dumps(altered).encode())
    chunks = _objects(url, "chunks/")

    second = _ckpt(torch_checkpoint, tmp_path, "b.state", seed=4)
    for verb in (["push", str(second)], ["ls"], ["prune", "--keep", "1", "--grace", "0"]):
        proc = cli(*verb, "--repo", url)
        assert proc.returncode == 2, (verb, proc.stdout, proc.stderr)
        _one_error_line(proc, "repair-config")
    assert _objects(url, "chunks/") == chunks  # nothing was written under the weaker settings

    cli("repair-config", "--repo", url, check=True)
    assert json.loads(_store(url).get("config"))["pad"] == 1
    _push(cli, url, second)
    assert _all_padded(url, key)
    assert "2 of 2 checkpoint(s) sound" in _sound(cli, url)


# --- 4: a key entry planted without the repository's key blocks nothing --------------------------------


def _fingerprint(fernet_key: bytes) -> str:
    return hmac.digest(base64.urlsafe_b64decode(fernet_key), b"ckpt-sync key fingerprint v1", "sha256")[:16].hex()


def test_a_key_entry_planted_without_the_repositorys_key_blocks_nothing(
    any_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    old = _ckpt(torch_checkpoint, tmp_path, "older.model", seed=5, step=10)
    newest = _ckpt(torch_checkpoint, tmp_path, "newer.model", seed=6, step=20)
    _push(cli, url, old)
    _push(cli, url, newest)
    store = _store(url)
    planted = []
    for form in ("bare token", "bogus mac"):
        attacker = Fernet.generate_key()
        token = Fernet(attacker).encrypt(os.urandom(32)).decode()
        body = token if form == "bare token" else json.dumps({"token": token, "mac": "ab" * 32})
        planted.append(_fingerprint(attacker))
        store.put(f"keys/{planted[-1]}", body.encode())
        fake = {"version": 1, "id": f"{int(time.time() * 1000) + 5000:013d}-{os.urandom(8).hex()}", "name": "x"}
        store.put(f"manifests/{fake['id']}", seal(attacker.decode(), json.dumps(fake).encode()))

    dest = tmp_path / "dest"
    pull = cli("pull", "--latest", "--repo", url, "--to", str(dest))
    assert pull.returncode == 0, pull.stderr
    assert (dest / "newer.model").read_bytes() == newest.read_bytes()
    verify = cli("verify", "--repo", url)
    assert verify.returncode == 1 and "add that key" not in verify.stderr + verify.stdout, verify.stderr
    assert "not authenticated by the repository's keys" in verify.stderr and planted[0] in verify.stderr
    keys = json.loads(cli("key", "list", "--json", "--repo", url, check=True).stdout)
    assert [k["fingerprint"] for k in keys["keys"]] != [] and not {k["fingerprint"] for k in keys["keys"]} & set(
        planted
    )
    assert sorted(keys["foreign_key_entries"]) == sorted(planted)

    cli("forget", "older.model", "--repo", url, check=True)
    pruned = json.loads(cli("prune", "--keep", "1", "--grace", "0", "--json", "--repo", url, check=True).stdout)
    assert pruned["gc_skipped"] is None and pruned["chunks_removed"] > 0, pruned
    removed = json.loads(cli("prune", "--keep", "1", "--remove-damaged", "--json", "--repo", url, check=True).stdout)
    assert sorted(removed["foreign_keys_removed"]) == sorted(planted) and len(removed["damaged_removed"]) == 2
    assert not _objects(url, "keys/") and "1 of 1 checkpoint(s) sound" in _sound(cli, url)


# --- 5: forget after an interrupted tag change removes every version -----------------------------------


def test_forget_after_a_tag_change_killed_between_its_writes_removes_every_version(
    any_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    doomed = _push(cli, url, _ckpt(torch_checkpoint, tmp_path, "mistake.pt", seed=8))
    keep = _push(cli, url, _ckpt(torch_checkpoint, tmp_path, "keeper.pt", seed=7))
    hold = tmp_path / "hold"
    hold.mkdir()
    env = {**os.environ, "CKPT_TEST_HOLD_COMMIT": str(hold), "CKPT_TEST_HOLD_AT": "after"}
    tag = subprocess.Popen([sys.executable, SLOW_CLI, "tag", doomed, "--add", "oops", "--repo", url], env=env)
    wait_until(lambda: (hold / "reached").exists() or tag.poll() is not None, "the tag change's first write")
    tag.kill()  # between writing the new manifest and deleting the old one
    tag.wait()
    assert len(_objects(url, "manifests/")) == 3

    cli("forget", "mistake.pt", "--repo", url, check=True)
    assert list(_objects(url, "manifests/")) == [f"manifests/{keep}"]
    listed = json.loads(cli("ls", "--role", "any", "--json", "--repo", url, check=True).stdout)
    assert [m["name"] for m in listed] == ["keeper.pt"]
    assert cli("pull", "mistake.pt", "--repo", url, "--to", str(tmp_path / "d")).returncode != 0


# --- 2: lock liveness never compares two hosts' clocks ---------------------------------------------------


def _reusable_chunks(cli, url: str, tmp_path: Path, torch_checkpoint) -> Path:
    """A checkpoint whose chunks are stored but referenced by nothing (pushed, then forgotten), and a
    copy of it under another name: pushing the copy reuses every one of those chunks."""
    src = _ckpt(torch_checkpoint, tmp_path, "layer_norms.bin", seed=11, history=2000)
    _push(cli, url, _ckpt(torch_checkpoint, tmp_path, "anchor.bin", seed=12))
    _push(cli, url, src)
    cli("forget", src.name, "--force", "--repo", url, check=True)
    copy = tmp_path / "again" / "layer_norms_copy.bin"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    return copy


def _held_push(url: str, path: Path, hold: Path, env: dict[str, str], offset: str | None) -> subprocess.Popen:
    command = [sys.executable, SLOW_CLI, "push", str(path), "--repo", url, "--chunk-size", "64K"]
    env = {**os.environ, **env, "CKPT_TEST_HOLD_COMMIT": str(hold)}
    if offset:
        command, env = skewed(command, offset, env)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (hold / "reached").exists() or proc.poll() is not None, "the push to reach its commit")
    assert proc.poll() is None, proc.communicate()
    return proc


def _prune(url: str, grace: str, offset: str | None, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "prune", "--keep", "1", "--grace", grace, "--json", "--repo", url]
    env = {**os.environ, **env}
    if offset:
        command, env = skewed(command, offset, env)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("who", "offset", "grace"),
    [("pruner", "+300s", "0"), ("pruner", "+3600s", "3600"), ("pusher", "-300s", "0")],
)
def test_a_skewed_clock_never_breaks_a_live_push_lock(
    who, offset, grace, any_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    copy = _reusable_chunks(cli, url, tmp_path, torch_checkpoint)
    hold = tmp_path / "hold"
    hold.mkdir()
    push = _held_push(url, copy, hold, {}, offset if who == "pusher" else None)
    pruned = _prune(url, grace, offset if who == "pruner" else None, {})
    (hold / "go").touch()
    _out, err = push.communicate(timeout=600)
    if push.returncode == 0:  # the promise, whatever else happened: a push that succeeded left a sound checkpoint
        _sound(cli, url)
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert report["chunks_removed"] == 0 and "push is in progress" in (report["gc_skipped"] or ""), report
    assert "breaking the lock" not in pruned.stderr, pruned.stderr
    assert push.returncode == 0, err
    back = tmp_path / "back"
    cli("pull", copy.name, "--repo", url, "--to", str(back), check=True)
    assert (back / copy.name).read_bytes() == copy.read_bytes()


def test_a_pruner_whose_clock_runs_hours_ahead_keeps_chunks_uploaded_a_moment_ago(
    any_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    _push(cli, url, _ckpt(torch_checkpoint, tmp_path, "anchor.bin", seed=12))
    young = _ckpt(torch_checkpoint, tmp_path, "young.bin", seed=13)
    _push(cli, url, young)
    cli("forget", young.name, "--force", "--repo", url, check=True)  # its chunks: unreferenced, seconds old
    chunks = _objects(url, "chunks/")
    pruned = _prune(url, "3600", "+7200s", {})
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert report["chunks_removed"] == 0 and report["chunks_in_grace"] > 0, report
    assert _objects(url, "chunks/") == chunks
    now = json.loads(cli("prune", "--keep", "1", "--grace", "0", "--json", "--repo", url, check=True).stdout)
    assert now["chunks_removed"] == report["chunks_in_grace"]  # what grace kept is exactly what --grace 0 frees


@pytest.mark.parametrize(
    ("ttl", "stopped"),
    [("2", 6.0), pytest.param(None, 150.0, marks=pytest.mark.slow, id="default-lifetime")],
)
def test_a_pusher_stopped_past_its_locks_lifetime_uploads_what_a_prune_removed_meanwhile(
    ttl, stopped, any_repo_url, cli, key, tmp_path, torch_checkpoint
):
    url = any_repo_url
    copy = _reusable_chunks(cli, url, tmp_path, torch_checkpoint)
    hold = tmp_path / "hold"
    hold.mkdir()
    short = {"CKPT_SYNC_LOCK_TTL": ttl} if ttl else {}
    push = _held_push(url, copy, hold, short, None)
    push.send_signal(signal.SIGSTOP)  # a suspended VM: no heartbeat, no progress
    try:
        (hold / "go").touch()  # it writes its manifest as soon as it runs again
        time.sleep(stopped)  # longer than the lock's lifetime with no heartbeat, by any clock
        pruned = _prune(url, "0", None, short)
    finally:
        push.send_signal(signal.SIGCONT)
    _out, err = push.communicate(timeout=600)
    if push.returncode == 0:
        _sound(cli, url)
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert "breaking the lock locks/push-" in pruned.stderr and "by the store's clock" in pruned.stderr, pruned.stderr
    assert report["chunks_removed"] > 0, report  # the reused chunks went while the push was stopped
    assert push.returncode == 0, err
    assert "uploading them again" in err, err
    back = tmp_path / "back"
    cli("pull", copy.name, "--repo", url, "--to", str(back), check=True)
    assert (back / copy.name).read_bytes() == copy.read_bytes()
