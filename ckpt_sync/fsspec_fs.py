"""``ckpt_sync.fsspec_fs`` is the documented name of ``ckpt_sync.integrations.fsspec_fs``: the same module object."""

import sys

from .integrations import fsspec_fs as _module

sys.modules[__name__] = _module
