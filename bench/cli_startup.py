"""What a CLI start-up costs: CPU seconds of ``ckpt-sync --help``, ``ls`` and ``pull`` of a tiny
checkpoint from a local repository, and the modules each imports; optionally next to another tree.

    python bench/cli_startup.py [--base TREE] [--repeat 15] [--dir PATH]

Each command runs ``--repeat`` times, the trees interleaved, each in a fresh interpreter started
by bench/common.py's launcher; CPU is user + system of the whole process (median), next to a bare
``python -c pass`` (the interpreter's own floor). Twice: with bytecode cached (as after ``pip
install``, which compiles), and compiling every module at each start (``PYTHONDONTWRITEBYTECODE=1``,
as in a source checkout on a machine that sets it: then every module imported costs its compile).
``python -X importtime -m ckpt_sync.cli --help`` shows where the rest goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import Measured, median_cpu, print_table, run_python, source_tree  # noqa: E402

COUNT = """
import runpy, sys
sys.argv = ["ckpt-sync", *sys.argv[1:]]
try:
    runpy.run_module("ckpt_sync.cli", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("MODULES", len(sys.modules), file=sys.stderr)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="also run this source tree (before/after)")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from cryptography.fernet import Fernet

    trees = {"this": str(HERE.parent), **({"base": source_tree(args.base)} if args.base else {})}
    work = Path(tempfile.mkdtemp(prefix="ckpt-startup-", dir=args.dir))
    env = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode(), "XDG_CACHE_HOME": str(work / "cache")}
    try:
        src = work / "src" / "checkpoint_startup_1.pt"
        src.parent.mkdir()
        src.write_bytes(os.urandom(64 << 10))
        repo = str(work / "repo")
        run_python("-m", "ckpt_sync.cli", "push", "--repo", repo, str(src), env={**env, "PYTHONPATH": trees["this"]})
        commands = {
            "--help": ["--help"],
            "ls (local)": ["ls", "--repo", repo],
            "pull --latest 64 KiB (local)": ["pull", "--latest", "--repo", repo, "--to", str(work / "out")],
        }
        modes = {
            "cached": {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(work / "pyc")},
            "compiled": {"PYTHONDONTWRITEBYTECODE": "1"},
        }
        runs: dict[tuple[str, str, str], list[Measured]] = {}
        modules: dict[tuple[str, str], str] = {}
        for label, tree in trees.items():  # warm the bytecode cache, and count what each imports
            for name, argv in commands.items():
                run_python("-m", "ckpt_sync.cli", *argv, env={**env, **modes["cached"], "PYTHONPATH": tree})
                modules[(name, label)] = _modules(argv, {**env, "PYTHONPATH": tree})
                shutil.rmtree(work / "out", ignore_errors=True)
        for _ in range(args.repeat):
            for mode, menv in modes.items():
                runs.setdefault(("python -c pass", "-", mode), []).append(run_python("-c", "pass", env={**env, **menv}))
                for label, tree in trees.items():
                    tenv = {**env, **menv, "PYTHONPATH": tree}
                    for name, argv in commands.items():
                        m = run_python("-m", "ckpt_sync.cli", *argv, env=tenv)
                        runs.setdefault((name, label, mode), []).append(m)
                        shutil.rmtree(work / "out", ignore_errors=True)
        rows = []
        for (name, label, mode), ms in runs.items():
            c, peak = median_cpu(ms), max(m.peak_mib or 0 for m in ms)
            cpu = (f"{c.cpu:.3f}", f"{c.user:.3f}", f"{c.sys:.3f}")
            rows.append((mode, name, label, *cpu, f"{peak:.0f}", modules.get((name, label), "-")))
        print(f"CLI start-up, median CPU of {args.repeat} interleaved runs; {os.cpu_count()} CPUs")
        print_table(rows, ("bytecode", "command", "tree", "CPU s", "user", "sys", "peak RSS MiB", "modules imported"))
        if args.base:
            for mode in modes:
                for name in commands:
                    this, base = median_cpu(runs[(name, "this", mode)]), median_cpu(runs[(name, "base", mode)])
                    ratio = f"{this.cpu / base.cpu:.2f}x ({base.cpu:.3f} -> {this.cpu:.3f} s)"
                    print(f"{mode:8s} {name}: this/base CPU {ratio}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _modules(argv: list[str], env: dict[str, str]) -> str:
    """How many modules the command leaves in sys.modules."""
    import subprocess

    cmd = [sys.executable, "-P", "-c", COUNT, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    return next((line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MODULES")), "?")


if __name__ == "__main__":
    main()
