"""``ckpt-sync copy --from A --to B [ID... | --latest | --tag T | --all]``: copy checkpoints between
repositories (another bucket, cloud or key); a second run copies nothing."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..units import format_bytes
from .common import add_json_option, add_repo_option, open_repository, progress_bar, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("copy", parents=[common], help="copy checkpoints to another repository (verified)")
    p.add_argument("checkpoints", nargs="*", metavar="ID_OR_NAME", help="checkpoint ids (or unique prefixes) or names")
    p.add_argument("--latest", action="store_true", help="the newest resumable checkpoint")
    p.add_argument("--tag", metavar="TAG", help="every checkpoint with this tag")
    p.add_argument("--all", action="store_true", help="every checkpoint")
    p.add_argument("--to", dest="to", required=True, metavar="URL", help="the destination repository (created if new)")
    p.add_argument(
        "--to-key-file",
        metavar="PATH",
        help="the destination's key file (default: the same keys as the source, --key-file)",
    )
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..transfer.copying import choose, copy_checkpoints  # imported by the verb that needs it, not at every start-up

    src = open_repository(args)
    chosen = choose(src, selectors=args.checkpoints, latest=args.latest, tag=args.tag, everything=args.all)
    to = argparse.Namespace(**{**vars(args), "repo": args.to, "key_file": args.to_key_file or args.key_file})
    dst = open_repository(to, create=True)
    with progress_bar(sum(m.size for m in chosen), f"copy to {dst.url}", not args.json) as bar:
        report = copy_checkpoints(src, dst, chosen, workers=args.workers, progress=bar)
    if args.json:
        print(json.dumps({"from": src.url, "to": dst.url, **report.to_json()}, indent=2))
        return EXIT_OK
    say(
        f"copied {len(report.copied)} checkpoint(s) to {dst.url} ({len(report.skipped)} already there): "
        f"{report.chunks_copied} chunk(s) copied as stored, {report.chunks_reencrypted} re-encrypted, "
        f"{format_bytes(report.bytes_sent)} sent"
    )
    return EXIT_OK
