"""``ckpt_sync.dcp`` is the documented name of ``ckpt_sync.integrations.dcp``: the same module object."""

import sys

from .integrations import dcp as _module

sys.modules[__name__] = _module
