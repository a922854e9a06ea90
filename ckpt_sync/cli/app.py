"""The parser (one module per verb registers itself) and ``main``: the one place exit codes and error
lines are decided: 0 ok, 1 an operation failed, 2 usage or configuration; one line on stderr per
error, a traceback only with ``--debug``."""

from __future__ import annotations

import argparse
import errno
import logging
from collections.abc import Sequence

from .. import __version__, config, logs
from ..errors import EXIT_FAILED, CkptSyncError
from . import (
    cat,
    check,
    config_show,
    copy,
    forget,
    init,
    key,
    keygen,
    ls,
    prune,
    pull,
    push,
    queue,
    repair_config,
    stats,
    status,
    tag,
    verify,
    watch,
)
from .common import OUTPUT, common_options, err

log = logging.getLogger("ckpt_sync")

# In the order `ckpt-sync --help` lists them.
VERBS = (
    init, keygen, key, push, ls, pull, cat, verify, stats, tag, forget, copy, watch, queue, prune, status, check,
    config_show, repair_config,
)  # fmt: skip
# Daemon verbs log each committed checkpoint (INFO); one-shot verbs only warnings and errors.
LOGGING_VERBS = ("watch", "prune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckpt-sync",
        description="Keep PyTorch training checkpoints safe off-machine (encrypted).",
    )
    parser.add_argument("--version", action="version", version=f"ckpt-sync {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = common_options()
    for verb in VERBS:
        verb.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
