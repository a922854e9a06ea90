"""The config file: precedence (flags > env > file > defaults), validation errors, redaction of keys."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_sync.errors import ConfigError
from ckpt_sync.service import settings as config

# --- precedence, in-process (every setting) -------------------------------------------------------

FILE_VALUES = {
    "repo": ("s3://file-bucket/run", "s3://file-bucket/run"),
    "watch_dir": ("/srv/ck", "/srv/ck"),
    "state_dir": ("/srv/state", "/srv/state"),
    "keep": (3, 3),
    "keep_scope": ("repository", "repository"),
    "patterns": (["*.pt", "*.safetensors"], ("*.pt", "*.safetensors")),
    "settle": (1.5, 1.5),
    "rescan": (10, 10.0),
    "grace": (60, 60.0),
    "workers": (2, 2),
    "chunk_size": ("4M", "4M"),
    "retry_attempts": (4, 4),
    "retry_time": (30, 30.0),
    "bwlimit": ("50M", 50 << 20),
    "endpoint_url": ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    "log_format": ("json", "json"),
    "metrics_addr": ("127.0.0.1:9109", "127.0.0.1:9109"),
}
ENV_VALUES = {
    "repo": ("gs://env-bucket/run", "gs://env-bucket/run"),
    "watch_dir": ("/env/ck", "/env/ck"),
    "state_dir": ("/env/state", "/env/state"),
    "keep": ("7", 7),
    "keep_scope": ("run", "run"),
    "patterns": ("*.bin, *.ckpt", ("*.bin", "*.ckpt")),
    "settle": ("2", 2.0),
    "rescan": ("11", 11.0),
    "grace": ("61", 61.0),
    "workers": ("3", 3),
    "chunk_size": ("2M", "2M"),
    "retry_attempts": ("5", 5),
    "retry_time": ("31", 31.0),
    "bwlimit": ("10M", 10 << 20),
    "endpoint_url": ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
    "log_format": ("text", "text"),
    "metrics_addr": ("0.0.0.0:9110", "0.0.0.0:9110"),
}
FLAG_VALUES = {
    "repo": ("az://flag/run", "az://flag/run"),
    "watch_dir": ("/flag/ck", "/flag/ck"),
    "state_dir": ("/flag/state", "/flag/state"),
    "keep": (9, 9),
    "keep_scope": ("repository", "repository"),
    "patterns": (["*.pth"], ("*.pth",)),
    "settle": (0.5, 0.5),
    "rescan": (12.0, 12.0),
    "grace": (62.0, 62.0),
    "workers": (4, 4),
    "chunk_size": ("1M", "1M"),
    "retry_attempts": (6, 6),
    "retry_time": (32.0, 32.0),
    "bwlimit": ("1M", 1 << 20),
    "endpoint_url": ("http://127.0.0.1:5002", "http://127.0.0.1:5002"),
    "log_format": ("json", "json"),
    "metrics_addr": ("127.0.0.1:0", "127.0.0.1:0"),
}
PRECEDENCE_CASES = [s.name for s in config.SETTINGS if s.name != "key_file"]


def _toml(values: dict[str, object]) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def test_the_tables_above_cover_every_setting():
    assert set(FILE_VALUES) == set(ENV_VALUES) == set(FLAG_VALUES) == set(PRECEDENCE_CASES)


@pytest.mark.parametrize("name", PRECEDENCE_CASES)
def test_flag_beats_env_beats_file_beats_default(name, tmp_path, monkeypatch):
    setting = config.BY_NAME[name]
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "settings.toml"
    cfg.write_text(_toml({name: FILE_VALUES[name][0]}))
    env = {setting.env: ENV_VALUES[name][0]}
    flags = {name: FLAG_VALUES[name][0]}

    def effective(flags, env, path):
        return config.resolve(flags, env, str(path) if path else None).values[name]

    assert effective({}, {}, None) == config.Value(setting.default, "default")
    assert effective({}, {}, cfg) == config.Value(FILE_VALUES[name][1], f"file {cfg}")
    assert effective({}, env, cfg) == config.Value(ENV_VALUES[name][1], f"env {setting.env}")
    assert effective(flags, env, cfg) == config.Value(FLAG_VALUES[name][1], f"flag {setting.flag}")


def test_file_search_order_is_flag_then_working_folder_then_user_config(tmp_path, monkeypatch, isolated_home):
    monkeypatch.chdir(tmp_path)
    user = isolated_home / ".config" / "ckpt-sync" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("keep = 1\n")
    assert config.resolve({}, {}).values["keep"] == config.Value(1, f"file {user}")
    (tmp_path / "ckpt-sync.toml").write_text("keep = 2\n")
    local = Path.cwd() / "ckpt-sync.toml"
    assert config.resolve({}, {}).values["keep"] == config.Value(2, f"file {local}")
    explicit = tmp_path / "other.toml"
    explicit.write_text("keep = 3\n")
    assert config.resolve({}, {"CKPT_SYNC_CONFIG": str(explicit)})["keep"] == 3
    assert config.resolve({}, {}, str(explicit))["keep"] == 3


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    cfg = tmp_path / "etc" / "run42.toml"
    cfg.parent.mkdir()
    cfg.write_text('key_file = "run42.key"\nrepo = "repo"\nwatch_dir = "../ck"\n')
    eff = config.resolve({}, {}, str(cfg))
    assert eff["key_file"] == str(tmp_path / "etc" / "run42.key")
    assert eff["repo"] == str(tmp_path / "etc" / "repo")
    assert eff["watch_dir"] == str(tmp_path / "ck")


def test_key_variable_beats_a_key_file_from_the_config_file_but_not_from_a_flag(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'key_file = "{tmp_path / "file.key"}"\n')
    env = {"BACKUP_ENCRYPTION_KEY": "x" * 44}
    assert config.resolve({}, {}, str(cfg)).key == config.Value(str(tmp_path / "file.key"), f"file {cfg}")
    assert config.resolve({}, env, str(cfg)).key == config.Value("<redacted>", "env BACKUP_ENCRYPTION_KEY")
    flagged = config.resolve({"key_file": "/k/flag.key"}, env, str(cfg)).key
    assert flagged == config.Value("/k/flag.key", "flag --key-file")


# --- precedence through the real command ----------------------------------------------------------


def test_config_show_reports_each_source_from_a_real_process(tmp_path, cli, key):
    cfg = tmp_path / "ckpt-sync.toml"
    cfg.write_text('repo = "s3://from-file/run"\nworkers = 2\nretry_attempts = 3\nbwlimit = "5M"\nkeep = 4\n')
    proc = cli(
        "config",
        "show",
        "--json",
        "--workers",
        "6",
        check=True,
        cwd=tmp_path,
        env={"CKPT_SYNC_RETRY_ATTEMPTS": "5"},
    )
    s = json.loads(proc.stdout)["settings"]
    assert json.loads(proc.stdout)["config_file"] == str(cfg)
    assert s["workers"] == {"value": 6, "source": "flag --workers"}
    assert s["retry_attempts"] == {"value": 5, "source": "env CKPT_SYNC_RETRY_ATTEMPTS"}
    assert s["bwlimit"] == {"value": 5 << 20, "source": f"file {cfg}"}
    assert s["repo"] == {"value": "s3://from-file/run", "source": f"file {cfg}"}
    assert s["keep"] == {"value": 4, "source": f"file {cfg}"}
    assert s["retry_time"] == {"value": 120.0, "source": "default"}


def test_watch_honours_the_config_file_for_folder_repository_and_patterns(tmp_path, cli, key):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.weights").write_bytes(b"w" * 1000)
    (ck / "ignored.pt").write_bytes(b"p" * 1000)  # not matched: the file's patterns replace the defaults
    cfg = tmp_path / "run.toml"
    cfg.write_text('watch_dir = "ck"\nrepo = "repo"\npatterns = ["*.weights"]\nsettle = 0.1\nkeep = 0\n')
    cli("watch", "--config", str(cfg), "--once", check=True)
    listed = cli("ls", "--config", str(cfg), "--json", check=True)
    assert [m["name"] for m in json.loads(listed.stdout)] == ["model.weights"]


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keepp = 3\n", "unknown setting 'keepp'"),
        ("keep = -1\n", "keep: expected a whole number >= 0"),
        ('keep = "five"\n', "keep: expected a whole number >= 0"),
        ("keep = true\n", "keep: expected a whole number"),
        ("workers = 0\n", "workers: expected a whole number >= 1"),
        ('settle = "soon"\n', "settle: expected a number of seconds"),
        ("rescan = 0\n", "rescan: expected a number of seconds > 0"),
        ('bwlimit = "fast"\n', "bwlimit: expected bytes per second"),
        ('chunk_size = "big"\n', "chunk_size: expected a size"),
        ('log_format = "xml"\n', "log_format: expected one of text, json"),
        ('metrics_addr = "9109"\n', "metrics_addr: expected HOST:PORT"),
        ('metrics_addr = "localhost:99999"\n', "metrics_addr: expected HOST:PORT"),
        ("patterns = []\n", "patterns: expected at least one glob pattern"),
        ("patterns = [1]\n", "patterns: expected a list of glob patterns"),
        ('repo = ""\n', "repo: expected a non-empty string"),
        ("pattern = '*.pt'\n", "unknown setting 'pattern' (the setting is called patterns"),
        ("keep = \n", "not valid TOML"),
    ],
)
def test_bad_file_values_name_the_key_and_the_file(text, expected, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.resolve({}, {}, str(cfg))
    assert expected in str(err.value)
    assert str(cfg) in str(err.value)


def test_bad_env_and_flag_values_name_the_variable_or_the_flag():
    with pytest.raises(ConfigError, match=r"^\$CKPT_SYNC_KEEP: expected a whole number >= 0, got 'many'$"):
        config.resolve({}, {"CKPT_SYNC_KEEP": "many"})
    with pytest.raises(ConfigError, match=r"^--bwlimit: expected bytes per second"):
        config.resolve({"bwlimit": "lots"}, {})


def test_a_bad_config_file_is_one_line_and_exit_2_for_every_verb(tmp_path, cli, key):
    cfg = tmp_path / "ckpt-sync.toml"
    cfg.write_text('keep = 5\nlog_fromat = "json"\n')
    for verb in (["ls"], ["push", str(cfg)], ["pull", "--latest"], ["verify"], ["prune"], ["watch", "."]):
        proc = cli(*verb, cwd=tmp_path)
        assert proc.returncode == 2, (verb, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert f"ckpt-sync: error: {cfg}: unknown setting 'log_fromat'" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_missing_explicit_config_file_is_an_error(tmp_path, cli, key):
    proc = cli("ls", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"ckpt-sync: error: config file {tmp_path / 'nope.toml'} (from --config) does not exist"
    )


def test_bwlimit_zero_means_no_limit():
    assert config.resolve({"bwlimit": "0"}, {})["bwlimit"] is None
    assert config.resolve({}, {"CKPT_SYNC_BWLIMIT": "off"})["bwlimit"] is None


# --- redaction ------------------------------------------------------------------------------------


def test_config_show_never_prints_the_key_from_the_environment(tmp_path, cli, key):
    for extra in ([], ["--json"]):
        proc = cli("config", "show", *extra, check=True, cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert key not in out
        assert key[:12] not in out and key[-12:] not in out
        assert "<redacted>" in out
        assert "env BACKUP_ENCRYPTION_KEY" in out


def test_config_show_names_the_key_file_but_never_reads_it_out(tmp_path, cli):
    from cryptography.fernet import Fernet

    secret = Fernet.generate_key().decode()
    keyfile = tmp_path / "run.key"
    keyfile.write_text(secret + "\n")
    (tmp_path / "ckpt-sync.toml").write_text('key_file = "run.key"\n')
    proc = cli("config", "show", "--json", check=True, cwd=tmp_path)
    assert secret not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["settings"]["key"]["value"] == str(keyfile)


def test_key_material_in_a_config_file_is_refused_without_echoing_it(tmp_path, cli):
    from cryptography.fernet import Fernet

    secret = Fernet.generate_key().decode()
    (tmp_path / "ckpt-sync.toml").write_text(f'key = "{secret}"\n')
    proc = cli("config", "show", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown setting 'key' (key material does not belong in a config file" in proc.stderr
    assert secret not in proc.stdout + proc.stderr


def test_passwords_in_urls_are_redacted(tmp_path, cli, key):
    (tmp_path / "ckpt-sync.toml").write_text('endpoint_url = "https://user:hunter2@minio.local:9000"\n')
    for extra in ([], ["--json"]):
        proc = cli("config", "show", *extra, check=True, cwd=tmp_path)
        assert "hunter2" not in proc.stdout
        assert "<redacted>@minio.local:9000" in proc.stdout


# --- the library resolves as the command line does --------------------------------------------------

LIBRARY_JOB = """
import json, sys
import ckpt_sync
pushed = ckpt_sync.push(sys.argv[1])
chunks = len(ckpt_sync.checkpoint("latest").files[0].chunks)
restored = ckpt_sync.pull(to="restored")
print(json.dumps({"pushed": pushed, "chunks": chunks, "restored": restored.checkpoint_id}))
"""


def test_library_calls_reach_the_store_the_config_file_names(tmp_path, cli, monkeypatch):
    """ckpt_sync.push/pull with no arguments use the working folder's ckpt-sync.toml as `ckpt-sync`
    does: its repository, its key file and its chunk size."""
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    from cryptography.fernet import Fernet

    (tmp_path / "run.key").write_text(Fernet.generate_key().decode() + "\n")
    (tmp_path / "run.key").chmod(0o600)
    (tmp_path / "ckpt-sync.toml").write_text('repo = "store"\nkey_file = "run.key"\nchunk_size = "64K"\n')
    (tmp_path / "ck.bin").write_bytes(random.Random(3).randbytes(512 << 10))
    job = subprocess.run(
        [sys.executable, "-c", LIBRARY_JOB, "ck.bin"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert job.returncode == 0, job.stderr
    done = json.loads(job.stdout)
    assert done["restored"] == done["pushed"]
    assert done["chunks"] >= 4  # 64K chunks from the file, not one default 8M chunk
    assert (tmp_path / "restored" / "ck.bin").read_bytes() == (tmp_path / "ck.bin").read_bytes()
    assert (tmp_path / "store" / "config").is_file()  # the file's repository, relative to the file
    listed = json.loads(cli("ls", "--json", check=True, cwd=tmp_path).stdout)
    assert [m["id"] for m in listed] == [done["pushed"]]


def test_argument_beats_env_beats_file_for_library_calls(tmp_path, monkeypatch, key):
    from ckpt_sync.service.sync_client import SyncClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt-sync.toml").write_text('repo = "from-file"\nretry_attempts = 3\nbwlimit = "5M"\n')
    file_store = config.resolve_store()
    assert file_store.url == str(tmp_path / "from-file")
    assert (file_store.retry.attempts, file_store.bwlimit) == (3, 5 << 20)
    monkeypatch.setenv("CKPT_SYNC_REPO", str(tmp_path / "from-env"))
    monkeypatch.setenv("CKPT_SYNC_RETRY_ATTEMPTS", "4")
    env_store = config.resolve_store()
    assert (env_store.url, env_store.retry.attempts, env_store.bwlimit) == (str(tmp_path / "from-env"), 4, 5 << 20)
    assert config.resolve_store(str(tmp_path / "from-arg")).url == str(tmp_path / "from-arg")
    client = SyncClient(state_dir=tmp_path / "state", worker=False)
    try:
        assert client.url == str(tmp_path / "from-env")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("toml", "env"),
    [('keep = 5\nlog_fromat = "json"\n', {}), ("workers = 0\n", {}), ("", {"CKPT_SYNC_KEPE": "3"})],
    ids=["unknown-setting", "bad-value", "unknown-variable"],
)
def test_library_and_command_line_stop_with_the_same_line(toml, env, tmp_path, cli, key, monkeypatch):
    import ckpt_sync
    from ckpt_sync.service.sync_client import SyncClient

    (tmp_path / "ckpt-sync.toml").write_text(toml)
    (tmp_path / "ck.bin").write_bytes(b"x" * 1000)
    proc = cli("push", "ck.bin", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for call in (
        lambda: ckpt_sync.push("ck.bin"),
        lambda: ckpt_sync.pull(to="out"),
        lambda: ckpt_sync.open(),
        lambda: SyncClient(state_dir=tmp_path / "state", worker=False),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert proc.stderr == f"ckpt-sync: error: {err.value}\n"
    assert not (tmp_path / "out").exists()


def test_a_config_files_keep_never_deletes_through_a_library_client(tmp_path, monkeypatch, key):
    """What decides deletion is an argument in the library: a keep = 1 lying in the working folder
    does not make a SyncClient prune (``ckpt-sync watch`` in that folder does use it)."""
    from ckpt_sync.service.sync_client import SyncClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt-sync.toml").write_text('repo = "store"\nkeep = 1\n')
    client = SyncClient(state_dir=tmp_path / "state")
    try:
        for step in range(3):
            path = tmp_path / f"checkpoint_s_{step}.pt"
            path.write_bytes(random.Random(step).randbytes(4096))
            client.enqueue(path)
        client.wait(timeout=120)
    finally:
        client.close()
    assert len(ckpt_sync_checkpoints(tmp_path / "store")) == 3


def ckpt_sync_checkpoints(store: Path) -> list[str]:
    import ckpt_sync

    return [m.name for m in ckpt_sync.open_repository(str(store)).manifests()]


# --- the documented examples are valid -------------------------------------------------------------


@pytest.mark.parametrize("doc", ["README.md", "deploy/README.md"])
def test_every_toml_example_in_the_docs_is_a_valid_config(doc, tmp_path):
    text = (Path(__file__).resolve().parents[2] / doc).read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    blocks += re.findall(r"cat > \S+\.toml <<'TOML'\n(.*?)TOML\n", text, re.S)
    assert blocks, f"no TOML example in {doc}"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        assert config.read_config_file(path), block
