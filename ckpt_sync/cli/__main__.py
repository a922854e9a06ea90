"""``python -m ckpt_sync.cli``: the same as the ``ckpt-sync`` command."""

import sys

from .app import main

sys.exit(main())
