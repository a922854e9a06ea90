"""A restore from a local folder asks the OS to read the next chunk objects ahead (a cold restore
then overlaps its reads with decrypting and writing); the restored bytes are the same."""

from __future__ import annotations

import base64
import os

from ckpt_sync.providers.local import LocalProvider
from ckpt_sync.providers.wrapper import WrappingProvider

from ckpt_sync.format.chunking import ChunkPolicy
from ckpt_sync.format.crypto import KeyRing
from ckpt_sync.format.layout import chunk_key
from ckpt_sync.format.repository import Repository
from ckpt_sync.transfer import restore as restore_module
from ckpt_sync.transfer.push import push_path
from ckpt_sync.transfer.restore import pull


class Hints(WrappingProvider):
    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.hinted: list[list[str]] = []

    def read_ahead(self, keys: list[str]) -> None:
        self.hinted.append(list(keys))
        super().read_ahead(keys)


def test_a_restore_reads_its_chunks_ahead_in_order_and_exactly(tmp_path, key, monkeypatch):
    keys = KeyRing([base64.urlsafe_b64decode(key)])
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(40 * 64 << 10))  # 40 chunks of 64 KiB
    m, _ = push_path(
        Repository.open(LocalProvider(tmp_path / "repo"), keys, create=True), src, policy=ChunkPolicy.of_size(64 << 10)
    )
    monkeypatch.setattr(restore_module, "READ_AHEAD", 8 * (64 << 10))  # eight chunks ahead
    hints = Hints(LocalProvider(tmp_path / "repo"))
    pull(Repository.open(hints, keys), tmp_path / "out", selector=m.id)
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    order = [chunk_key(c.id) for c in m.files[0].chunks]
    assert [k for batch in hints.hinted for k in batch] == order  # each once, in file order
    assert len(hints.hinted) > 1 and all(len(batch) <= 8 for batch in hints.hinted)  # a window, not all at once
