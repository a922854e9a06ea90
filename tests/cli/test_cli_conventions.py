"""The command line behaves like the tools people know (issue 26, item 5): a closed pipe ends quietly,
the options every verb takes may come before the verb, ``--json`` verbs print their errors as JSON
too, and sizes and rates take SI (MB) and IEC (MiB) units as written. Real processes throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_torch_checkpoint
from helpers import one_error_line as _one_line


def _run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """``ckpt-sync ARGS`` writing into a real pipe whose reader has already gone (``| head -1`` that
    has read its line): every write it makes meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "ckpt_sync.cli", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    finally:
        os.close(write_end)


@pytest.fixture
def watched(tmp_path: Path, key: str, repo_url: str, cli) -> Path:
    """A folder a ``watch --once`` committed one checkpoint from, to ``repo_url``."""
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_p_100.pt", step=100)
    cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", check=True)
    return ckdir


PRINTING_VERBS = [
    ["config", "show"],
    ["config", "show", "--json"],
    ["ls", "--repo", "{repo}"],
    ["ls", "--repo", "{repo}", "--json"],
    ["ls", "latest", "--repo", "{repo}"],
    ["cat", "latest", "checkpoint_p_100.pt", "--repo", "{repo}"],
    ["stats", "--repo", "{repo}"],
    ["verify", "--repo", "{repo}"],
    ["status", "{dir}"],
    ["queue", "{dir}"],
    ["key", "list", "--repo", "{repo}"],
    ["keygen"],
]


@pytest.mark.parametrize("verb", PRINTING_VERBS, ids=lambda v: " ".join(a for a in v if "{" not in a))
def test_a_closed_pipe_ends_quietly(verb: list[str], watched: Path, repo_url: str) -> None:
    args = [a.format(repo=repo_url, dir=watched) for a in verb]
    proc = _run_into_closed_pipe(*args)
    assert proc.returncode in (0, 141), (proc.returncode, proc.stderr)
    assert proc.stderr == "", proc.stderr  # no "Broken pipe" line, no "Exception ignored" from the interpreter


def test_config_show_piped_to_head_prints_its_first_line_and_ends_quietly(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$0" -m ckpt_sync.cli config show | head -1', sys.executable],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 141), (proc.returncode, proc.stderr)
    assert proc.stdout.startswith("config file:") and proc.stderr == "", (proc.stdout, proc.stderr)


# --- the options every verb takes, before the verb as after it --------------------------------------


def test_common_options_before_the_verb_mean_what_they_mean_after_it(tmp_path: Path, repo_url: str, cli) -> None:
    key_file = tmp_path / "run.key"
    cli("keygen", "--out", str(key_file), check=True)
    ckpt = make_torch_checkpoint(tmp_path / "checkpoint_b_7.pt", step=7)
    cli("--key-file", str(key_file), "--repo", repo_url, "--quiet", "push", str(ckpt), check=True)
    after = json.loads(cli("ls", "--key-file", str(key_file), "--repo", repo_url, "--json", check=True).stdout)
    before = json.loads(cli("--key-file", str(key_file), f"--repo={repo_url}", "--json", "ls", check=True).stdout)
    assert before == after and [m["name"] for m in before] == ["checkpoint_b_7.pt"]
    shown = json.loads(cli("--json", "--workers", "3", "config", "show", check=True).stdout)
    assert shown["settings"]["workers"] == {"value": 3, "source": "flag --workers"}
    # Only the options every verb takes move; anything else before the verb is still a usage error.
    assert cli("--bogus", "ls").returncode == 2


# --- --json verbs print their errors as one JSON object on stdout, too -------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["pull", "no-such-checkpoint", "--to", "{tmp}/out", "--json"], 1),  # an operation failed
        (["ls", "--json", "--step", "seven"], 2),  # argparse's usage error
        (["ls", "--json", "--repo", "s3//bucket/x"], 2),  # a mistyped URL
    ],
)
def test_json_verbs_print_their_error_as_one_json_object_too(
    args: list[str], code: int, tmp_path: Path, key: str, repo_url: str, cli
) -> None:
    make = make_torch_checkpoint(tmp_path / "checkpoint_j_1.pt")
    cli("push", str(make), "--to", repo_url, check=True)
    args = [a.format(tmp=tmp_path) for a in args]
    proc = cli(*args, env={"CKPT_SYNC_REPO": repo_url})
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    error = json.loads(proc.stdout)  # exactly one JSON document: nothing else on stdout
    line = proc.stderr.strip().splitlines()[-1]
    assert error == {"error": line.split(" error: ", 1)[1], "exit_code": code}  # argparse names the verb


def test_a_bad_setting_is_a_json_error_for_a_json_verb(tmp_path: Path, key: str, cli) -> None:
    proc = cli("config", "show", "--json", env={"CKPT_SYNC_KEEP": "five"})
    line = _one_line(proc, 2, "CKPT_SYNC_KEEP")
    assert json.loads(proc.stdout) == {"error": line.removeprefix("ckpt-sync: error: "), "exit_code": 2}


# --- sizes and rates: SI and IEC units as written ----------------------------------------------------


@pytest.mark.parametrize(
    ("written", "per_second", "shown"),
    [
        ("50MB", 50_000_000, "50MB/s"),
        ("50MiB", 50 << 20, "50MiB/s"),
        ("50M", 50 << 20, "50M/s"),  # a bare letter stays binary, as it always was
        ("1.5GB/s", 1_500_000_000, "1.5GB/s"),
        ("512kB", 512_000, "512kB/s"),
    ],
)
def test_bwlimit_takes_si_and_iec_units_as_written_and_config_show_shows_them_so(
    written: str, per_second: int, shown: str, tmp_path: Path, cli
) -> None:
    (tmp_path / "ckpt-sync.toml").write_text(f'bwlimit = "{written}"\n')
    data = json.loads(cli("config", "show", "--json", cwd=tmp_path, check=True).stdout)
    assert data["settings"]["bwlimit"]["value"] == per_second
    table = cli("config", "show", cwd=tmp_path, check=True).stdout
    (row,) = [line for line in table.splitlines() if line.startswith("bwlimit")]
    assert row.split()[1] == shown, row


def test_a_chunk_size_in_kb_is_thousands_of_bytes(tmp_path: Path, key: str, repo_url: str, cli) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(10 * 102400))  # ten 100 KiB pieces, or eleven pieces of 100 kB
    si = json.loads(cli("push", str(blob), "--to", repo_url, "--chunk-size", "100kB", "--json", check=True).stdout)
    blob.write_bytes(os.urandom(10 * 102400))
    iec = json.loads(cli("push", str(blob), "--to", repo_url, "--chunk-size", "100KiB", "--json", check=True).stdout)
    assert (si[0]["stats"]["chunks"], iec[0]["stats"]["chunks"]) == (11, 10)
