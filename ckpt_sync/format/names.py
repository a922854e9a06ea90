"""CheckpointManager's file name, ``checkpoint_{session_id}_{global_step}.pt``: a hint of a
checkpoint's training position when neither the caller nor the file's content says."""

from __future__ import annotations

import re

MANAGER_NAME = re.compile(r"^checkpoint_(?P<session>.+)_(?P<step>\d+)\.pt$")


def parse_checkpoint_name(name: str) -> tuple[str | None, int | None]:
    """``checkpoint_{session_id}_{global_step}.pt`` -> (session_id, global_step), else (None, None)."""
    m = MANAGER_NAME.match(name)
    if not m:
        return None, None
    return m.group("session"), int(m.group("step"))
