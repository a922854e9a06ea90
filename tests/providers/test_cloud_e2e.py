"""The real ``ckpt-sync`` command against each cloud store's local server, configured only through the
standard environment variables a user would set (AWS_*, AZURE_STORAGE_CONNECTION_STRING,
STORAGE_EMULATOR_HOST), pushing real torch checkpoints.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Cloud, ServerPool

import servers as harness

Cli = Callable[..., subprocess.CompletedProcess[str]]


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("ckpt-sync: error:")]


def retry_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "retrying" in line]


def test_push_ls_pull_then_damage_is_caught_and_pull_falls_back(
    cloud: Cloud, cli: Cli, key: str, tmp_path: Path, torch_checkpoint: Callable[..., Path]
) -> None:
    bucket = cloud.new_bucket()
    url = cloud.url(bucket, "runs/run42")
    older = torch_checkpoint(tmp_path / "ckpt" / "checkpoint_s1_100.pt", seed=1, step=100)
    newer = torch_checkpoint(tmp_path / "ckpt" / "checkpoint_s1_200.pt", seed=2, step=200)

    cli("push", str(older), "--to", url, "--chunk-size", "256K", check=True)
    chunks_of_older = set(cloud.keys(bucket, "runs/run42/chunks/"))
    cli("push", str(newer), "--to", url, "--chunk-size", "256K", check=True)
    only_newer = sorted(set(cloud.keys(bucket, "runs/run42/chunks/")) - chunks_of_older)
    assert len(chunks_of_older) > 3 and len(only_newer) > 3  # several chunks each: a multi-chunk path
    assert len(cloud.keys(bucket, "runs/run42/manifests/")) == 2

    listed = json.loads(cli("ls", "--from", url, "--json", check=True).stdout)
    assert [m["name"] for m in listed] == [newer.name, older.name]
    assert [m["step"] for m in listed] == [200, 100]

    fresh = tmp_path / "fresh-host"
    cli("pull", "--latest", "--from", url, "--to", str(fresh), check=True)
    assert (fresh / newer.name).read_bytes() == newer.read_bytes()
    assert cli("verify", "--read-data", "--from", url, check=True).returncode == 0

    # Flip one bit of a chunk only the newer checkpoint uses, straight through the SDK.
    victim = only_newer[len(only_newer) // 2]
    raw = bytearray(cloud.read(bucket, victim))
    raw[len(raw) // 2] ^= 0x01
    cloud.write(bucket, victim, bytes(raw))

    verify = cli("verify", "--read-data", "--from", url)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"DAMAGED {newer.name}" in verify.stdout and f"DAMAGED {older.name}" not in verify.stdout

    fallback = tmp_path / "second-host"
    pulled = cli("pull", "--latest", "--from", url, "--to", str(fallback))
    assert pulled.returncode == 0, pulled.stderr
    assert "falling back" in pulled.stderr
    assert (fallback / older.name).read_bytes() == older.read_bytes()
    assert not (fallback / newer.name).exists()
    assert [p.name for p in fallback.iterdir()] == [older.name]  # no partial file left behind


def test_a_missing_bucket_is_one_line_and_exit_2_without_retries(
    cloud: Cloud, cli: Cli, key: str, tmp_path: Path
) -> None:
    url = cloud.url("no-such-bucket-anywhere", "repo")
    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(b"x" * 1000)
    for args in (["push", str(ckpt), "--to", url], ["ls", "--from", url], ["pull", "--latest", "--from", url]):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert error_lines(proc) == proc.stderr.strip().splitlines()  # nothing but the one error line
        (line,) = error_lines(proc)
        assert url in line and "does not exist" in line and "create it or fix the repository URL" in line


def test_rejected_credentials_are_one_line_and_exit_2_without_leaking_them(
    cloud: Cloud, cli: Cli, key: str, server_pool: ServerPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Zm9yZ2VkLXNlY3JldC1kby1ub3QtcHJpbnQtbWUtYW55d2hlcmUtMDEyMzQ1Njc4OQ=="
    if cloud.kind == "s3":
        # moto checks signatures only when told to: a second server that authenticates every request
        auth = server_pool.get("s3-auth")
        env = {**auth.env, "AWS_ACCESS_KEY_ID": "AKIAFORGEDFORGED0000", "AWS_SECRET_ACCESS_KEY": secret}
        expect = "credentials were rejected"
    elif cloud.kind == "azure":
        env = {"AZURE_STORAGE_CONNECTION_STRING": harness.azurite_connection_string(cloud.server.port, key=secret)}
        expect = "access denied"
    else:
        # No emulator: real ADC, pointed at a credentials file that is not one.
        monkeypatch.delenv("STORAGE_EMULATOR_HOST")
        bogus = tmp_path / "adc.json"
        bogus.write_text('{"type": "service_account", "private_key": "' + secret + '"}')
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(bogus)}
        expect = "no usable Google credentials"
    url = cloud.url(f"bucket-{cloud.kind}", "repo")
    proc = cli("ls", "--from", url, env=env)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("ckpt-sync: error:") and expect in line and url in line
    assert secret not in proc.stderr and secret[:20] not in proc.stdout


def test_an_unreachable_endpoint_gives_up_within_the_retry_budget_with_exit_1(cloud: Cloud, cli: Cli, key: str) -> None:
    dead = f"http://127.0.0.1:{harness.free_port()}"  # nothing listens: every connection is refused
    env = {
        "s3": {"AWS_ENDPOINT_URL": dead},
        "azure": {
            "AZURE_STORAGE_CONNECTION_STRING": harness.azurite_connection_string(0).replace("http://127.0.0.1:0", dead)
        },
        "gcs": {"STORAGE_EMULATOR_HOST": dead},
    }[cloud.kind]
    url = cloud.url("bucket", "repo")
    proc = cli("ls", "--from", url, "--retry-attempts", "3", "--retry-time", "60", env=env)
    assert proc.returncode == 1, proc.stderr
    (line,) = error_lines(proc)
    assert proc.stderr.strip().splitlines()[-1] == line  # the error is the last word, on one line
    assert "gave up" in line and "after 3 attempts" in line and url in line
    # Attempts 1 and 2 were retried and the 3rd ended it: the first retry is logged, the second is held
    # back (one line a minute per operation, so an outage does not flood the log).
    assert len(retry_lines(proc)) == 1


@pytest.mark.s3
def test_the_retry_time_budget_ends_retries_before_the_attempts_run_out(cloud_factory: Any, cli: Cli, key: str) -> None:
    cloud = cloud_factory("s3")
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{harness.free_port()}"}
    proc = cli("ls", "--from", cloud.url("bucket"), "--retry-attempts", "1000", "--retry-time", "2", env=env)
    assert proc.returncode == 1, proc.stderr
    (line,) = error_lines(proc)
    assert "gave up" in line
    assert 1 <= len(retry_lines(proc)) < 999  # stopped by the 2 s budget, long before 1000 attempts
