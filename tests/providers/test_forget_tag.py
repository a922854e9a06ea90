"""``forget`` removes checkpoints (never the newest resumable one without --force) and a prune then
frees exactly what ``stats`` predicted; ``tag`` replaces a write-once manifest by a superseding one,
safely next to a prune and across a crash between its two writes; on the local store and on S3."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from helpers import wait_until

import ckpt_sync
from ckpt_sync.api import open_repository
from ckpt_sync.format.layout import MANIFESTS, new_manifest_id
from ckpt_sync.format.locks import acquire_manifests_lock, try_acquire_prune_lock


def _push(cli, url, path, *extra):
    out = cli("push", str(path), "--to", url, "--chunk-size", "64K", "--json", *extra, check=True).stdout
    return json.loads(out)[0]["id"]


def _three(cli, url, tmp_path, torch_checkpoint):
    a = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_100.pt", seed=1, step=100, history=10)
    b = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_200.pt", seed=1, step=200, history=5000)
    c = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_300.pt", seed=3, step=300)
    return [_push(cli, url, p) for p in (a, b, c)]


def _manifest_objects(url):
    repo = open_repository(url)
    return sorted(i.key for i in repo.provider.list(MANIFESTS))


def test_forget_refuses_the_newest_resumable_without_force(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    ids = _three(cli, any_repo_url, tmp_path, torch_checkpoint)
    refused = cli("forget", ids[2], "--from", any_repo_url)
    assert refused.returncode == 2 and "newest resumable" in refused.stderr and "--force" in refused.stderr
    dry = cli("forget", ids[0], "--dry-run", "--from", any_repo_url, check=True)
    assert "would forget checkpoint_s1_100.pt" in dry.stdout and len(_manifest_objects(any_repo_url)) == 3
    cli("forget", ids[2], "--force", "--from", any_repo_url, check=True)
    listed = json.loads(cli("ls", "--from", any_repo_url, "--json", check=True).stdout)
    assert [m["id"] for m in listed] == [ids[1], ids[0]]


def test_forget_then_prune_frees_exactly_the_unique_bytes_stats_predicted(
    any_repo_url, cli, key, tmp_path, torch_checkpoint
):
    ids = _three(cli, any_repo_url, tmp_path, torch_checkpoint)
    before = json.loads(cli("stats", "--from", any_repo_url, "--json", check=True).stdout)
    predicted = {c["id"]: c["unique_bytes"] for c in before["per_checkpoint"]}
    assert predicted[ids[1]] > 0
    forgot = json.loads(cli("forget", ids[1], "--from", any_repo_url, "--json", check=True).stdout)
    assert forgot["unique_bytes"] == predicted[ids[1]]
    held = json.loads(cli("stats", "--from", any_repo_url, "--json", check=True).stdout)
    assert held["checkpoints"] == 2 and held["grace_bytes"] == predicted[ids[1]]  # young: kept by the grace period
    pruned = json.loads(
        cli("prune", "--keep", "10", "--grace", "0", "--from", any_repo_url, "--json", check=True).stdout
    )
    assert pruned["removed"] == [] and pruned["bytes_freed"] == predicted[ids[1]]
    after = json.loads(cli("stats", "--from", any_repo_url, "--json", check=True).stdout)
    assert after["grace_bytes"] == after["collectable_bytes"] == 0
    assert cli("verify", "--read-data", "--from", any_repo_url).returncode == 0


def test_tag_commits_a_superseding_manifest(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    src = torch_checkpoint(tmp_path / "checkpoint_s1_100.pt", seed=1, step=100)
    old = _push(cli, any_repo_url, src, "--tag", "best")
    shown = json.loads(
        cli("tag", old, "--add", "pinned", "--remove", "best", "--from", any_repo_url, "--json", check=True).stdout
    )
    # A new manifest object; the checkpoint keeps the id it was committed under.
    assert shown["tags"] == ["pinned"] and shown["id"] == old and shown["manifest_id"] != old
    assert _manifest_objects(any_repo_url) == [f"{MANIFESTS}{shown['manifest_id']}"]
    listed = json.loads(cli("ls", "--from", any_repo_url, "--json", "--role", "any", check=True).stdout)
    assert [(m["id"], m["tags"], m["step"]) for m in listed] == [(old, ["pinned"], 100)]
    # The id resolves to the manifest that holds the checkpoint now.
    assert ckpt_sync.checkpoint(old, any_repo_url).id == shown["manifest_id"]
    # Unchanged tags: nothing new is written.
    again = json.loads(cli("tag", "latest", "--add", "pinned", "--from", any_repo_url, "--json", check=True).stdout)
    assert again["manifest_id"] == shown["manifest_id"]
    out = tmp_path / "out"
    cli("pull", src.name, "--from", any_repo_url, "--to", str(out), check=True)
    assert (out / src.name).read_bytes() == src.read_bytes()
    assert cli("tag", shown["id"], "--from", any_repo_url).returncode == 2  # neither --add nor --remove


def test_a_crash_between_the_two_writes_still_shows_one_checkpoint(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    src = torch_checkpoint(tmp_path / "checkpoint_s1_100.pt", seed=1, step=100)
    old_id = _push(cli, any_repo_url, src)
    repo = open_repository(any_repo_url)
    old = repo.load_manifest(old_id)
    new = dataclasses.replace(old, id=new_manifest_id(), tags=("pinned",), supersedes=old.id)
    repo.commit(new)  # ... and the process dies before deleting the old manifest
    assert len(_manifest_objects(any_repo_url)) == 2
    listed = json.loads(cli("ls", "--from", any_repo_url, "--json", check=True).stdout)
    assert [(m["id"], m["tags"]) for m in listed] == [(new.id, ["pinned"])]
    assert json.loads(cli("stats", "--from", any_repo_url, "--json", check=True).stdout)["checkpoints"] == 1
    assert ckpt_sync.checkpoint(old.id, any_repo_url).tags == ("pinned",)  # by the old id too
    pruned = json.loads(cli("prune", "--grace", "0", "--from", any_repo_url, "--json", check=True).stdout)
    assert pruned["chunks_removed"] == 0 and _manifest_objects(any_repo_url) == [f"{MANIFESTS}{new.id}"]
    assert cli("verify", "--read-data", "--from", any_repo_url).returncode == 0


def test_tag_waits_for_a_running_prune_and_survives_prunes(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    ids = _three(cli, any_repo_url, tmp_path, torch_checkpoint)
    repo = open_repository(any_repo_url)
    lock = try_acquire_prune_lock(repo.provider)  # a prune is running
    assert lock is not None
    before = _manifest_objects(any_repo_url)
    said = tmp_path / "tag.err"
    with said.open("w") as err:
        tagging = subprocess.Popen(
            [sys.executable, "-m", "ckpt_sync.cli", "tag", ids[0], "--add", "pinned", "--from", any_repo_url],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    # The tag has seen the prune's lock and is waiting: it must not have touched anything.
    wait_until(lambda: "waiting for a prune" in said.read_text(), "the tag to wait for the prune")
    assert tagging.poll() is None and _manifest_objects(any_repo_url) == before
    lock.release()
    wait_until(lambda: tagging.poll() is not None, "the tag to finish once the prune is done")
    assert tagging.returncode == 0, said.read_text()
    assert said.read_text().count("\n") == 1  # the one line saying why it waited
    # Real prunes (collecting every unreferenced chunk at once) run while the tag flips back and forth.
    pruning = subprocess.Popen(
        [sys.executable, "-c", PRUNE_LOOP, any_repo_url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        for i in range(6):
            flag = ["--remove", "pinned"] if i % 2 == 0 else ["--add", "pinned"]
            cli("tag", "checkpoint_s1_100.pt", *flag, "--from", any_repo_url, check=True)
    finally:
        pruning.terminate()
        pruning.wait()
    listed = json.loads(cli("ls", "--from", any_repo_url, "--json", check=True).stdout)
    assert sorted(m["name"] for m in listed) == ["checkpoint_s1_100.pt", "checkpoint_s1_200.pt", "checkpoint_s1_300.pt"]
    assert [m["tags"] for m in listed if m["name"] == "checkpoint_s1_100.pt"] == [["pinned"]]
    assert cli("verify", "--read-data", "--from", any_repo_url).returncode == 0


def test_two_tag_changes_at_once_both_land_on_one_manifest(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    """Tag changes of one checkpoint are serialised (locks/manifests): two started together — here
    released at the same moment by a prune they both waited for — neither lists the checkpoint twice
    nor loses the other's tag."""
    _three(cli, any_repo_url, tmp_path, torch_checkpoint)
    repo = open_repository(any_repo_url)
    lock = try_acquire_prune_lock(repo.provider)
    assert lock is not None
    tags = ("a", "b", "c")
    tagging = [
        subprocess.Popen(
            [sys.executable, "-m", "ckpt_sync.cli", "tag", "checkpoint_s1_100.pt", "--add", t, "--from", any_repo_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t in tags
    ]
    wait_until(lambda: len(list(repo.provider.list("locks/push-"))) == len(tags), "every tag to wait for the prune")
    lock.release()
    for proc in tagging:
        proc.wait(timeout=300)
        assert proc.returncode == 0, proc.stderr.read()
    listed = json.loads(cli("ls", "--from", any_repo_url, "--json", check=True).stdout)
    assert sorted(m["name"] for m in listed) == ["checkpoint_s1_100.pt", "checkpoint_s1_200.pt", "checkpoint_s1_300.pt"]
    assert [sorted(m["tags"]) for m in listed if m["name"] == "checkpoint_s1_100.pt"] == [list(tags)]
    assert len(_manifest_objects(any_repo_url)) == 3


def test_forget_waits_for_a_tag_change_in_flight(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    """A forget next to a tag change of the same checkpoint would otherwise see its old manifest
    gone and report success while the new one stays: it waits for the change (locks/manifests)."""
    ids = _three(cli, any_repo_url, tmp_path, torch_checkpoint)
    repo = open_repository(any_repo_url)
    change = acquire_manifests_lock(repo.provider)  # a tag change is in flight
    before = _manifest_objects(any_repo_url)
    said = tmp_path / "forget.err"
    with said.open("w") as err:
        forgetting = subprocess.Popen(
            [sys.executable, "-m", "ckpt_sync.cli", "forget", ids[0], "--from", any_repo_url],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    # The forget has seen the change's lock and is waiting: it must not have touched anything.
    wait_until(lambda: "waiting for another tag or forget" in said.read_text(), "the forget to wait")
    assert forgetting.poll() is None and _manifest_objects(any_repo_url) == before
    change.release()
    wait_until(lambda: forgetting.poll() is not None, "the forget to finish once the change is done")
    assert forgetting.returncode == 0, said.read_text()
    assert sorted(m.name for m in repo.manifests()) == ["checkpoint_s1_200.pt", "checkpoint_s1_300.pt"]


PRUNE_LOOP = """
import sys
from ckpt_sync.cli import main
while True:
    main(["prune", "--keep", "10", "--grace", "0", "--from", sys.argv[1]])
"""
