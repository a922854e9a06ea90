"""The README's two commands on a fresh Linux: scripts/quickstart.sh and scripts/test.sh never install
into the Python on PATH (PEP 668 refuses that on Debian/Ubuntu), they create and reuse the project's
``.venv/`` (or use the active one), say where it is in one line, and say which package to install when
the system Python cannot make a venv. ``CKPT_SYNC_SETUP_ONLY=1`` stops them right after that step, so
nothing is downloaded here; the full runs are what CI (``.ci/run``) and the quickstart do."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("quickstart.sh", "test.sh")
_REAL_HOME = Path(os.path.expanduser("~"))  # before the autouse fixture points HOME elsewhere


def _python(minor: int) -> str | None:
    """A real Python 3.<minor> interpreter (not a venv) on this machine, if there is one."""
    roots = [os.environ.get("PYENV_ROOT", ""), str(_REAL_HOME / ".pyenv")]
    candidates = [shutil.which(f"python3.{minor}") or ""]
    for root in filter(None, roots):
        candidates += sorted(glob.glob(f"{root}/versions/3.{minor}.*/bin/python3.{minor}"))
    candidates += [f"/usr/bin/python3.{minor}", f"/usr/local/bin/python3.{minor}"]
    for c in filter(None, candidates):
        try:
            out = subprocess.run(
                [c, "-c", "import sys; print(sys.version_info[1], sys.prefix == sys.base_prefix, sys.executable)"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.split()
        except OSError:
            continue
        if out[:2] == [str(minor), "True"]:
            return out[2]  # the interpreter itself, not a pyenv shim that needs pyenv on PATH
    return None


def _base_python() -> str:
    """The interpreter the test session runs on, outside any venv."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _checkout(tmp_path: Path) -> Path:
    """A fresh checkout's scripts/ (all the set-up step reads)."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    return root


def _path_with(tmp_path: Path, python: str, pythonpath: Path | None = None) -> str:
    """PATH holding only a ``python3`` that logs every call and runs ``python``, plus the shell tools the
    scripts use: no other Python can be picked up by accident."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "python3-calls.log"
    env_line = f"PYTHONPATH={pythonpath} " if pythonpath else ""
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{env_line}exec {python} "$@"\n')
    wrapper.chmod(0o755)
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("bash", "sh", "rm", "dirname", "cat", "env"):
        found = shutil.which(tool)
        if found and not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    return f"{bin_dir}:{tools}"


def _run(script: str, root: Path, path: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update({"PATH": path, "CKPT_SYNC_SETUP_ONLY": "1", "PIP_REQUIRE_VIRTUALENV": "1", **extra})
    return subprocess.run(
        ["bash", str(root / "scripts" / script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def _pip_calls_on_path_python(tmp_path: Path) -> list[str]:
    log = tmp_path / "python3-calls.log"
    return [c for c in log.read_text().splitlines() if "-m pip" in c] if log.exists() else []


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_create_a_project_venv_instead_of_installing_into_the_python_on_path(tmp_path, script):
    root = _checkout(tmp_path)
    proc = _run(script, root, _path_with(tmp_path, _base_python()))
    assert proc.returncode == 0, proc.stderr
    venv_python = root / ".venv" / "bin" / "python"
    assert venv_python.exists()
    # One line says where the venv is and how to activate it.
    lines = [line for line in proc.stdout.splitlines() if ".venv" in line]
    assert len(lines) == 1 and str(root / ".venv") in lines[0] and "source .venv/bin/activate" in lines[0]
    assert _pip_calls_on_path_python(tmp_path) == []
    # The venv is a real one (pip refuses nothing there) and sees the system's torch and test tools.
    probe = subprocess.run(
        [str(venv_python), "-c", "import sys, pip, pytest; print(sys.prefix != sys.base_prefix)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "1"},
    )
    assert probe.stdout.strip() == "True", probe.stderr
    # A second run reuses it.
    again = _run(script, root, _path_with(tmp_path, _base_python()))
    assert again.returncode == 0 and "reused" in again.stdout, again.stderr


def _externally_managed_python() -> str | None:
    """A system Python that carries a PEP 668 EXTERNALLY-MANAGED marker (Debian/Ubuntu), if any."""
    for c in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(c):
            continue
        stdlib = subprocess.run(
            [c, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"], capture_output=True, text=True
        ).stdout.strip()
        ok = subprocess.run([c, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0
        if stdlib and (Path(stdlib) / "EXTERNALLY-MANAGED").exists() and ok:
            return c
    return None


@pytest.mark.skipif(_externally_managed_python() is None, reason="no PEP 668 system Python on this machine")
def test_scripts_work_on_an_externally_managed_system_python(tmp_path):
    python = _externally_managed_python()
    assert python
    refused = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--no-index", "tqdm"], capture_output=True, text=True
    )
    assert refused.returncode != 0  # what the old scripts ran into
    root = _checkout(tmp_path)
    proc = _run("test.sh", root, _path_with(tmp_path, python), PIP_REQUIRE_VIRTUALENV="0")
    assert proc.returncode == 0, proc.stderr
    assert (root / ".venv" / "bin" / "python").exists() and _pip_calls_on_path_python(tmp_path) == []


@pytest.mark.parametrize("minor", [11, 12, 13])
def test_each_supported_python_version(tmp_path, minor):
    python = _python(minor)
    if python is None:
        pytest.skip(f"no Python 3.{minor} on this machine")
    root = _checkout(tmp_path)
    proc = _run("quickstart.sh", root, _path_with(tmp_path, python))
    assert proc.returncode == 0, proc.stderr
    assert f"Python 3.{minor}" in proc.stdout
    version = subprocess.run(
        [str(root / ".venv" / "bin" / "python"), "-c", "import sys; print(sys.version_info[1])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert version == str(minor)


def test_an_unsupported_python_is_named_in_one_line(tmp_path):
    python = _python(10)
    if python is None:
        pytest.skip("no Python 3.10 on this machine")
    root = _checkout(tmp_path)
    proc = _run("quickstart.sh", root, _path_with(tmp_path, python))
    assert proc.returncode == 1 and not (root / ".venv").exists()
    assert proc.stderr.count("\n") == 1 and "needs Python 3.11-3.13" in proc.stderr and "3.10" in proc.stderr


def test_a_python_without_ensurepip_names_the_apt_package(tmp_path):
    # Debian/Ubuntu without python3-venv: `import ensurepip` fails. Simulated by shadowing the module.
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError('No module named ensurepip')\n")
    root = _checkout(tmp_path)
    proc = _run("test.sh", root, _path_with(tmp_path, _base_python(), pythonpath=shadow.parent))
    minor = sys.version_info[1]
    assert proc.returncode == 1 and not (root / ".venv").exists()
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"sudo apt install python3.{minor}-venv" in proc.stderr


def test_an_active_venv_is_used_as_it_is(tmp_path):
    active = tmp_path / "active"
    subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(active)], check=True)
    root = _checkout(tmp_path)
    proc = _run("quickstart.sh", root, _path_with(tmp_path, _base_python()), VIRTUAL_ENV=str(active))
    assert proc.returncode == 0, proc.stderr
    assert f"using the active virtual environment {active}" in proc.stdout
    assert not (root / ".venv").exists()


def test_requires_python_declares_what_the_scripts_accept():
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11"' in text
    for minor in (11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in text
    assert sysconfig.get_python_version() in ("3.11", "3.12", "3.13")


def test_the_quickstart_removes_its_temporary_folder(tmp_path):
    pytest.importorskip("torch")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "byte-identical=True" in proc.stdout
    assert "ckpt-sync-quickstart-" in proc.stdout  # it did work in TMPDIR...
    assert [p for p in tmp.iterdir() if "quickstart" in p.name] == []  # ...and removed it (torch may cache there)


def test_the_docs_install_from_the_checkout_and_say_which_torch_each_install_gets():
    docs = [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"), REPO_ROOT / "deploy" / "README.md"]
    for doc in docs:
        text = doc.read_text()
        assert "pip install 'ckpt-sync[" not in text, f"{doc.name}: the package is not published"
        assert "(the CPU wheel)" not in text
    readme = (REPO_ROOT / "README.md").read_text()
    assert "pip install -e '.[s3]'" in readme and "source .venv/bin/activate" in readme
    assert "CUDA build" in readme and "--index-url https://download.pytorch.org/whl/cpu" in readme


def test_a_clean_clone_carries_no_environment_or_link_out_of_the_tree():
    # A committed `.venv` (once a worktree's link to another's) made every clean clone's set-up fail.
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-s"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    tracked = [line.split("\t", 1)[1] for line in out.splitlines()]
    assert not [p for p in tracked if p.split("/")[0] in (".venv", ".servers", "node_modules")]
    links = [line.split("\t", 1)[1] for line in out.splitlines() if line.startswith("120000")]
    for link in links:
        target = (REPO_ROOT / link).parent / os.readlink(REPO_ROOT / link)
        assert target.resolve().is_relative_to(REPO_ROOT.resolve()), f"{link} points out of the tree"
