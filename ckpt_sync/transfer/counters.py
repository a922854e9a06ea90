"""Counters for one push or pull, reported by the CLI and the daemon."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class TransferStats:
    files: int = 0
    chunks: int = 0
    chunks_new: int = 0
    bytes_read: int = 0  # plaintext bytes processed
    bytes_new: int = 0  # plaintext bytes of chunks the repository did not have
    bytes_sent: int = 0  # encrypted bytes uploaded (or downloaded, on pull)
    files_skipped: int = 0  # pull: already at the destination, identical (size, then hash or chunk ids)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def finish(self) -> TransferStats:
        self.seconds = time.monotonic() - self.started
        return self

    def throughput(self) -> float:
        """Plaintext bytes per second."""
        return self.bytes_read / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, float | int]:
        fields = asdict(self)
        del fields["started"]  # a monotonic clock reading: meaningless outside this process
        return {**fields, "seconds": round(self.seconds, 3)}
