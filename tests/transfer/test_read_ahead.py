"""A restore from a local folder reads the next chunk objects with threads of its own, ahead of the
workers that decrypt them, and reads them around the page cache: a cold restore neither waits on the
disk chunk by chunk nor fills the cache with a repository it reads once. The bytes are the same,
and a damaged chunk read ahead still stops the restore with the chunk named."""

from __future__ import annotations

import base64
import ctypes
import mmap
import os
import threading

import pytest
from ckpt_sync.providers.local import LocalProvider
from ckpt_sync.providers.wrapper import WrappingProvider

from ckpt_sync.errors import IntegrityError
from ckpt_sync.format.chunking import ChunkPolicy
from ckpt_sync.format.crypto import KeyRing
from ckpt_sync.format.layout import chunk_key
from ckpt_sync.format.repository import Repository
from ckpt_sync.fs.direct_io import DIRECT_MIN
from ckpt_sync.transfer import restore as restore_module
from ckpt_sync.transfer.push import push_path
from ckpt_sync.transfer.restore import pull

CHUNK = 256 << 10


class Reads(WrappingProvider):
    """Records which thread read which object, and how many reads were running at once."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.reads: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def get_into(self, key: str, out: bytearray):
        with self._lock:
            self.reads.append((threading.current_thread().name, key))
        return super().get_into(key, out)


def _pushed(tmp_path, key, chunks: int, size: int = CHUNK):
    keys = KeyRing([base64.urlsafe_b64decode(key)])
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(chunks * size))
    repo = Repository.open(LocalProvider(tmp_path / "repo"), keys, create=True)
    m, _ = push_path(repo, src, policy=ChunkPolicy.of_size(size))
    return keys, src, m


def test_a_local_restore_reads_ahead_on_its_own_threads_in_order_exactly_once(tmp_path, key):
    keys, src, m = _pushed(tmp_path, key, 24)
    reads = Reads(LocalProvider(tmp_path / "repo"))
    pull(Repository.open(reads, keys), tmp_path / "out", selector=m.id)
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    chunk_reads = [(t, k) for t, k in reads.reads if k.startswith("chunks/")]
    assert [k for _, k in chunk_reads] == [chunk_key(c.id) for c in m.files[0].chunks]
    assert {t.split("_")[0] for t, _ in chunk_reads} == {"ckpt-read"}
    assert not [t for t in threading.enumerate() if t.name.startswith("ckpt-read")]  # the readers are gone


def test_a_damaged_chunk_read_ahead_stops_the_restore_and_names_it(tmp_path, key):
    keys, _, m = _pushed(tmp_path, key, 24)
    victim = m.files[0].chunks[13]
    path = tmp_path / "repo" / chunk_key(victim.id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        pull(Repository.open(LocalProvider(tmp_path / "repo"), keys), tmp_path / "out", selector=m.id)
    assert victim.id[:16] in str(err.value)
    assert not (tmp_path / "out" / "big.bin").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("ckpt-read")]


def _resident_pages(path) -> int:
    """How many of ``path``'s pages the page cache holds (mincore over a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0, os.strerror(ctypes.get_errno())
        resident = sum(v & 1 for v in vec)
        del addr
    return resident


def _o_direct_works(folder) -> bool:
    probe = folder / ".probe"
    probe.write_bytes(b"x" * 4096)
    try:
        os.close(os.open(probe, os.O_RDONLY | getattr(os, "O_DIRECT", 0)))
        return hasattr(os, "O_DIRECT") and hasattr(os, "RWF_NOWAIT")
    except OSError:
        return False
    finally:
        probe.unlink()


def test_a_cold_restore_reads_the_repository_around_the_page_cache(tmp_path, key):
    keys, src, m = _pushed(tmp_path, key, 8, 2 * DIRECT_MIN)  # objects large enough to be read with O_DIRECT
    if not _o_direct_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT (tmpfs?): reads go through the cache there by design")
    objects = [tmp_path / "repo" / chunk_key(c.id) for c in m.files[0].chunks]
    for path in objects:  # cold: out of the cache, as on a fresh machine
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    before = sum(_resident_pages(p) for p in objects)
    pull(Repository.open(LocalProvider(tmp_path / "repo"), keys), tmp_path / "out", selector=m.id)
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    total = sum(-(-p.stat().st_size // mmap.PAGESIZE) for p in objects)
    after = sum(_resident_pages(p) for p in objects)
    # at most the one page per object that the cache probe asks for (and what was there before)
    assert after - before <= len(objects), f"{after - before} of {total} pages came into the cache"


def test_reading_ahead_is_bounded(tmp_path, key, monkeypatch):
    """No more than LOCAL_READS_AHEAD chunk objects are read beyond those the workers hold."""
    keys, src, m = _pushed(tmp_path, key, 24)
    monkeypatch.setattr(restore_module, "LOCAL_READS_AHEAD", 2)
    gate = threading.Event()
    opened: list[str] = []

    class Slow(Reads):
        def get_into(self, key: str, out: bytearray):
            got = super().get_into(key, out)
            if key.startswith("chunks/"):
                opened.append(key)
                if len(opened) == 1:
                    gate.wait(5)
            return got

    slow = Slow(LocalProvider(tmp_path / "repo"))
    repo = Repository.open(slow, keys)
    done = threading.Thread(target=pull, args=(repo, tmp_path / "out"), kwargs={"selector": m.id})
    done.start()
    # the first read is held: the other readers may run ahead by at most the bound
    deadline = threading.Event()
    deadline.wait(1.0)
    ahead = len(opened)
    gate.set()
    done.join(60)
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    assert ahead <= 1 + 2
