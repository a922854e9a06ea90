"""``watch`` takes prune's retention policies (``--keep-last``, ``--keep-within``, ``--keep-every-steps``,
``--keep-tag``, ``--per-session``: one option helper, one ``retention.build_policy``), and so does the
library's ``SyncClient(retention=...)``. A real watch process, real torch.save checkpoints."""

from __future__ import annotations

import signal

from helpers import json_events, make_torch_checkpoint, start_cli, wait_until

import ckpt_sync
from ckpt_sync.api import open_repository
from ckpt_sync.retention import build_policy

SESSION = "checkpoint_20251106_120000"


def _names(repo_url):
    repo = open_repository(repo_url)
    return sorted(m.name for m in repo.manifests())


def test_watch_keep_last_1_keep_tag_keeps_the_newest_and_the_tagged_one(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    log = tmp_path / "watch.log"
    args = ("--keep-last", "1", "--keep-tag", "paper", "--grace", "0", "--settle", "0.3", "--rescan", "2")
    proc = start_cli("watch", str(ckdir), "--to", repo_url, *args, "--log-format", "json", log_file=log)
    try:
        for n, step in enumerate((100, 200, 300), 1):
            make_torch_checkpoint(ckdir / f"{SESSION}_{step}.pt", seed=step, step=step)
            wait_until(lambda n=n: len(json_events(log, "committed")) >= n, f"commit of step {step}")
            if step == 100:
                cli("tag", f"{SESSION}_100.pt", "--add", "paper", "--from", repo_url, check=True)
        # The newest (300) by --keep-last 1, the tagged one (100) by --keep-tag; 200 by nothing.
        expected = [f"{SESSION}_100.pt", f"{SESSION}_300.pt"]
        wait_until(lambda: _names(repo_url) == expected, "retention after the third commit")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()
    assert _names(repo_url) == expected
    cli("verify", "--read-data", "--repo", repo_url, check=True)


def test_watch_refuses_a_bad_retention_option_before_it_starts(tmp_path, key, repo_url, cli):
    (tmp_path / "ck").mkdir()
    for bad in (["--keep-every-steps", "0"], ["--keep-within", "soon"]):
        proc = cli("watch", str(tmp_path / "ck"), "--to", repo_url, "--once", *bad)
        assert proc.returncode == 2 and proc.stderr.startswith("ckpt-sync: error:"), (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "ck" / ".ckpt-sync").exists()  # nothing started


def test_sync_client_applies_a_retention_policy_after_each_commit(tmp_path, key, repo_url):
    policy = build_policy(keep_last=1, keep_tags=["paper"])
    with ckpt_sync.SyncClient(repo_url, state_dir=tmp_path / "state", retention=policy, grace=0) as sync:
        for step in (100, 200, 300):
            path = make_torch_checkpoint(tmp_path / "ck" / f"{SESSION}_{step}.pt", seed=step, step=step)
            sync.enqueue(path, tags=("paper",) if step == 100 else (), metadata={"global_step": step})
            sync.wait(timeout=300)
    assert _names(repo_url) == [f"{SESSION}_100.pt", f"{SESSION}_300.pt"]
