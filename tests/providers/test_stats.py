"""``ckpt-sync stats`` against an independent count of the store's objects and the manifests
decrypted with plain ``cryptography``; on the local store and on S3."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import boto3
from cryptography.fernet import Fernet


def raw_objects(url: str) -> dict[str, tuple[int, bytes]]:
    """Every object of the repository (key -> (size, bytes)), read straight from the store."""
    if url.startswith("file://"):
        root = Path(url[len("file://") :])
        return {
            p.relative_to(root).as_posix(): (p.stat().st_size, p.read_bytes())
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }
    bucket, _, prefix = url[len("s3://") :].partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for o in page.get("Contents", ()):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"][len(prefix) + 1 :]] = (o["Size"], body)
    return out


def independent_count(url: str, key: str) -> dict:
    objects = raw_objects(url)
    fernet = Fernet(key)
    manifests = [
        json.loads(fernet.decrypt(base64.urlsafe_b64encode(body)))
        for k, (_, body) in objects.items()
        if k.startswith("manifests/")
    ]
    chunk_sizes = {k.rsplit("/", 1)[-1]: size for k, (size, _) in objects.items() if k.startswith("chunks/")}
    users: dict[str, set[str]] = {}
    plain: dict[str, int] = {}
    for m in manifests:
        for f in m["files"]:
            for cid, size in f["chunks"]:
                users.setdefault(cid, set()).add(m["id"])
                plain[cid] = size
    return {
        "checkpoints": len(manifests),
        "logical_bytes": sum(f["size"] for m in manifests for f in m["files"]),
        "stored_bytes": sum(size for k, (size, _) in objects.items() if k.startswith(("chunks/", "manifests/"))),
        "dedup_ratio": sum(f["size"] for m in manifests for f in m["files"]) / sum(plain.values()),
        "unique": {
            m["id"]: sum(chunk_sizes[c] for c, who in users.items() if who == {m["id"]}) for m in manifests
        },
        "unreferenced": sum(size for cid, size in chunk_sizes.items() if cid not in users),
    }


def test_stats_match_an_independent_count(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    # b re-saves a's tensors with a longer loss history (shared chunks); c shares nothing.
    a = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_100.pt", seed=1, step=100, history=10)
    b = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_200.pt", seed=1, step=200, history=5000)
    c = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_300.pt", seed=3, step=300)
    for p in (a, b, c):
        cli("push", str(p), "--to", any_repo_url, "--chunk-size", "64K", check=True)
    st = json.loads(cli("stats", "--from", any_repo_url, "--json", check=True).stdout)
    ref = independent_count(any_repo_url, key)
    assert st["checkpoints"] == ref["checkpoints"] == 3
    assert st["logical_bytes"] == ref["logical_bytes"] == sum(p.stat().st_size for p in (a, b, c))
    assert st["stored_bytes"] == ref["stored_bytes"]
    assert abs(st["dedup_ratio"] - ref["dedup_ratio"]) < 1e-3 and st["dedup_ratio"] > 1.2
    assert {c["id"]: c["unique_bytes"] for c in st["per_checkpoint"]} == ref["unique"]
    assert [c["name"] for c in st["per_checkpoint"]] == [c.name, b.name, a.name]  # newest first
    assert st["grace_bytes"] == st["collectable_bytes"] == ref["unreferenced"] == 0
    text = cli("stats", "--from", any_repo_url, check=True).stdout
    assert "dedup ratio:" in text and "UNIQUE" in text and c.name in text
