"""The store is not trusted (DESIGN.md §8): objects edited directly in the repository — by a
compromised bucket, a buggy writer or a mistaken copy between buckets — never steer retention,
crash a verb or exhaust memory. Objects are crafted with the key and plain ``cryptography``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from helpers import MEASURE_CLI
from store_objects import manifest_names, newer_id, read_manifest, sparse_file, write_manifest


def _files(tmp_path, *names, size=200_000):
    out = []
    for n in names:
        p = tmp_path / "src" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


def _no_crash(*procs):
    for p in procs:
        assert "unexpected" not in p.stderr and "Traceback" not in p.stderr, p.stderr


# --- 3: authentic but malformed manifests are damaged checkpoints, never a crash ----------------------


def _malformed(good: dict) -> dict[str, object]:
    f0 = good["files"][0]

    def with_files(*files):
        return {**good, "files": list(files)}

    deep = "[" * 100_000 + "]" * 100_000
    return {
        "array": [good],
        "string": "a manifest",
        "deep nesting": deep.encode(),
        "deep extra": {**good, "extra": json.loads("[" * 40 + "]" * 40)},
        "created NaN": json.dumps({**good, "created": float("nan")}).encode(),
        "negative size": with_files({**f0, "size": -5, "chunks": []}),
        "10 GiB chunk": with_files({**f0, "size": 10 << 30, "chunks": [[f0["chunks"][0][0], 10 << 30]]}),
        "over-long path": with_files({**f0, "path": "x" * 256}),
        "step is a string": {**good, "global_step": "7"},
        "file entry is a list": with_files([f0["path"]]),
        "files missing": {k: v for k, v in good.items() if k != "files"},
        "version 2": {**good, "version": 2},
        # 12: refused at read time too
        "newline in a path": with_files({**f0, "path": "a\nb.pt"}),
        "colon in a path": with_files({**f0, "path": "c:d.pt"}),
        "trailing space": with_files({**f0, "path": "e.pt "}),
    }


def test_malformed_manifests_are_damaged_checkpoints_for_every_verb(tmp_path, key, repo_url, repo_dir, cli):
    (good_file,) = _files(tmp_path, "good.pt")
    cli("push", "--repo", repo_url, str(good_file), check=True)
    (good_id,) = manifest_names(repo_dir)
    good = read_manifest(repo_dir, key, good_id)
    crafted = {}
    for i, (what, content) in enumerate(_malformed(good).items()):
        mid = newer_id(1000 + i)
        if isinstance(content, dict):
            content = {**content, "id": mid}
        write_manifest(repo_dir, key, mid, content)
        crafted[mid] = what

    ls = cli("ls", "--json", "--repo", repo_url)
    assert ls.returncode == 0, ls.stderr
    assert [r["id"] for r in json.loads(ls.stdout)] == [good_id]
    assert all(mid in ls.stderr for mid in crafted), ls.stderr

    verify = cli("verify", "--repo", repo_url)
    assert verify.returncode == 1
    damaged = [line for line in verify.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == len(crafted) and all(any(mid in d for d in damaged) for mid in crafted), verify.stdout

    dest = tmp_path / "dest"
    pull = cli("pull", "--latest", "--repo", repo_url, "--to", str(dest))
    assert pull.returncode == 0, pull.stderr
    assert (dest / "good.pt").read_bytes() == good_file.read_bytes()
    assert pull.stderr.count("falling back") == len(crafted)

    prune = cli("prune", "--keep", "1", "--grace", "0", "--repo", repo_url)
    assert prune.returncode == 0, prune.stderr
    assert set(manifest_names(repo_dir)) == {good_id, *crafted}  # damaged ones take no slot, are not deleted

    watch_dir = tmp_path / "watched"
    watch_dir.mkdir()
    watch = cli("watch", str(watch_dir), "--once", "--repo", repo_url)
    assert watch.returncode == 0, watch.stderr
    _no_crash(ls, verify, pull, prune, watch)


def test_a_file_that_is_also_a_folder_or_listed_twice_restores_nothing(tmp_path, key, repo_url, repo_dir, cli):
    src = tmp_path / "ckptdir"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 100)
    (src / "b.pt").write_bytes(b"b" * 100)
    cli("push", "--repo", repo_url, str(src), check=True)
    (good_id,) = manifest_names(repo_dir)
    good = read_manifest(repo_dir, key, good_id)
    fa, fb = sorted(good["files"], key=lambda f: f["path"])
    for files in ([fa, {**fb, "path": "a/b.pt"}], [fa, fa]):
        mid = newer_id()
        write_manifest(repo_dir, key, mid, {**good, "id": mid, "files": files})
        dest = tmp_path / f"dest-{mid}"
        proc = cli("pull", mid, "--repo", repo_url, "--to", str(dest))
        assert proc.returncode == 1 and "unsafe paths" in proc.stderr, proc.stderr
        assert not dest.exists() or not any(dest.rglob("*")), list(dest.rglob("*"))
        _no_crash(proc)


# --- 12: names no host can restore faithfully are refused at push time --------------------------------


def test_push_refuses_names_with_newline_colon_or_edge_spaces(tmp_path, key, repo_url, repo_dir, cli):
    for bad in ("new\nline.pt", " lead.pt", "trail.pt ", "a:b.pt"):
        folder = tmp_path / f"ck{len(bad)}{bad.strip()[:1]}"
        folder.mkdir()
        (folder / "fine.pt").write_bytes(b"x")
        (folder / bad).write_bytes(b"y")
        proc = cli("push", "--repo", repo_url, str(folder))
        assert proc.returncode == 2 and "cannot push" in proc.stderr and "rename it" in proc.stderr, proc.stderr
    assert not (repo_dir / "manifests").exists() or not manifest_names(repo_dir)


# --- 8: any name the filesystem allows round-trips ------------------------------------------------------


def test_names_of_231_to_255_bytes_round_trip(tmp_path, key, repo_url, cli):
    files = _files(tmp_path, "n" * 228 + ".pt", "m" * 252 + ".pt", size=1000)
    cli("push", "--repo", repo_url, *map(str, files), check=True)
    for f in files:
        dest = tmp_path / "dest"
        cli("pull", f.name, "--repo", repo_url, "--to", str(dest), check=True)
        assert (dest / f.name).read_bytes() == f.read_bytes()


# --- 4: every object is size-checked before it is read whole ------------------------------------------


def _peak(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Peak RSS (MiB) of one CLI run in a fresh process (VmHWM: exec starts a new address space)."""
    proc = subprocess.run([sys.executable, "-c", MEASURE_CLI, *args], capture_output=True, text=True)
    return int(proc.stdout.split("MAXRSS_KIB")[1].split()[0]) / 1024, proc


def test_oversized_objects_never_fill_memory(tmp_path, key, repo_url, repo_dir, cli):
    (f,) = _files(tmp_path, "small.pt")
    cli("push", "--repo", repo_url, str(f), check=True)
    (good_id,) = manifest_names(repo_dir)
    peaks = {}

    chunk = next(p for p in (repo_dir / "chunks").rglob("*") if p.is_file())
    saved = chunk.read_bytes()
    sparse_file(chunk, 1 << 30)  # a 1 GiB object where a 200 kB chunk should be
    peaks["pull, 1 GiB chunk"], pull = _peak("pull", good_id, "--repo", repo_url, "--to", str(tmp_path / "d1"))
    assert pull.returncode == 1 and "wrong size" in pull.stderr, pull.stderr
    chunk.write_bytes(saved)

    sparse_file(repo_dir / "manifests" / newer_id(), 1 << 30)  # a 1 GiB newest manifest
    peaks["ls, 1 GiB manifest"], ls = _peak("ls", "--repo", repo_url)
    assert ls.returncode == 0 and good_id in ls.stdout and "larger than" in ls.stderr, ls.stderr
    peaks["pull --latest, 1 GiB manifest"], pull = _peak("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path))
    assert pull.returncode == 0 and "falling back" in pull.stderr, pull.stderr

    sparse_file(repo_dir / "config", 400 << 20)  # a 400 MB config
    peaks["ls, 400 MB config"], ls = _peak("ls", "--repo", repo_url)
    assert ls.returncode == 2 and "larger than" in ls.stderr, ls.stderr
    assert max(peaks.values()) < 300, peaks


# --- 1: a manifest belongs to one repository ----------------------------------------------------------


def test_manifests_copied_from_another_repository_never_steer_retention(tmp_path, key, cli):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    own = _files(tmp_path, *(f"own{i}.pt" for i in range(4)))
    cli("push", "--repo", str(ours), *map(str, own), check=True)
    foreign = _files(tmp_path, *(f"foreign{i}.pt" for i in range(4)))
    cli("push", "--repo", str(theirs), *map(str, foreign), check=True)
    own_ids = manifest_names(ours)
    # A mistaken sync copies every manifest and chunk of the other repository (same key) into ours.
    shutil.copytree(theirs / "manifests", ours / "manifests", dirs_exist_ok=True)
    shutil.copytree(theirs / "chunks", ours / "chunks", dirs_exist_ok=True)
    foreign_ids = manifest_names(theirs)
    # A version-1 manifest from before repository ids (no "repository" field) stays readable.
    legacy = read_manifest(ours, key, own_ids[0])
    legacy_id = newer_id(-10_000_000)
    write_manifest(ours, key, legacy_id, {**{k: v for k, v in legacy.items() if k != "repository"}, "id": legacy_id})

    ls = cli("ls", "--json", "--repo", str(ours))
    assert sorted(r["name"] for r in json.loads(ls.stdout)) == sorted(["own0.pt", *(p.name for p in own)])
    assert ls.stderr.count("belongs to another repository") == 4, ls.stderr
    verify = cli("verify", "--repo", str(ours))
    assert verify.returncode == 1 and verify.stdout.count("belongs to another repository") == 4, verify.stdout

    prune = cli("prune", "--keep", "3", "--repo", str(ours))
    assert prune.returncode == 0, prune.stderr
    left = set(manifest_names(ours))
    assert set(foreign_ids) <= left  # never deleted by retention
    assert left & set(own_ids) == set(own_ids[1:]) and legacy_id not in left  # our 3 newest stay
    _no_crash(ls, verify, prune)


# --- 5: a damaged or replayed manifest never blocks chunk GC; removable on request --------------------


def test_a_replayed_manifest_is_reported_removable_and_never_blocks_gc(tmp_path, key, repo_url, repo_dir, cli):
    old, new = _files(tmp_path, "old.pt", "new.pt")
    cli("push", "--repo", repo_url, str(old), check=True)
    cli("push", "--repo", repo_url, str(new), check=True)
    old_id = manifest_names(repo_dir)[0]
    replay = repo_dir / "manifests" / "9999999999999-0000000000000000"
    shutil.copy(repo_dir / "manifests" / old_id, replay)
    chunks_before = sum(1 for p in (repo_dir / "chunks").rglob("*") if p.is_file())

    # The replay takes no slot and GC runs, but it decrypts with the key: while it is there, the
    # chunks it names are kept (no chunk a readable manifest names is ever collected).
    prune = cli("prune", "--keep", "1", "--grace", "0", "--json", "--repo", repo_url)
    report = json.loads(prune.stdout)
    assert report["removed"] == [old_id] and report["gc_skipped"] is None, report
    assert report["chunks_removed"] == 0 and report["damaged"] == [replay.name]
    assert sum(1 for p in (repo_dir / "chunks").rglob("*") if p.is_file()) == chunks_before

    verify = cli("verify", "--repo", repo_url)
    assert verify.returncode == 1 and "moved or replayed" in verify.stdout and "--remove-damaged" in verify.stderr
    dry = cli("prune", "--remove-damaged", "--dry-run", "--repo", repo_url)
    assert dry.returncode == 0 and f"would remove damaged manifest {replay.name}" in dry.stdout and replay.exists()
    removed = json.loads(cli("prune", "--remove-damaged", "--grace", "0", "--json", "--repo", repo_url).stdout)
    assert not replay.exists() and removed["chunks_removed"] == 1, removed
    assert sum(1 for p in (repo_dir / "chunks").rglob("*") if p.is_file()) == chunks_before - 1
    cli("verify", "--repo", repo_url, check=True)
    _no_crash(prune, verify, dry)


# --- 2: a repository that holds data is never re-initialised --------------------------------------------


def test_a_deleted_config_is_never_silently_recreated_and_repair_rebuilds_it(tmp_path, key, repo_url, repo_dir, cli):
    first, second = _files(tmp_path, "first.pt", "second.pt")
    cli("push", "--repo", repo_url, str(first), check=True)
    original = json.loads((repo_dir / "config").read_text())
    (repo_dir / "config").unlink()

    push = cli("push", "--repo", repo_url, str(second))
    assert push.returncode == 2 and "config object is missing" in push.stderr and "repair-config" in push.stderr
    assert not (repo_dir / "config").exists() and len(manifest_names(repo_dir)) == 1
    ls = cli("ls", "--repo", repo_url)
    assert ls.returncode == 2 and "repair-config" in ls.stderr

    repair = cli("repair-config", "--repo", repo_url)
    assert repair.returncode == 0 and "rebuilt the config" in repair.stdout, repair.stderr
    rebuilt = json.loads((repo_dir / "config").read_text())
    assert set(rebuilt["keys"]) == set(original["keys"]) and rebuilt["created"] == original["created"]
    assert cli("repair-config", "--repo", repo_url).returncode == 2  # sound now: nothing to repair
    cli("push", "--repo", repo_url, str(second), check=True)
    cli("verify", "--read-data", "--repo", repo_url, check=True)
    dest = tmp_path / "dest"
    cli("pull", "first.pt", "--repo", repo_url, "--to", str(dest), check=True)
    assert (dest / "first.pt").read_bytes() == first.read_bytes()
    _no_crash(push, ls, repair)


# --- 6: a rollback (the newest manifests deleted or withheld) is noticed -------------------------------


def test_a_rolled_back_repository_is_noticed_by_ls_verify_and_pull(tmp_path, key, repo_url, repo_dir, cli):
    old, new = _files(tmp_path, "old.pt", "new.pt")
    cli("push", "--repo", repo_url, str(old), check=True)
    cli("push", "--repo", repo_url, str(new), check=True)
    newest_id = manifest_names(repo_dir)[-1]
    quiet = [cli(verb, "--repo", repo_url) for verb in ("ls", "verify")]
    assert all("rollback" not in p.stderr for p in quiet), [p.stderr for p in quiet]
    (repo_dir / "manifests" / newest_id).unlink()  # the store rolls back to the older, authentic state

    ls = cli("ls", "--repo", repo_url)
    verify = cli("verify", "--repo", repo_url)
    pull = cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "dest"))
    for p in (ls, verify, pull):
        lines = [line for line in p.stderr.splitlines() if "possible rollback" in line]
        assert len(lines) == 1 and "new.pt" in lines[0] and newest_id in lines[0], p.stderr
    assert ls.returncode == verify.returncode == pull.returncode == 0
    # A host that never saw the newer checkpoint has nothing to compare with.
    fresh = cli("ls", "--repo", repo_url, env={"XDG_STATE_HOME": str(tmp_path / "other-host")})
    assert "rollback" not in fresh.stderr
