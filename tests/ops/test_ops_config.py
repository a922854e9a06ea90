"""The config file: precedence (flags > env > file > defaults), validation errors, redaction of keys."""

from __future__ import annotations

import json
import re
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
