"""Repository formats and chunk encodings (chunk_format.py, docs/FORMAT.md): format 2's IV binding
and chunk re-hashing, padding that hides tensor sizes, per-chunk compression that keeps
deduplication, and format 1 still readable and writable. Real pushes (a subprocess), real
torch.save checkpoints, objects edited in the store as a hostile or broken store would."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from cryptography.fernet import Fernet

from ckpt_sync.format.chunk_format import ChunkFormat, padme
from ckpt_sync.format.crypto import FernetKey, KeyRing, token_size
from ckpt_sync.format.manifest import ChunkRef


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    torch.save(tensors, path)
    return path


def _manifest(repo: Path, key: str, newest: int = -1) -> dict:
    names = sorted(p.name for p in (repo / "manifests").iterdir())
    token = (repo / "manifests" / names[newest]).read_bytes()
    return json.loads(Fernet(key.encode()).decrypt(base64.urlsafe_b64encode(token)))


def _chunk_path(repo: Path, cid: str) -> Path:
    return repo / "chunks" / cid[:2] / cid


def _push(cli, repo: Path, path: Path, *options: str, check: bool = True):
    return cli("push", "--repo", str(repo), str(path), "--chunk-size", "64K", *options, check=check)


def _stats(proc) -> dict:
    """The transfer figures of a ``push --json``."""
    return json.loads(proc.stdout)[0]["stats"]


# --- padding (issue 12: sizes stop fingerprinting tensors) -----------------------------------------


def test_padme_buckets_hide_small_differences_and_cost_at_most_about_11_percent():
    for n in [1, 255, 256, 1000, 4097, 65_536, 100_000, 8 << 20, (8 << 20) + 1, 123_456_789]:
        p = padme(n)
        assert p >= n and p >= 256
        assert p <= max(256, n * 1.12)
        assert padme(p) == p  # a bucket is its own bucket
    # Lengths a few elements apart (tensor widths 4100 vs 4150 floats) land in one bucket.
    assert padme(4100 * 4) == padme(4150 * 4)
    assert len({padme(n) for n in range(60_000, 66_000)}) < 10


def test_zeros_are_encrypted_as_plaintext_padding_without_a_copy():
    raw = os.urandom(32)
    token = FernetKey(raw).encrypt(b"abc" * 1000, zeros=777)
    assert len(token) == token_size(3000 + 777)
    assert Fernet(base64.urlsafe_b64encode(raw)).decrypt(base64.urlsafe_b64encode(bytes(token))) == (
        b"abc" * 1000 + bytes(777)
    )


def test_a_padded_repository_stores_bucket_sizes_only_and_restores_exactly(cli, key, tmp_path):
    """Two checkpoints whose tensors differ in size by a few elements store objects of the same
    sizes in a padded repository (and of different sizes in a plain one); both restore exactly."""
    sizes = {}
    for options in ([], ["--pad"]):
        repo = tmp_path / f"repo{len(options)}"
        seen = []
        for width in (5000, 5003):
            torch.manual_seed(width)
            ckpt = _save(tmp_path / f"w{width}.pt", {"emb": torch.randn(width), "head": torch.randn(width * 3)})
            _push(cli, repo, ckpt, *options)
            m = _manifest(repo, key)
            seen.append(sorted(_chunk_path(repo, cid).stat().st_size for cid, _ in m["files"][0]["chunks"]))
            out = tmp_path / f"out{len(options)}-{width}"
            cli("pull", "--latest", "--repo", str(repo), "--to", str(out), check=True)
            assert (out / ckpt.name).read_bytes() == ckpt.read_bytes()
        sizes[bool(options)] = seen
        assert cli("verify", "--read-data", "--repo", str(repo)).returncode == 0
    assert sizes[False][0] != sizes[False][1]  # plain: object sizes follow the tensors
    assert sizes[True][0] == sizes[True][1]  # padded: only the bucket shows
    config = json.loads((tmp_path / "repo1" / "config").read_text())
    assert config["pad"] == 1


def test_a_truncated_padded_chunk_is_refused_and_sent_again(cli, key, tmp_path):
    repo = tmp_path / "repo"
    ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(40_000)})
    _push(cli, repo, ckpt, "--pad")
    cid = max(_manifest(repo, key)["files"][0]["chunks"], key=lambda c: c[1])[0]
    obj = _chunk_path(repo, cid)
    whole = obj.read_bytes()
    obj.write_bytes(whole[:4096])  # a power loss left a page
    proc = cli("pull", "--latest", "--repo", str(repo), "--to", str(tmp_path / "out"))
    assert proc.returncode != 0 and "wrong size" in proc.stderr
    _push(cli, repo, ckpt, "--pad")  # the same checkpoint again: the cut chunk is replaced
    assert obj.stat().st_size == len(whole)
    cli("pull", "--latest", "--repo", str(repo), "--to", str(tmp_path / "out2"), check=True)
    assert (tmp_path / "out2" / "c.pt").read_bytes() == ckpt.read_bytes()


def test_settings_are_chosen_at_creation_and_a_conflicting_one_is_one_clear_line(cli, key, tmp_path):
    repo = tmp_path / "repo"
    ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(1000)})
    _push(cli, repo, ckpt)
    conflicts = [
        (["--pad"], "no padding"),
        (["--format", "1"], "format 2"),
        (["--compression", "zstd"], "no compression"),
    ]
    for flags, says in conflicts:
        proc = _push(cli, repo, ckpt, *flags, check=False)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert says in line and "when a repository is created" in line and "unexpected" not in line
    # Repeating what the repository already has is fine.
    _push(cli, repo, ckpt, "--format", "2", "--compression", "none")
    new = str(tmp_path / "new")
    proc = cli("init", "--repo", new, "--pad", "--compression", "zstd", "--sha256", "--json", check=True)
    made = json.loads(proc.stdout)
    assert (made["format"], made["pad"], made["compression"], made["sha256"]) == (2, 1, "zstd", True)


# --- format 2: chunks tied to their ids without re-hashing -----------------------------------------


def test_format2_detects_a_chunk_swapped_for_another_authentic_one(cli, key, tmp_path):
    """Two authentic chunks of the repository trade places: each still authenticates under the key,
    but its IV is not the one its new name derives; pull and verify name the chunk, nothing is
    restored."""
    repo = tmp_path / "repo"
    torch.manual_seed(1)
    ckpt = _save(tmp_path / "c.pt", {"a": torch.randn(30_000), "b": torch.randn(30_000)})
    _push(cli, repo, ckpt)
    chunks = _manifest(repo, key)["files"][0]["chunks"]
    same = [c for c in chunks if c[1] == chunks[1][1]][:2]
    (a, _), (b, _) = same
    pa, pb = _chunk_path(repo, a), _chunk_path(repo, b)
    ta, tb = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(tb)
    pb.write_bytes(ta)
    proc = cli("pull", "--latest", "--repo", str(repo), "--to", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "is not the chunk it is named after" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "c.pt").exists()
    proc = cli("verify", "--read-data", "--repo", str(repo))
    assert proc.returncode != 0 and "is not the chunk it is named after" in proc.stdout + proc.stderr


def test_format2_refuses_a_chunk_copied_from_another_repository_under_the_same_key(cli, key, tmp_path):
    """Same Fernet key, other repository: the token authenticates, but its IV comes from the other
    repository's id key."""
    ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(50_000)})
    mine, other = tmp_path / "mine", tmp_path / "other"
    _push(cli, mine, ckpt)
    _push(cli, other, ckpt)
    # The same plaintext has another id there (another id key); its token goes under my chunk's name.
    (mine_id, _), (other_id, _) = (_manifest(r, key)["files"][0]["chunks"][1] for r in (mine, other))
    assert mine_id != other_id
    _chunk_path(mine, mine_id).write_bytes(_chunk_path(other, other_id).read_bytes())
    proc = cli("pull", "--latest", "--repo", str(mine), "--to", str(tmp_path / "out"))
    assert proc.returncode != 0 and "is not the chunk it is named after" in proc.stderr


def test_format2_records_a_whole_file_hash_only_when_asked(cli, key, tmp_path):
    """Format 2's chunk ids are each file's hash; SHA-256 is recorded with --sha256 (for sha256sum),
    and always in format 1."""
    ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(2000)})
    import hashlib

    want_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    _push(cli, tmp_path / "plain", ckpt)
    (entry,) = _manifest(tmp_path / "plain", key)["files"]
    assert "blake3" not in entry and "sha256" not in entry and entry["chunks"]
    _push(cli, tmp_path / "sha", ckpt, "--sha256")
    (entry,) = _manifest(tmp_path / "sha", key)["files"]
    assert entry["sha256"] == want_sha and "blake3" not in entry
    listed = json.loads(cli("ls", "latest", "--repo", str(tmp_path / "sha"), "--json", check=True).stdout)
    assert listed == [{"path": "c.pt", "size": ckpt.stat().st_size, "sha256": want_sha, "blake3": None}]
    _push(cli, tmp_path / "v1", ckpt, "--format", "1")
    (entry,) = _manifest(tmp_path / "v1", key)["files"]
    assert entry["sha256"] == want_sha and "blake3" not in entry


def test_format2_catches_a_chunk_that_is_not_what_its_writer_named(cli, key, tmp_path):
    """A writer bug (say, a buffer reused before it was encrypted) stores other bytes under a chunk's
    id, sealed with the key and the right IV: only re-hashing the plaintext can tell. Pull restores
    nothing, verify names the chunk."""
    from ckpt_sync.api import open_repository

    repo = tmp_path / "repo"
    ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(40_000)})
    _push(cli, repo, ckpt)
    cid, size = _manifest(repo, key)["files"][0]["chunks"][1]
    r = open_repository(str(repo))
    plain = bytearray(r.load_chunk(ChunkRef(cid, size)))
    plain[size // 2] ^= 0x01
    _chunk_path(repo, cid).write_bytes(bytes(r.format.seal(r.keys, bytes(plain), cid)))
    proc = cli("pull", "--latest", "--repo", str(repo), "--to", str(tmp_path / "out"))
    assert proc.returncode != 0 and "does not match its id" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    proc = cli("verify", "--read-data", "--repo", str(repo))
    assert proc.returncode != 0 and cid[:16] in proc.stdout + proc.stderr


def test_a_recorded_sha256_that_does_not_match_the_chunks_is_caught(cli, key, tmp_path):
    """Where a file records a whole-file hash (format 1, or format 2 with --sha256), a reader checks
    it too: a manifest (re-encrypted with the key, as a buggy writer would) whose hash does not match
    its chunks restores nothing."""
    for options in (("--sha256",), ("--format", "1")):
        repo = tmp_path / f"repo{len(options)}"
        ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(20_000)})
        _push(cli, repo, ckpt, *options)
        name = sorted(p.name for p in (repo / "manifests").iterdir())[-1]
        m = _manifest(repo, key)
        m["files"][0]["sha256"] = "0" * 64
        token = Fernet(key.encode()).encrypt(json.dumps(m).encode())
        (repo / "manifests" / name).write_bytes(base64.urlsafe_b64decode(token))
        proc = cli("pull", name, "--repo", str(repo), "--to", str(tmp_path / f"out{len(options)}"))
        assert proc.returncode != 0 and "whole-file hash mismatch" in proc.stderr


def test_a_restored_file_changed_since_is_told_apart_by_its_chunk_ids(cli, key, tmp_path):
    """With no whole-file hash recorded, "already restored and identical" is decided chunk by chunk:
    an identical copy is kept, one with a flipped byte is refused without --overwrite."""
    repo, out = tmp_path / "repo", tmp_path / "out"
    ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(60_000)})
    _push(cli, repo, ckpt)
    cli("pull", "--latest", "--repo", str(repo), "--to", str(out), check=True)
    cli("pull", "--latest", "--repo", str(repo), "--to", str(out), check=True)  # identical: kept
    data = bytearray((out / "c.pt").read_bytes())
    data[len(data) // 3] ^= 0x40
    (out / "c.pt").write_bytes(bytes(data))
    proc = cli("pull", "--latest", "--repo", str(repo), "--to", str(out))
    assert proc.returncode != 0 and "differs" in proc.stderr
    cli("pull", "--latest", "--repo", str(repo), "--to", str(out), "--overwrite", check=True)
    assert (out / "c.pt").read_bytes() == ckpt.read_bytes()


def test_format1_repositories_stay_readable_and_writable(cli, key, tmp_path):
    repo = tmp_path / "repo"
    torch.manual_seed(3)
    base = {"a": torch.randn(30_000), "b": torch.randn(30_000)}
    first = _save(tmp_path / "checkpoint_s_1.pt", base)
    _push(cli, repo, first, "--format", "1")
    second = _save(tmp_path / "checkpoint_s_2.pt", {**base, "b": torch.randn(30_000)})
    proc = _push(cli, repo, second, "--json")  # a later push without --format keeps format 1
    assert json.loads((repo / "config").read_text())["version"] == 1
    assert _stats(proc)["bytes_new"] < second.stat().st_size * 0.7  # "a" deduplicated
    cli("pull", "--latest", "--repo", str(repo), "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / second.name).read_bytes() == second.read_bytes()
    assert cli("verify", "--read-data", "--repo", str(repo)).returncode == 0


# --- compression per chunk (issue 17: keeps deduplication) -----------------------------------------


def test_per_chunk_compression_keeps_dedup_and_stores_incompressible_chunks_raw(cli, key, tmp_path):
    repo, plain_repo = tmp_path / "zstd", tmp_path / "plain"
    torch.manual_seed(4)
    weights = torch.randn(200_000).to(torch.bfloat16)  # bf16: compresses ~0.8
    noise = torch.randint(0, 256, (200_000,), dtype=torch.uint8)  # does not compress
    first = _save(tmp_path / "checkpoint_s_1.pt", {"w": weights, "noise": noise, "step": 1})
    sent = {}
    for r, options in ((repo, ["--compression", "zstd"]), (plain_repo, [])):
        sent[r] = _stats(_push(cli, r, first, "--json", *options))["bytes_sent"]
    assert sent[repo] < sent[plain_repo] * 0.95
    # Stored raw: every incompressible chunk's object is exactly the plain token size.
    m = _manifest(repo, key)
    sizes = [(_chunk_path(repo, cid).stat().st_size, n) for cid, n in m["files"][0]["chunks"]]
    assert any(stored == token_size(n) for stored, n in sizes)
    assert any(stored < token_size(n) for stored, n in sizes)
    # A second save that changes only the noise sends only the noise's chunks: dedup is kept.
    other_noise = torch.randint(0, 256, (200_000,), dtype=torch.uint8)
    second = _save(tmp_path / "checkpoint_s_2.pt", {"w": weights, "noise": other_noise, "step": 2})
    report = _stats(_push(cli, repo, second, "--json"))
    assert report["bytes_new"] < second.stat().st_size * 0.6
    cli("pull", "--latest", "--repo", str(repo), "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / second.name).read_bytes() == second.read_bytes()
    assert cli("verify", "--read-data", "--repo", str(repo)).returncode == 0


def test_a_cut_compressed_chunk_is_sent_again_and_a_lying_frame_is_refused(tmp_path):
    """At the library level: a compressed chunk cut short is not trusted for dedup, and a frame
    claiming another size never decompresses into memory."""
    raw = os.urandom(32)
    keys = KeyRing([raw])
    fmt = ChunkFormat(2, os.urandom(32), 1, "zstd")
    plain = bytes(100_000)
    cid = fmt.chunk_id(plain)
    token = bytes(fmt.seal(keys, plain, cid))
    assert len(token) < token_size(len(plain))
    assert fmt.size_ok(len(plain), len(token))
    assert not fmt.size_ok(len(plain), 4096) and not fmt.size_ok(len(plain), 0)
    assert bytes(fmt.open(keys, cid, len(plain), token)) == plain
    with pytest.raises(Exception, match="decompresses to the wrong size"):
        fmt.open(keys, cid, len(plain) - 1, token)  # the manifest says another size


def test_copy_between_format1_and_format2_repositories_reencodes_and_verifies(cli, key, tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    ckpt = _save(tmp_path / "checkpoint_s_7.pt", {"w": torch.randn(60_000)})
    _push(cli, v1, ckpt, "--format", "1")
    cli("init", "--repo", str(v2), "--pad", "--compression", "zstd", check=True)
    cli("copy", "--from", str(v1), "--to", str(v2), "--all", check=True)
    assert cli("verify", "--read-data", "--repo", str(v2)).returncode == 0
    cli("pull", "--latest", "--repo", str(v2), "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / ckpt.name).read_bytes() == ckpt.read_bytes()
    back = tmp_path / "back"
    cli("init", "--repo", str(back), "--format", "1", check=True)
    cli("copy", "--from", str(v2), "--to", str(back), "--all", check=True)
    assert cli("verify", "--read-data", "--repo", str(back)).returncode == 0
    assert cli("copy", "--from", str(v2), "--to", str(back), "--all", "--json", check=True).returncode == 0


def test_repair_config_rebuilds_a_format2_padded_compressed_repository(cli, key, tmp_path):
    repo = tmp_path / "repo"
    ckpt = _save(tmp_path / "c.pt", {"w": torch.randn(30_000)})
    _push(cli, repo, ckpt, "--pad", "--compression", "zstd", "--sha256")
    before = json.loads((repo / "config").read_text())
    (repo / "config").unlink()
    cli("repair-config", "--repo", str(repo), check=True)
    after = json.loads((repo / "config").read_text())
    for field in ("version", "chunk_id", "pad", "compression", "sha256", "created"):
        assert after[field] == before[field], field
    cli("pull", "--latest", "--repo", str(repo), "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "c.pt").read_bytes() == ckpt.read_bytes()
    shutil.rmtree(tmp_path / "out")
