"""``prune --keep-within/--keep-every-steps/--keep-tag/--per-session`` on a real repository (local
and S3); ``--keep N`` is ``--keep-last N``."""

from __future__ import annotations

import json


def _push_history(cli, url, tmp_path):
    ids = {}
    for session in ("20251001_000000", "20251010_000000"):
        for step in (100, 200, 300, 400):
            p = tmp_path / f"checkpoint_{session}_{step}.pt"
            p.write_bytes(f"{session} {step}".encode() * 100)
            out = cli("push", str(p), "--to", url, "--json", check=True).stdout
            ids[(session, step)] = json.loads(out)[0]["id"]
    return ids


def _removed(cli, url, *policy):
    out = cli("prune", *policy, "--dry-run", "--json", "--from", url, check=True).stdout
    return sorted(json.loads(out)["removed_names"])


def test_prune_composes_the_retention_policies(any_repo_url, cli, key, tmp_path):
    _push_history(cli, any_repo_url, tmp_path)
    s1, s2 = "checkpoint_20251001_000000", "checkpoint_20251010_000000"
    assert _removed(cli, any_repo_url, "--keep", "6") == [f"{s1}_100.pt", f"{s1}_200.pt"]
    assert _removed(cli, any_repo_url, "--keep-last", "6") == [f"{s1}_100.pt", f"{s1}_200.pt"]
    assert _removed(cli, any_repo_url, "--keep-last", "1", "--per-session") == sorted(
        f"{s}_{n}.pt" for s in (s1, s2) for n in (100, 200, 300)
    )
    # The first at or past every multiple of 200: steps 100 ([0, 200)), 200 and 400 of each session.
    assert _removed(cli, any_repo_url, "--keep-every-steps", "200") == [f"{s1}_300.pt", f"{s2}_300.pt"]
    # Everything was pushed just now: a day keeps it all; --keep-within alone drops the default --keep-last.
    assert _removed(cli, any_repo_url, "--keep-within", "1d") == []
    cli("tag", f"{s1}_100.pt", "--add", "paper", "--from", any_repo_url, check=True)
    assert f"{s1}_100.pt" not in _removed(cli, any_repo_url, "--keep-last", "1", "--keep-tag", "paper")
    for bad in (["--keep-within", "soon"], ["--keep-last", "0"], ["--keep-every-steps", "0"]):
        proc = cli("prune", *bad, "--from", any_repo_url)
        assert proc.returncode == 2 and proc.stderr.startswith("ckpt-sync: error:"), (bad, proc.stderr)
