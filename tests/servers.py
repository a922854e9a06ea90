"""Real local object-store servers for the provider tests, and for trying ckpt-sync by hand.

    python tests/servers.py start [s3 azure gcs]   # install what is missing, start on loopback, wait, print env
    python tests/servers.py env                    # the export lines for the running servers
    python tests/servers.py status
    python tests/servers.py stop

S3 is moto's server mode, Azure Blob is Azurite (blob service only), GCS is gcp-storage-emulator;
all in memory, on 127.0.0.1. ``start`` prefers the usual ports (5000, 10000, 9023) and falls back
to free ones; pids, ports and logs are kept in ``.servers/`` (or ``--state DIR``), so ``stop``
ends exactly the processes ``start`` began. Azurite is installed with npm into ``.servers/node``
when ``azurite-blob`` is not on PATH; the Python servers come from the project's ``test`` extra.

The pytest fixtures (tests/providers/conftest.py) reuse servers started here and otherwise start a
private set in the session's temp folder, stopped when the session ends.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE = REPO_ROOT / ".servers"
NODE_PREFIX = REPO_ROOT / ".servers" / "node"
STATE_FILE = "servers.json"

# Azurite's fixed development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MOTO_KEY_ID = "testing"
MOTO_SECRET = "testing"


@dataclass(frozen=True)
class ServerKind:
    """How to run one server: its command for a port and folder, and the environment that reaches it."""

    name: str
    default_port: int
    command: Callable[[int, Path], list[str]]
    env: Callable[[int], dict[str, str]]
    extra_env: dict[str, str] = field(default_factory=dict)


def _moto_cmd(port: int, _state: Path) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _s3_env(port: int) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": MOTO_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def azurite_connection_string(port: int, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def _azurite_cmd(port: int, _state: Path) -> list[str]:
    return [
        azurite_blob(),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--extentMemoryLimit",
        "1024",
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]


# gcp-storage-emulator, adjusted for a test run without touching its API behaviour: it serves one
# request at a time with socketserver's listen backlog of 5, so a client with 6+ parallel
# connections sees dropped SYNs and connect timeouts (a deeper backlog just queues them); and after
# every write it re-serialises its whole object index to a file that, in memory mode, is never read
# back, which makes n writes cost O(n^2) (skipped).
_GCS_LAUNCH = (
    "import sys, http.server; http.server.HTTPServer.request_queue_size = 128; "
    "from gcp_storage_emulator.storage import Storage; Storage._write_config_to_file = lambda self: None; "
    "from gcp_storage_emulator.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


def _gcs_cmd(port: int, _state: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        _GCS_LAUNCH,
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
    ]


KINDS: dict[str, ServerKind] = {
    "s3": ServerKind("s3", 5000, _moto_cmd, _s3_env),
    "azure": ServerKind(
        "azure", 10000, _azurite_cmd, lambda p: {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(p)}
    ),
    "gcs": ServerKind("gcs", 9023, _gcs_cmd, lambda p: {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{p}"}),
    # moto that checks every request's credentials (for the bad-credentials tests); started on demand only.
    "s3-auth": ServerKind("s3-auth", 5001, _moto_cmd, _s3_env, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}),
}
DEFAULT_KINDS = ("s3", "azure", "gcs")


@dataclass(frozen=True)
class Running:
    name: str
    pid: int
    port: int
    command: list[str]

    @property
    def env(self) -> dict[str, str]:
        return KINDS[self.name].env(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --- installing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Two test sessions starting at once must not run npm into the same folder together."""
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(NODE_PREFIX / ".install.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def azurite_blob() -> str:
    """Path of ``azurite-blob``: on PATH, or installed into .servers/node (npm) on first use."""
    local = NODE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    found = shutil.which("azurite-blob") or (str(local) if local.exists() else None)
    if found:
        return found
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("Azurite is not installed and npm is not on PATH: install Node.js 18+ (npm), then retry")
    with _install_lock():
        if not local.exists():
            print(f"installing azurite into {NODE_PREFIX} (npm)...", file=sys.stderr)
            subprocess.run(
                [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", "azurite@3"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    return str(local)


def ensure_python_servers(kinds: Iterable[str]) -> None:
    """pip-install moto[server] / gcp-storage-emulator if this interpreter lacks them (normally the test extra)."""
    wanted = {
        "s3": ("moto.server", "flask", "moto[server]"),
        "gcs": ("gcp_storage_emulator", None, "gcp-storage-emulator"),
    }
    missing = []
    for kind in kinds:
        spec = wanted.get(kind.removesuffix("-auth"))
        if spec and any(m and importlib.util.find_spec(m) is None for m in spec[:2]):
            missing.append(spec[2])
    if missing:
        print(f"installing {' '.join(missing)} (pip)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


# --- ports, processes, readiness -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def answers(port: int, timeout: float = 1.0, *, cafile: Path | None = None) -> bool:
    """Any HTTP response (even an error status) means the server is up; over TLS with ``cafile``."""
    if cafile is None:
        url, context = f"http://127.0.0.1:{port}/", None
    else:
        url, context = f"https://127.0.0.1:{port}/", ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def _alive(pid: int, command: list[str]) -> bool:
    """The pid is running *and* is still the process we started (pids get reused): its arguments match."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return False
    args = [a.encode() for a in command[1:]]  # argv[0] differs when a script runs through its interpreter
    return cmdline[-len(args) :] == args


def _start_one(kind: ServerKind, state: Path, port: int) -> Running:
    cmd = kind.command(port, state)
    return Running(kind.name, _launch(kind.name, cmd, state, port, kind.extra_env), port, cmd)


def _launch(name: str, cmd: list[str], state: Path, port: int, extra_env: dict[str, str],
            cafile: Path | None = None) -> int:  # fmt: skip
    """Start ``cmd`` in its own process group (log in ``state``); its pid once it answers on ``port``."""
    state.mkdir(parents=True, exist_ok=True)
    log = open(state / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=state,
            env={**os.environ, **extra_env},
            start_new_session=True,  # its own process group: stop() ends it and its children, nothing else
        )
    finally:
        log.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (state / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} server exited with {proc.returncode}:\n{tail}")
        if answers(port, timeout=0.5, cafile=cafile):
            return proc.pid
        time.sleep(0.1)
    _kill(proc.pid)
    raise RuntimeError(f"{name} server did not answer on 127.0.0.1:{port} within 90s (see {state})")


def _kill(pid: int, grace: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll until it is gone
            done = 0 if Path(f"/proc/{pid}").exists() else pid
        if done:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A fresh certificate for 127.0.0.1 and its key (PEM files in ``folder``), valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    private = serialization.PrivateFormat.PKCS8
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, private, serialization.NoEncryption()))
    return cert_file, key_file


@contextlib.contextmanager
def moto_over_tls(folder: Path) -> Iterator[dict[str, str]]:
    """A private moto server over TLS (a fresh self-signed certificate, files and log in ``folder``);
    yields the environment that reaches it as a user of a private endpoint would: its https
    ``AWS_ENDPOINT_URL``, ``AWS_CA_BUNDLE`` and test credentials. Stopped on exit."""
    ensure_python_servers(["s3"])
    cert, key = self_signed_certificate(folder)
    port = free_port()
    cmd = [*_moto_cmd(port, folder), "-c", str(cert), "-k", str(key)]
    pid = _launch("moto-tls", cmd, folder, port, {}, cafile=cert)
    try:
        yield {**_s3_env(port), "AWS_ENDPOINT_URL": f"https://127.0.0.1:{port}", "AWS_CA_BUNDLE": str(cert)}
    finally:
        _kill(pid)


# --- state ---------------------------------------------------------------------------------------


def _read_state(state: Path) -> dict[str, Running]:
    try:
        raw = json.loads((state / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {name: Running(**r) for name, r in raw.items()}


def _write_state(state: Path, servers: dict[str, Running]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({n: asdict(r) for n, r in servers.items()}, indent=1))
    os.replace(tmp, state / STATE_FILE)


def running(state: Path = DEFAULT_STATE) -> dict[str, Running]:
    """Servers recorded in ``state`` that are alive and answering."""
    return {n: r for n, r in _read_state(state).items() if _alive(r.pid, r.command) and answers(r.port)}


def start(
    kinds: Iterable[str] = DEFAULT_KINDS, state: Path = DEFAULT_STATE, *, prefer_default_ports: bool = True
) -> dict[str, Running]:
    """Start the named servers that are not already running under ``state``; return all running ones."""
    kinds = list(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown server(s) {sorted(unknown)}; choose from {sorted(KINDS)}")
    ensure_python_servers(kinds)
    with _state_lock(state):
        current = running(state)
        for name in kinds:
            if name in current:
                continue
            kind = KINDS[name]
            port = kind.default_port if prefer_default_ports and port_is_free(kind.default_port) else free_port()
            try:
                current[name] = _start_one(kind, state, port)
            except RuntimeError:
                if port_is_free(port):  # it failed for another reason than losing a race for the port
                    raise
                current[name] = _start_one(kind, state, free_port())  # lost a race for the port
            _write_state(state, current)
    return current


def stop(state: Path = DEFAULT_STATE, kinds: Iterable[str] | None = None) -> list[str]:
    """Stop the servers ``start`` recorded under ``state`` (all, or the named ones)."""
    with _state_lock(state):
        recorded = _read_state(state)
        stopped = []
        for name, r in list(recorded.items()):
            if kinds is not None and name not in kinds:
                continue
            terminate(r)
            stopped.append(name)
            del recorded[name]
        _write_state(state, recorded)
    return stopped


def terminate(server: Running) -> None:
    """End one server we started (and its process group), if it is still that process."""
    if _alive(server.pid, server.command):
        _kill(server.pid)


@contextlib.contextmanager
def _state_lock(state: Path) -> Iterator[None]:
    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def env_of(servers: dict[str, Running]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in DEFAULT_KINDS:
        if name in servers:
            env.update(servers[name].env)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/servers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["start", "stop", "env", "status"])
    p.add_argument("servers", nargs="*", help=f"subset of {', '.join(KINDS)} (default: {' '.join(DEFAULT_KINDS)})")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="folder for pids, ports and logs")
    args = p.parse_args(argv)
    kinds = args.servers or list(DEFAULT_KINDS)
    if args.action == "start":
        current = start(kinds, args.state)
    elif args.action == "stop":
        names = stop(args.state, args.servers or None)
        print(f"stopped: {' '.join(names) or 'nothing was running'}", file=sys.stderr)
        return 0
    else:
        current = running(args.state)
    if args.action == "status":
        for name in KINDS:
            r = current.get(name)
            print(f"{name:8} {'up' if r else 'down':5} {r.url if r else ''} {f'pid {r.pid}' if r else ''}".rstrip())
        return 0 if all(k in current for k in kinds) else 1
    for k, v in env_of(current).items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
