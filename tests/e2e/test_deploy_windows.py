"""deploy/windows/: every ckpt-sync command line in its scripts and README is accepted by the real
parser, and the power-event hook asks the trainer to stop with Ctrl-Break to its process group, never
by killing it. (PowerShell itself is not run here: no Windows machine.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ckpt_sync.cli import build_parser

WINDOWS = Path(__file__).resolve().parents[2] / "deploy" / "windows"
HOOK = WINDOWS / "ckpt-sync-power-hook.ps1"
TASKS = WINDOWS / "install-tasks.ps1"


def parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_the_hook_sends_ctrl_break_to_the_trainers_process_group_and_never_kills_it():
    text = HOOK.read_text()
    assert "GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, wholeConsole ? 0u : trainerPid)" in text
    assert "const uint CTRL_BREAK_EVENT = 1;" in text
    assert "AttachConsole(trainerPid)" in text and "SetConsoleCtrlHandler(Survive, true)" in text
    code = re.sub(r"<#.*?#>", "", text, flags=re.S)  # the help block
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("#", "//")))
    for killer in ("Stop-Process", "taskkill", "TerminateProcess", ".Kill("):
        assert killer not in code, killer
    assert "Win32_PowerManagementEvent" in text and "$type -eq 4" in text  # entering sleep
    assert "BatteryStatus -eq 1" in text  # on battery


def test_the_scheduled_watch_task_runs_a_valid_ckpt_sync_watch():
    text = TASKS.read_text()
    (template,) = re.findall(r'-Argument "(watch [^"\n]*?)"\n', text.replace('`"', "'"))
    argv = shlex.split(template.replace("$WatchDir", r"C:\train\ck").replace("$Config", "c.toml").replace(
        "$KeyFile", "k.key"), posix=True)  # fmt: skip
    parses(argv)
    assert argv[:2] == ["watch", r"C:\train\ck"] and "--key-file" in argv
    assert "-AtLogOn" in text and "-LogonType Interactive" in text


def test_every_ckpt_sync_line_in_the_windows_readme_parses():
    lines = [
        m for m in re.findall(r"ckpt-sync(?:\.exe)? ((?:keygen|watch) [^\n`]*)", (WINDOWS / "README.md").read_text())
    ]
    assert len(lines) >= 2
    for line in lines:
        parses(shlex.split(line.replace("\\", "/")))
