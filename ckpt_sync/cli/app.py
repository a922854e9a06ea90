"""The parser (one module per verb registers itself) and ``main``: the one place exit codes and error
lines are decided: 0 ok, 1 an operation failed, 2 usage or configuration; one line on stderr per
error (and, for a verb given ``--json``, the same error as one JSON object on stdout), a traceback
only with ``--debug``; a reader that closed the pipe (``ckpt-sync ls | head -1``) ends it quietly,
exit 141, as git does. The options every verb takes may come before the verb too."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import select
import signal
import sys
from collections.abc import Sequence

from .. import __version__, logs
from ..errors import EXIT_FAILED, EXIT_USAGE, CkptSyncError
from ..redact import redact
from ..service import settings
from .common import OUTPUT, common_options, err

log = logging.getLogger("ckpt_sync")

# Verb -> the module that registers it, in the order `ckpt-sync --help` lists them. A command line
# naming a verb imports only that verb's module: `ls` does not pay for what `watch` or `verify` need.
VERBS = {
    "init": "init", "keygen": "keygen", "key": "key", "push": "push", "ls": "ls", "pull": "pull", "cat": "cat",
    "verify": "verify", "stats": "stats", "tag": "tag", "forget": "forget", "copy": "copy", "watch": "watch",
    "queue": "queue", "prune": "prune", "status": "status", "check": "check", "config": "config_show",
    "repair": "repair", "repair-config": "repair_config",
}  # fmt: skip
# Daemon verbs log each committed checkpoint (INFO); one-shot verbs only warnings and errors.
LOGGING_VERBS = ("watch", "prune")
# Verbs whose first word after them is an action (``config show``): options go after the action.
NESTED_VERBS = ("config",)
# Options written before the verb that are moved after it, besides common_options(): value-taking ones.
REPO_OPTIONS = ("--repo", "--to", "--from")
EXIT_SIGPIPE = 128 + signal.SIGPIPE  # what a shell reports for a writer a closed pipe ended (git, cat)


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are also one JSON object on stdout when ``--json`` was given."""

    json_errors = False

    def error(self, message: str) -> None:  # type: ignore[override]
        if _Parser.json_errors:
            _json_error(message, EXIT_USAGE)
        super().error(message)


def _json_error(message: str, code: int) -> None:
    print(json.dumps({"error": redact(message), "exit_code": code}))


def _error(message: str, code: int, as_json: bool) -> int:
    """The one error line on stderr, and for ``--json`` the same error as JSON on stdout; returns ``code``."""
    err(message)
    if as_json:
        _json_error(message, code)
    return code


def _option_arity() -> dict[str, bool]:
    """The options every verb takes -> whether each takes a value (``--key-file K``) or not (``--quiet``)."""
    arity = {name: a.nargs != 0 for a in common_options()._actions for name in a.option_strings}
    arity.update(dict.fromkeys(REPO_OPTIONS, True))
    arity["--json"] = False
    return arity


def hoist_options(argv: Sequence[str]) -> list[str]:
    """``ckpt-sync --key-file K --json ls`` as ``ckpt-sync ls --key-file K --json``: the options every
    verb takes, written before the verb, moved right after it (after ``config show``'s action), where
    the verb's parser reads them. Anything else before the verb is left for argparse to judge."""
    argv = list(argv)
    arity = _option_arity()
    i = 0
    while i < len(argv):
        name, inline, _ = argv[i].partition("=")
        if name not in arity:
            break
        i += 2 if arity[name] and not inline else 1
    if i == 0 or i >= len(argv) or argv[i] not in VERBS:
        return argv
    after = i + 1
    if argv[i] in NESTED_VERBS and after < len(argv) and not argv[after].startswith("-"):
        after += 1
    return [*argv[i:after], *argv[:i], *argv[after:]]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when ``argv`` starts with a verb, with only that verb registered (the rest of the
    command line is that verb's), else every verb (``--help``, a typo: all are listed)."""
    parser = _Parser(
        prog="ckpt-sync",
        description="Keep PyTorch training checkpoints safe off-machine (encrypted).",
        epilog="The options every verb takes (--repo, --key-file, --json, --quiet, ...) may come before the verb "
        "or after it: `ckpt-sync --key-file K ls` is `ckpt-sync ls --key-file K`.",
    )
    parser.add_argument("--version", action="version", version=f"ckpt-sync {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = common_options()
    names = [argv[0]] if argv and argv[0] in VERBS else list(VERBS)
    for name in names:
        importlib.import_module(f".{VERBS[name]}", __package__).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is seen below
        return code
    except BrokenPipeError:
        if not _stdout_closed():  # a pipe to something else (a socket): a failure like any other
            err("broken pipe (re-run with --debug for a traceback)")
            return EXIT_FAILED
        # The reader has gone (`| head -1`): end quietly, and let the interpreter's last flush of
        # stdout go to /dev/null instead of printing "Exception ignored ... BrokenPipeError".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SIGPIPE


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here, or no real stdout
        return False


def _main(argv: Sequence[str]) -> int:
    argv = hoist_options(argv)
    _Parser.json_errors = "--json" in argv
    args = build_parser(argv).parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        settings.check_environment()
        # The one place settings are resolved: flags > env > config file > defaults, onto ``args``.
        effective = settings.apply(args) if hasattr(args, "config") else None
    except CkptSyncError as e:
        return _error(str(e), e.exit_code, as_json)
    OUTPUT.quiet = bool(getattr(args, "quiet", False))
    level = logging.ERROR if OUTPUT.quiet else logging.INFO if args.verb in LOGGING_VERBS else logging.WARNING
    logs.configure(logging.DEBUG if args.debug else level, effective["log_format"] if effective else "text")
    try:
        return args.func(args)
    except CkptSyncError as e:
        if args.debug:
            log.exception("failed")
        return _error(str(e), e.exit_code, as_json)
    except KeyboardInterrupt:
        return _error("interrupted", 130, as_json)
    except BrokenPipeError:
        raise  # main() tells a closed stdout from any other broken pipe
    except OSError as e:
        if args.debug:
            log.exception("failed")
        if e.errno == errno.ENOSPC:
            return _error(
                f"no space left on device ({e.filename or 'disk'}): free some space and re-run", EXIT_FAILED, as_json
            )
        return _error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}", EXIT_FAILED, as_json)
    except Exception as e:  # a bug: still one line, unless --debug
        if args.debug:
            log.exception("unexpected error")
        return _error(f"unexpected {type(e).__name__}: {e} (re-run with --debug for a traceback)", EXIT_FAILED, as_json)
