"""``ckpt-sync copy``: checkpoints go to another repository (local -> S3 -> local, another key), the
copy verifies, and a second run copies nothing."""

from __future__ import annotations

import json

import pytest
from ckpt_sync.providers import open_provider
from cryptography.fernet import Fernet
from helpers import make_folder_checkpoint

from ckpt_sync.api import open_repository
from ckpt_sync.format.layout import CHUNKS, CONFIG_KEY


def _fill(cli, url, tmp_path, torch_checkpoint):
    a = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_100.pt", seed=1, step=100)
    b = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_200.pt", seed=1, step=200, history=3000)
    folder = make_folder_checkpoint(tmp_path / "c" / "best_model")
    for p, tags in ((a, []), (b, []), (folder, ["--tag", "best"])):
        cli("push", str(p), "--to", url, "--chunk-size", "64K", *tags, check=True)
    return a, b, folder


def _listing(cli, url, *extra):
    rows = json.loads(cli("ls", "--from", url, "--json", "--role", "any", *extra, check=True).stdout)
    return [(m["id"], m["name"], m["step"], m["tags"], m["size"]) for m in rows]


def _objects(url, prefix):
    p = open_provider(url, retry=None)
    try:
        return {i.key: p.get(i.key) for i in p.list(prefix)}
    finally:
        p.close()


@pytest.mark.s3
def test_copy_local_to_s3_and_back_verifies_and_a_second_run_copies_nothing(
    new_repo_url, cli, key, tmp_path, torch_checkpoint
):
    local, s3, back = new_repo_url("file"), new_repo_url("s3"), new_repo_url("file")
    a, _, folder = _fill(cli, local, tmp_path, torch_checkpoint)
    first = json.loads(cli("copy", "--all", "--from", local, "--to", s3, "--json", check=True).stdout)
    assert len(first["copied"]) == 3 and first["skipped"] == [] and first["bytes_sent"] > 0
    assert _listing(cli, s3) == _listing(cli, local)
    assert cli("verify", "--read-data", "--from", s3).returncode == 0
    again = json.loads(cli("copy", "--all", "--from", local, "--to", s3, "--json", check=True).stdout)
    assert again["copied"] == [] and len(again["skipped"]) == 3 and again["bytes_sent"] == 0

    # S3 -> local: only what was asked for.
    cli("copy", "--tag", "best", "--from", s3, "--to", back, check=True)
    cli("copy", "checkpoint_s1_100.pt", "--from", s3, "--to", back, check=True)
    assert sorted(n for _, n, *_ in _listing(cli, back)) == ["best_model", "checkpoint_s1_100.pt"]
    assert cli("verify", "--read-data", "--from", back).returncode == 0
    out = tmp_path / "out"
    cli("pull", a.name, "--from", back, "--to", str(out), check=True)
    assert (out / a.name).read_bytes() == a.read_bytes()
    cli("pull", "best_model", "--from", back, "--to", str(out), check=True)
    assert (out / "best_model" / "optim" / "state.pt").read_bytes() == (folder / "optim" / "state.pt").read_bytes()


def test_copy_to_a_repository_with_another_key_re_encrypts(
    any_repo_url, new_repo_url, cli, key, tmp_path, torch_checkpoint
):
    src = new_repo_url("file")
    _, b, _ = _fill(cli, src, tmp_path, torch_checkpoint)
    other = tmp_path / "other.key"
    other.write_text(Fernet.generate_key().decode() + "\n")
    report = json.loads(
        cli(
            "copy", "--latest", "--from", src, "--to", any_repo_url, "--to-key-file", str(other), "--json", check=True
        ).stdout
    )
    assert len(report["copied"]) == 1 and report["chunks_reencrypted"] > 0 and report["chunks_copied"] == 0
    assert cli("verify", "--read-data", "--from", any_repo_url, "--key-file", str(other)).returncode == 0
    assert cli("ls", "--from", any_repo_url).returncode == 2  # the source's key does not open it
    out = tmp_path / "out"
    cli("pull", "--latest", "--from", any_repo_url, "--key-file", str(other), "--to", str(out), check=True)
    assert (out / b.name).read_bytes() == b.read_bytes()
    # Nothing of the source's objects is in the destination: another id key names chunks differently.
    assert not set(_objects(src, CHUNKS)) & set(_objects(any_repo_url, CHUNKS))
    again = json.loads(
        cli(
            "copy", "--latest", "--from", src, "--to", any_repo_url, "--to-key-file", str(other), "--json", check=True
        ).stdout
    )
    assert again["copied"] == [] and again["bytes_sent"] == 0


def test_copy_with_the_same_key_and_id_key_copies_the_stored_objects(
    any_repo_url, new_repo_url, cli, key, tmp_path, torch_checkpoint
):
    src = new_repo_url("file")
    _fill(cli, src, tmp_path, torch_checkpoint)
    # A mirror: the destination was set up with the source's config (same key, same id key).
    dst = open_provider(any_repo_url, retry=None)
    dst.put(CONFIG_KEY, open_provider(src, retry=None).get(CONFIG_KEY))
    dst.close()
    report = json.loads(cli("copy", "--all", "--from", src, "--to", any_repo_url, "--json", check=True).stdout)
    assert report["chunks_copied"] > 0 and report["chunks_reencrypted"] == 0
    src_chunks, dst_chunks = _objects(src, CHUNKS), _objects(any_repo_url, CHUNKS)
    assert dst_chunks == src_chunks  # the same objects, byte for byte
    assert open_repository(any_repo_url).id == open_repository(src).id
    assert cli("verify", "--read-data", "--from", any_repo_url).returncode == 0


def test_copy_says_what_it_needs(new_repo_url, cli, key, tmp_path, torch_checkpoint):
    src, dst = new_repo_url("file"), new_repo_url("file")
    _fill(cli, src, tmp_path, torch_checkpoint)
    for args in ([], ["--all", "--latest"], ["--tag", "nope"]):
        proc = cli("copy", *args, "--from", src, "--to", dst)
        assert proc.returncode == 2 and proc.stderr.startswith("ckpt-sync: error:"), (args, proc.stderr)
    assert cli("copy", "--all", "--from", src, "--to", src).returncode == 2


@pytest.mark.s3
@pytest.mark.gcs
def test_copy_across_clouds_s3_to_gcs_verifies_and_a_second_run_copies_nothing(
    cloud_factory, cli, key, tmp_path, torch_checkpoint
):
    s3c, gcsc = cloud_factory("s3"), cloud_factory("gcs")
    env = {**s3c.env, **gcsc.env}  # both stores reachable from one process, as on a real host
    s3, gcs = s3c.url(s3c.new_bucket()), gcsc.url(gcsc.new_bucket())
    ckpts = [torch_checkpoint(tmp_path / "c" / f"checkpoint_x_{step}.pt", seed=2, step=step) for step in (10, 20)]
    for p in ckpts:
        cli("push", str(p), "--to", s3, "--chunk-size", "64K", check=True, env=env)
    first = json.loads(cli("copy", "--all", "--from", s3, "--to", gcs, "--json", check=True, env=env).stdout)
    assert len(first["copied"]) == 2 and first["bytes_sent"] > 0

    def listing(url):
        rows = json.loads(cli("ls", "--from", url, "--json", check=True, env=env).stdout)
        return [(m["name"], m["step"], m["size"]) for m in rows]

    assert listing(gcs) == listing(s3)
    assert cli("verify", "--read-data", "--from", gcs, env=env).returncode == 0
    again = json.loads(cli("copy", "--all", "--from", s3, "--to", gcs, "--json", check=True, env=env).stdout)
    assert again["copied"] == [] and again["bytes_sent"] == 0
    out = tmp_path / "out"
    cli("pull", "--latest", "--from", gcs, "--to", str(out), check=True, env=env)
    assert (out / ckpts[1].name).read_bytes() == ckpts[1].read_bytes()


def test_copy_tells_a_new_save_under_the_same_name_and_size_from_the_copy_it_has(new_repo_url, cli, key, tmp_path):
    """Format 2 records no whole-file hash, and another repository's chunk ids differ (another id
    key): "already copied" must then mean the same commit, never just the same name and sizes. A
    re-save of ``latest.pt`` with other weights of the same size is copied; a second run copies nothing."""
    import torch

    src, dst = new_repo_url("file"), new_repo_url("file")
    path = tmp_path / "latest.pt"
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save({"w": torch.randn(50_000)}, path)
        cli("push", str(path), "--to", src, check=True)
        report = json.loads(cli("copy", "--all", "--from", src, "--to", dst, "--json", check=True).stdout)
        assert len(report["copied"]) == 1 and len(report["skipped"]) == seed - 1
    again = json.loads(cli("copy", "--all", "--from", src, "--to", dst, "--json", check=True).stdout)
    assert again["copied"] == [] and len(again["skipped"]) == 2
    out = tmp_path / "out"
    cli("pull", "--latest", "--from", dst, "--to", str(out), check=True)
    assert (out / "latest.pt").read_bytes() == path.read_bytes()
