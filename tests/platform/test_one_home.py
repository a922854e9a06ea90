"""What differs between platforms is used through ckpt_sync/platform.py only.

The simulated profiles (simulate.py) take capabilities away from that module's view of ``os``,
``mmap`` and ``signal``: a call to one of those names from any other module would bypass the
simulation (and, on the platform that lacks it, fail). This reads every module's source and finds
each such use outside platform.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "ckpt_sync" / "platform.py"

# Names that only some platforms have (or that behave differently there), by module.
PLATFORM_ONLY = {
    "os": {
        "O_DIRECT", "RWF_NOWAIT", "pread", "pwrite", "preadv", "pwritev", "posix_fallocate", "fdatasync",
        "fchmod", "statvfs", "sync", "link", "kill", "killpg", "getuid", "geteuid", "getpgid", "setsid",
    },
    "mmap": {"MAP_PRIVATE", "MAP_ANONYMOUS", "MAP_SHARED", "MAP_POPULATE"},
    "signal": {"SIGBREAK", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGQUIT", "SIGALRM", "pthread_kill", "Signals"},
}  # fmt: skip
PLATFORM_MODULES = {"fcntl", "msvcrt", "termios", "resource", "pwd", "grp"}


def uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each platform-only name or module the source uses."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in PLATFORM_ONLY.get(node.value.id, ()):
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name in PLATFORM_MODULES]
        elif isinstance(node, ast.ImportFrom) and (
            node.module in PLATFORM_MODULES
            or any(a.name in PLATFORM_ONLY.get(node.module or "", ()) for a in node.names)
        ):
            found.append((node.lineno, f"from {node.module} import ..."))
    return sorted(found)


def test_only_platform_py_uses_what_differs_between_platforms():
    modules = [*(ROOT / "ckpt_sync").rglob("*.py"), *(ROOT / "providers").rglob("*.py")]
    problems = [
        f"{path.relative_to(ROOT)}:{line} uses {what}: call ckpt_sync.platform instead"
        for path in sorted(modules)
        if path != HOME
        for line, what in uses(path.read_text())
    ]
    assert not problems, "\n".join(problems)


def test_the_check_finds_each_kind_of_use():
    source = (
        "import fcntl\nfrom msvcrt import locking\nimport os, mmap, signal\n"
        "os.pread(0, 1, 0)\nflags = mmap.MAP_PRIVATE\nsignal.signal(signal.SIGHUP, None)\n"
        "def lazy():\n    import fcntl\n    os.link('a', 'b')\n"
    )
    assert [what for _, what in uses(source)] == [
        "import fcntl",
        "from msvcrt import ...",
        "os.pread",
        "mmap.MAP_PRIVATE",
        "signal.SIGHUP",
        "import fcntl",
        "os.link",
    ]
    assert uses("import os\nos.replace('a', 'b')\nsignal.SIGINT\n") == []
