"""The parser (one module per verb registers itself) and ``main``: the one place exit codes and error
lines are decided: 0 ok, 1 an operation failed, 2 usage or configuration; one line on stderr per
error, a traceback only with ``--debug``."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__, config, logs
from ..errors import EXIT_FAILED, CkptSyncError
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


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when ``argv`` starts with a verb, with only that verb registered (the rest of the
    command line is that verb's), else every verb (``--help``, a typo: all are listed)."""
    parser = argparse.ArgumentParser(
        prog="ckpt-sync",
        description="Keep PyTorch training checkpoints safe off-machine (encrypted).",
    )
    parser.add_argument("--version", action="version", version=f"ckpt-sync {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = common_options()
    names = [argv[0]] if argv and argv[0] in VERBS else list(VERBS)
    for name in names:
        importlib.import_module(f".{VERBS[name]}", __package__).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        config.check_environment()
        # The one place settings are resolved: flags > env > config file > defaults, onto ``args``.
        settings = config.apply(args) if hasattr(args, "config") else None
    except CkptSyncError as e:
        err(str(e))
        return e.exit_code
    OUTPUT.quiet = bool(getattr(args, "quiet", False))
    level = logging.ERROR if OUTPUT.quiet else logging.INFO if args.verb in LOGGING_VERBS else logging.WARNING
    logs.configure(logging.DEBUG if args.debug else level, settings["log_format"] if settings else "text")
    try:
        return args.func(args)
    except CkptSyncError as e:
        if args.debug:
            log.exception("failed")
        err(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except OSError as e:
        if args.debug:
            log.exception("failed")
        if e.errno == errno.ENOSPC:
            err(f"no space left on device ({e.filename or 'disk'}): free some space and re-run")
        else:
            err(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        return EXIT_FAILED
    except Exception as e:  # a bug: still one line, unless --debug
        if args.debug:
            log.exception("unexpected error")
        err(f"unexpected {type(e).__name__}: {e} (re-run with --debug for a traceback)")
        return EXIT_FAILED
