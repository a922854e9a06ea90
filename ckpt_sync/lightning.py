"""``ckpt_sync.lightning`` is the documented name of ``ckpt_sync.integrations.lightning``: the same module object."""

import sys

from .integrations import lightning as _module

sys.modules[__name__] = _module
