"""``ckpt_sync.hf`` is the documented name of ``ckpt_sync.integrations.hf``: the same module object."""

import sys

from .integrations import hf as _module

sys.modules[__name__] = _module
