"""Distributed tests: real gloo process groups, one process per rank, each in its own folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("torch.distributed.fsdp")
