"""No secret is ever printed: a key pasted where a key *file* belongs, a URL's password, a
connection string's account key. Key files and their folders stay private."""

from __future__ import annotations

import stat

from cryptography.fernet import Fernet


def _output(proc) -> str:
    return proc.stdout + proc.stderr


def test_a_key_given_where_a_key_file_is_expected_is_never_printed(tmp_path, repo_url, cli):
    key = Fernet.generate_key().decode()
    procs = [
        cli("ls", "--repo", repo_url, "--key-file", key),
        cli("push", "--repo", repo_url, "--key-file", key, str(tmp_path)),
        cli("ls", "--repo", repo_url, env={"CKPT_SYNC_KEY_FILE": key}),
        cli("config", "show", env={"CKPT_SYNC_KEY_FILE": key}),
        cli("config", "show", "--json", env={"CKPT_SYNC_KEY_FILE": key}),
        cli("ls", "--repo", repo_url, "--debug", "--key-file", key),
    ]
    for p in procs:
        assert key not in _output(p) and key[:40] not in _output(p), _output(p)
    assert procs[0].returncode == 2 and "<redacted>" in procs[0].stderr
    assert "<redacted>" in procs[3].stdout


def test_url_credentials_are_never_printed(tmp_path, key, cli):
    secret = "s3cretPassw0rd"
    procs = [
        # an endpoint with a password, where nothing listens: every storage error line names the endpoint
        cli(
            "ls", "--repo", "s3://bucket/run", "--endpoint-url", f"http://admin:{secret}@127.0.0.1:9",
            "--retry-attempts", "1", env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
        ),
        cli("ls", "--repo", f"s3://admin:{secret}@bucket/run/../x"),  # a malformed URL with a password
        cli("ls", "--repo", f"gs://admin:{secret}@"),
        cli("config", "show", "--repo", f"s3://admin:{secret}@bucket/run"),
        cli(
            "ls", "--repo", "az://container/run",
            env={"AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey={secret};"
                 "BlobEndpoint=http://127.0.0.1:9/a;"},
        ),
    ]
    for p in procs:
        assert p.returncode != 0 or "show" in p.args, _output(p)
        assert secret not in _output(p), _output(p)
        assert "unexpected" not in p.stderr, p.stderr


def test_a_key_file_others_can_read_is_warned_about(tmp_path, repo_url, cli):
    key_file = tmp_path / "key"
    key_file.write_text(Fernet.generate_key().decode() + "\n")
    key_file.chmod(0o644)
    src = tmp_path / "a.pt"
    src.write_bytes(b"x" * 1000)
    loose = cli("push", "--repo", repo_url, "--key-file", str(key_file), str(src), check=True)
    assert "readable by group or others" in loose.stderr and "chmod 600" in loose.stderr
    key_file.chmod(0o600)
    tight = cli("ls", "--repo", repo_url, "--key-file", str(key_file), check=True)
    assert "readable by group or others" not in tight.stderr


def test_keygen_out_creates_missing_parent_folders_private(tmp_path, cli):
    out = tmp_path / "new" / "deeper" / "key"
    cli("keygen", "--out", str(out), check=True)
    for folder in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, oct(folder.stat().st_mode)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
