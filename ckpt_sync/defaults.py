"""Default values that the settings (service/settings.py) and the library share, in a module that imports nothing.

service/settings.py names every setting's default and is read at every start-up: importing the watcher, the
daemon or prune just to read a number would make every verb pay for what only `watch` and `prune`
run. Their one home is here; those modules take them from here.
"""

from __future__ import annotations

DEFAULT_PATTERNS = ("*.pt", "*.pth", "*.safetensors", "*.bin", "*.ckpt")  # what `watch` uploads
DEFAULT_GRACE = 3600.0  # seconds an unreferenced chunk is kept: another writer's upload in flight
WATCH_KEEP = 5  # remote FIFO of a watch: the N newest resumable checkpoints
WATCH_SETTLE = 5.0  # seconds a file must be closed and unchanged before a watch uploads it
WATCH_RESCAN = 30.0  # seconds between a watch's full rescans (filesystems that drop events)
