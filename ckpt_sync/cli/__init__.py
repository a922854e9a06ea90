"""The ``ckpt-sync`` command: one small module per verb (``push.py``, ``pull.py``, ...), each a thin
shell that parses options, calls the library and renders the result; shared helpers in
``common.py``; the parser and the exit-code policy in ``app.py``."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
