"""``ckpt_sync.retention`` is the documented name of ``ckpt_sync.transfer.retention``: the same module object."""

import sys

from .transfer import retention as _module

sys.modules[__name__] = _module
