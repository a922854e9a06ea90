"""A newcomer's slips and questions (issue 13): the right repository in status, mistyped URLs, two
watches on one folder, a killed uploader, typo'd variables, unwritable targets, no key at all."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import chunk_files, manifest_ids, start_cli, wait_until
from helpers import one_error_line as _one_line


def _watch(ckdir: Path, repo_url: str, *extra: str, put_delay: float = 0.0, log_file: Path | None = None):
    return start_cli(
        "watch", str(ckdir), "--to", repo_url, "--settle", "0.2", *extra, put_delay=put_delay, log_file=log_file
    )


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


# --- (4) status reports the repository watch uploads to -----------------------------------------


def test_status_uses_the_repository_watch_records(tmp_path, key, repo_url, torch_checkpoint, cli):
    ckdir = tmp_path / "ck"
    torch_checkpoint(ckdir / "checkpoint_s_100.pt", step=100)
    cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.2", check=True)
    # The default repository holds an unrelated checkpoint: status must not report that one.
    cli("push", str(torch_checkpoint(tmp_path / "other" / "checkpoint_x_999.pt", step=999)), check=True)
    st = json.loads(cli("status", str(ckdir), "--json", check=True).stdout)
    assert st["repository"] == repo_url and st["recorded_repository"] == repo_url
    assert st["newest_committed"]["name"] == "checkpoint_s_100.pt" and st["lag_seconds"] == 0
    human = cli("status", str(ckdir), check=True).stdout
    assert f"repository:  {repo_url}" in human
    # Credentials never land in the state folder: a provider URL is bucket and prefix only.
    assert json.loads(cli("status", str(ckdir), "--json", check=True).stdout)["recorded_repository"] == repo_url


# --- (5) mistyped URLs are refused; push names the repository ------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("s3//bucket/x", "did you mean s3://bucket/x?"),
        ("gs//bucket", "did you mean gs://bucket?"),
        ("s3:/bucket", "malformed repository URL 's3:/bucket'"),
        ("gs:/x", "malformed repository URL 'gs:/x'"),
        ("file:/x", "malformed repository URL 'file:/x'"),
        ("foo://x", "unknown repository URL scheme foo://"),
    ],
)
def test_mistyped_urls_are_refused_and_create_nothing(tmp_path, key, cli, url, needle, torch_checkpoint):
    ckpt = torch_checkpoint(tmp_path / "c.pt")
    before = set(Path(tmp_path).rglob("*"))
    _one_line(cli("push", str(ckpt), "--to", url, cwd=tmp_path), 2, needle)
    assert set(Path(tmp_path).rglob("*")) == before  # no local folder named like the URL


def test_a_folder_named_like_a_scheme_is_still_reachable(tmp_path, key, cli, torch_checkpoint):
    ckpt = torch_checkpoint(tmp_path / "c.pt")
    cli("push", str(ckpt), "--to", "./s3//bucket", cwd=tmp_path, check=True)
    assert manifest_ids(tmp_path / "s3" / "bucket")


def test_push_names_the_repository_in_its_result_line(tmp_path, key, repo_url, torch_checkpoint, cli):
    out = cli("push", str(torch_checkpoint(tmp_path / "c.pt")), "--to", repo_url, check=True).stdout
    assert f" to {repo_url}:" in out.splitlines()[-1]


# --- (6) one watch per state folder ---------------------------------------------------------------


def test_a_second_watch_on_the_same_folder_exits_2_naming_the_first(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    first = _watch(ckdir, repo_url)
    try:
        wait_until(lambda: (ckdir / ".ckpt-sync" / "watch.lock").is_file() and (ckdir / ".ckpt-sync" / "watch.lock")
                   .read_text().strip() == str(first.pid), "the first watch holds the lock")
        second = cli("watch", str(ckdir), "--to", repo_url, "--once")
        _one_line(second, 2, "already running", f"pid {first.pid}", str(ckdir / ".ckpt-sync"))
        assert first.poll() is None
    finally:
        _stop(first)
    # The lock dies with its holder, even after kill -9: a restart is never blocked by a stale file.
    killed = _watch(ckdir, repo_url)
    wait_until(lambda: (ckdir / ".ckpt-sync" / "watch.lock").read_text().strip() == str(killed.pid), "lock taken")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    cli("watch", str(ckdir), "--to", repo_url, "--once", check=True)


# --- (7) in flight only while the owner lives; a later success clears the last error ---------------


def test_status_after_kill_9_shows_no_upload_in_flight(tmp_path, key, repo_url, repo_dir, cli):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    (ckdir / "checkpoint_run_1.pt").write_bytes(os.urandom(8 << 20))
    proc = _watch(ckdir, repo_url, "--chunk-size", "64K", "--workers", "1", put_delay=0.05)
    try:
        wait_until(lambda: len(chunk_files(repo_dir)) >= 5, "an upload in flight")
        st = json.loads(cli("status", str(ckdir), "--json", check=True).stdout)
        assert [j["name"] for j in st["in_flight"]] == ["checkpoint_run_1.pt"]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    st = json.loads(cli("status", str(ckdir), "--json", check=True).stdout)
    assert st["in_flight"] == [] and [j["name"] for j in st["interrupted"]] == ["checkpoint_run_1.pt"]
    human = cli("status", str(ckdir), check=True).stdout
    assert "uploading:" not in human and "interrupted: checkpoint_run_1.pt" in human


def test_the_last_error_clears_once_a_later_upload_succeeds(tmp_path, key, repo_url, torch_checkpoint, cli):
    from ckpt_sync.service.queue import JobQueue

    ckdir = tmp_path / "ck"
    gone = torch_checkpoint(ckdir / "checkpoint_s_1.pt", step=1)
    # A job whose file vanishes before upload (queued unheld, then deleted): the upload fails for real.
    queue = JobQueue(ckdir / ".ckpt-sync")
    queue.enqueue(gone, hold=False)
    queue.close()
    gone.unlink()
    failed = cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.2")
    assert failed.returncode == 1, failed.stderr
    st = json.loads(cli("status", str(ckdir), "--json", check=True).stdout)
    assert st["last_error"]["job"] == "checkpoint_s_1.pt"
    torch_checkpoint(ckdir / "checkpoint_s_2.pt", step=2)
    cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.2", check=True)
    st = json.loads(cli("status", str(ckdir), "--json", check=True).stdout)
    assert st["last_error"] is None
    assert "last error" not in cli("status", str(ckdir), check=True).stdout


# --- (8) a misspelt variable stops every verb; config show names the effective repository ----------


@pytest.mark.parametrize("verb", [["ls"], ["keygen"], ["config", "show"], ["status", "."]])
def test_a_misspelt_ckpt_sync_variable_stops_every_verb(tmp_path, key, cli, verb):
    proc = cli(*verb, env={"CKPT_SYNC_KEPE": "3"}, cwd=tmp_path)
    _one_line(proc, 2, "$CKPT_SYNC_KEPE", "did you mean $CKPT_SYNC_KEEP?")


def test_documented_variables_are_accepted(tmp_path, key, cli):
    env = {"CKPT_SYNC_KEEP": "3", "CKPT_SYNC_AES": "cryptography", "CKPT_SYNC_REPO": (tmp_path / "r").as_uri()}
    shown = json.loads(cli("config", "show", "--json", env=env, check=True).stdout)
    assert shown["settings"]["keep"] == {"value": 3, "source": "env CKPT_SYNC_KEEP"}


def test_config_show_json_reports_the_effective_default_repository(isolated_home, cli):
    shown = json.loads(cli("config", "show", "--json", check=True).stdout)
    expected = (isolated_home / ".local" / "share" / "ckpt-sync" / "repo").as_uri()
    assert shown["settings"]["repo"] == {"value": expected, "source": "default"}


# --- (14) push checks every path first ----------------------------------------------------------------


def test_push_of_several_paths_with_one_missing_commits_nothing(tmp_path, key, repo_url, repo_dir, torch_checkpoint,
                                                                 cli):
    a = torch_checkpoint(tmp_path / "a.pt")
    _one_line(cli("push", str(a), str(tmp_path / "b.pt"), "--to", repo_url), 2, "b.pt does not exist",
              "nothing was pushed")
    assert not repo_dir.exists() or manifest_ids(repo_dir) == []


# --- (9) pull into a file or an unwritable folder ----------------------------------------------------


def _pushed(tmp_path, repo_url, torch_checkpoint, cli) -> Path:
    ckpt = torch_checkpoint(tmp_path / "src" / "checkpoint_s_5.pt", step=5)
    cli("push", str(ckpt), "--to", repo_url, check=True)
    return ckpt


def test_pull_to_a_file_names_the_users_path(tmp_path, key, repo_url, torch_checkpoint, cli):
    _pushed(tmp_path, repo_url, torch_checkpoint, cli)
    target = tmp_path / "a-file"
    target.write_text("x")
    line = _one_line(cli("pull", "--latest", "--from", repo_url, "--to", str(target)), 2, str(target), "is a file")
    assert ".part" not in line and target.read_text() == "x"
    under = target / "sub"
    _one_line(cli("pull", "--latest", "--from", repo_url, "--to", str(under)), 2, str(under))


def test_pull_to_an_unwritable_folder_names_the_users_path(tmp_path, key, repo_url, torch_checkpoint, cli):
    _pushed(tmp_path, repo_url, torch_checkpoint, cli)
    if os.geteuid() == 0:  # root writes through permission bits: use a folder the kernel refuses
        targets = [Path("/sys"), Path("/sys/ckpt-sync-test")]
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        targets = [locked, locked / "sub"]
    for target in targets:
        line = _one_line(cli("pull", "--latest", "--from", repo_url, "--to", str(target)), 2, str(target))
        assert ".part" not in line and "ckpt-sync-" not in line.replace(str(target), "")


# --- (10) no key at all ---------------------------------------------------------------------------------


def test_no_key_says_where_it_looked_and_that_a_new_key_reads_nothing_old(tmp_path, repo_url, isolated_home, cli):
    for verb in (["ls", "--from", repo_url], ["pull", "--latest", "--from", repo_url, "--to", str(tmp_path / "o")]):
        line = _one_line(cli(*verb), 2, "no encryption key", "$BACKUP_ENCRYPTION_KEY", "--key-file")
        assert str(isolated_home / ".config" / "ckpt-sync" / "key") in line
        assert "suits only a new repository" in line and "cannot read existing backups" in line


# --- (14) a damaged checkpoint pulled by name -------------------------------------------------------------


def test_pull_of_a_damaged_checkpoint_by_name_names_it_and_not_the_key(tmp_path, key, repo_url, repo_dir,
                                                                     torch_checkpoint, cli):
    ckpt = _pushed(tmp_path, repo_url, torch_checkpoint, cli)
    victim = chunk_files(repo_dir)[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    line = _one_line(cli("pull", ckpt.name, "--from", repo_url, "--to", str(tmp_path / "o")), 1, ckpt.name,
                     "is damaged", "altered or damaged (the key is right)")
    assert "wrong key" not in line


# --- (12) prune --dry-run says what the grace period keeps ----------------------------------------------


def test_prune_dry_run_reports_what_the_grace_period_keeps(tmp_path, key, repo_url, torch_checkpoint, cli):
    for step in (1, 2, 3):
        cli("push", str(torch_checkpoint(tmp_path / f"checkpoint_s_{step}.pt", seed=step, step=step)),
            "--to", repo_url, check=True)
    dry = cli("prune", "--keep", "1", "--dry-run", "--from", repo_url, check=True).stdout
    assert "would remove 2" in dry
    assert "would remove 0 unreferenced chunk(s)" in dry  # all younger than the default grace (1 h)
    line = next(x for x in dry.splitlines() if x.startswith("the grace period"))
    assert "(3600s) keeps" in line and "MiB" in line and "removable from " in line
    report = json.loads(cli("prune", "--keep", "1", "--dry-run", "--json", "--from", repo_url, check=True).stdout)
    assert report["chunks_in_grace"] > 0 and report["bytes_in_grace"] > 1 << 20
    assert report["grace_all_removable"] >= report["grace_first_removable"]
    # With no grace the same dry run counts those chunks as removable, and nothing is kept back.
    now = json.loads(cli("prune", "--keep", "1", "--dry-run", "--grace", "0", "--json", "--from", repo_url,
                         check=True).stdout)
    assert now["chunks_removed"] == report["chunks_in_grace"] and now["chunks_in_grace"] == 0


# --- (11) foreign library warnings stay off the console ---------------------------------------------------

WARN_SCRIPT = """
import logging, sys, warnings
from ckpt_sync import logs
logs.configure(logging.DEBUG if sys.argv[1] == "debug" else logging.INFO)
warnings.warn("Callback with id 'x' does not exist for watch", RuntimeWarning)  # what watchdog says
logging.getLogger("ckpt_sync.watch").info("own line")
"""


def test_library_warnings_are_hidden_unless_debug():
    import subprocess
    import sys

    plain = subprocess.run([sys.executable, "-c", WARN_SCRIPT, "info"], capture_output=True, text=True)
    assert "own line" in plain.stderr and "RuntimeWarning" not in plain.stderr and "Callback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-c", WARN_SCRIPT, "debug"], capture_output=True, text=True)
    assert "RuntimeWarning" in debug.stderr


# --- (15) restored checkpoints keep their mtime, and the docs say so in both places ----------------------


def test_a_pulled_file_and_folder_keep_their_mtimes_so_watch_commits_nothing(tmp_path, key, repo_url, repo_dir,
                                                                            torch_checkpoint, cli):
    src = tmp_path / "src"
    single = torch_checkpoint(src / "checkpoint_s_7.pt", step=7)
    folder = src / "step_8"
    torch_checkpoint(folder / "model.pt", step=8)
    (folder / ".metadata").write_text("{}")
    old = 1_700_000_000_000_000_000
    for p in (single, folder / "model.pt", folder / ".metadata", folder):
        os.utime(p, ns=(old, old))
    cli("push", str(single), str(folder), "--to", repo_url, check=True)
    before = manifest_ids(repo_dir)
    restored = tmp_path / "restored"
    for name in (single.name, folder.name):
        cli("pull", name, "--from", repo_url, "--to", str(restored), check=True)
    assert (restored / single.name).stat().st_mtime_ns == old
    assert (restored / "step_8" / "model.pt").stat().st_mtime_ns == old
    cli("watch", str(restored), "--to", repo_url, "--once", "--settle", "0.2", check=True)
    assert manifest_ids(repo_dir) == before  # recognised: nothing committed again


def test_readme_and_deploy_readme_agree_about_restored_mtimes():
    for doc in ("README.md", "deploy/README.md"):
        text = " ".join((Path(__file__).resolve().parents[2] / doc).read_text().split())
        assert "keeps its original modification time" in text or "original modification times" in text, doc
        assert "a restored file gets a new modification time" not in text, doc
        assert "does not commit it again" in text or "does not upload it again" in text, doc
