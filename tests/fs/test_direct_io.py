"""Files written and read around the page cache (ckpt_sync/direct_io.py): exact bytes whatever the
sizes, alignments and buffers; the cache really bypassed where the file system allows it; the
buffered fallback when it refuses, before or after the first write; errors from the background
writer reach the caller; and the pull and push that use it stay exact and durable."""

from __future__ import annotations

import errno
import os
import random

import pytest

from ckpt_sync.fs import direct_io
from ckpt_sync.fs.direct_io import ALIGN, DIRECT_MIN, SequentialWriter, aligned_buffer, is_aligned, read_file_into


def _cached(path) -> bool:
    """Whether the first block of ``path`` is in the page cache (a read that may not wait for the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(ALIGN)], 0, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _pieces(data: bytes, rng: random.Random, kind: str):
    """``data`` cut at random places, handed over as ``kind`` buffers (aligned, bytes, read-only, views)."""
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 7, ALIGN - 1, ALIGN, ALIGN + 3, 65536, 1 << 20, 3 * (1 << 20) + 5, 9 << 20])
        piece = data[pos : pos + n]
        pos += len(piece)
        if kind == "aligned":
            buf = aligned_buffer(len(piece))
            buf[: len(piece)] = piece
            yield memoryview(buf)[: len(piece)]
        elif kind == "readonly":
            yield memoryview(piece)
        elif kind == "bytearray":
            yield bytearray(piece)
        else:
            yield piece


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("kind", ["aligned", "bytes", "readonly", "bytearray"])
def test_sequential_writes_are_exact_whatever_the_pieces(tmp_path, background, kind):
    rng = random.Random(f"{kind}-{background}")
    for size in (0, 1, ALIGN - 1, ALIGN, ALIGN + 1, DIRECT_MIN + 17, (12 << 20) + 4095):
        data = rng.randbytes(size)
        path = tmp_path / f"f-{size}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with SequentialWriter(fd, staging=1 << 20, background=background) as writer:
                for piece in _pieces(data, rng, kind):
                    writer.write(piece)
                assert writer.finish() == size
        finally:
            os.close(fd)
        assert path.stat().st_size == size
        assert path.read_bytes() == data


def test_a_preallocated_file_ends_at_its_size(tmp_path):
    """Pull allocates the whole file first; the padded last block must not leave it longer."""
    data = random.Random(1).randbytes((5 << 20) + 123)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, len(data))
        with SequentialWriter(fd, background=True) as writer:
            writer.write(data)
            writer.finish()
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_direct_writes_leave_nothing_in_the_page_cache(tmp_path):
    data = random.Random(2).randbytes(8 << 20)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = SequentialWriter(fd)
        if not writer.direct:
            pytest.skip("this file system refuses O_DIRECT")
        buf = aligned_buffer(len(data))
        buf[:] = data
        writer.write(buf)
        writer.finish()
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not _cached(path)
    assert path.read_bytes() == data  # and what is on the disk is right


def test_a_file_system_refusing_o_direct_gets_buffered_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(direct_io, "_set_direct", lambda fd, on: False)
    data = random.Random(3).randbytes((3 << 20) + 5)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with SequentialWriter(fd, background=True) as writer:
            assert not writer.direct
            writer.write(data)
            writer.finish()
    finally:
        os.close(fd)
    assert path.read_bytes() == data


@pytest.mark.parametrize("background", [False, True])
def test_o_direct_refused_at_a_later_write_falls_back_without_losing_bytes(tmp_path, monkeypatch, background):
    """Some file systems accept the flag and refuse the I/O (EINVAL); what was staged is still written."""
    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 3 and _is_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = random.Random(4).randbytes((7 << 20) + 999)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with SequentialWriter(fd, staging=1 << 20, background=background) as writer:
            if not writer.direct:
                pytest.skip("this file system refuses O_DIRECT")
            for piece in _pieces(data, random.Random(5), "bytes"):
                writer.write(piece)
            writer.finish()
            assert not writer.direct
    finally:
        os.close(fd)
    assert calls["n"] > 3
    assert path.read_bytes() == data


def _is_direct(fd: int) -> bool:
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_a_background_write_error_reaches_the_caller(tmp_path, monkeypatch):
    real = os.pwrite

    def pwrite(fd, data, offset):
        if offset >= 2 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as err, SequentialWriter(fd, staging=1 << 20, background=True) as writer:
            for _ in range(8):
                writer.write(bytes(1 << 20))
            writer.finish()
        assert err.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_leaving_early_waits_for_every_background_write(tmp_path, monkeypatch):
    """An error in the caller must not close the file under a write still running."""
    import threading
    import time

    real, running = os.pwrite, threading.Event()
    finished: list[int] = []
    in_flight = [0]

    def slow_pwrite(fd, data, offset):
        in_flight[0] += 1
        running.set()
        time.sleep(0.2)
        n = real(fd, data, offset)
        finished.append(offset)
        in_flight[0] -= 1
        return n

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(RuntimeError), SequentialWriter(fd, staging=1 << 20, background=True) as writer:
            writer.write(bytes(2 << 20))
            running.wait(5)
            raise RuntimeError("the caller failed")
        handed, still_running = len(finished), in_flight[0]
    finally:
        os.close(fd)
    assert handed == 2 and still_running == 0  # both writes were done when the writer let go: none can follow


@pytest.mark.parametrize("state", ["cached", "on disk", "half cached"])
def test_reads_are_exact_from_the_cache_the_disk_or_both(tmp_path, state):
    data = random.Random(state).randbytes((6 << 20) + 77)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with SequentialWriter(fd, direct=state != "cached") as writer:
            writer.write(data)
            writer.finish()
        os.fsync(fd)
    finally:
        os.close(fd)
    if state == "half cached":
        with open(path, "rb") as f:
            f.read(len(data) // 2 + 1000)
    out = aligned_buffer(len(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        view = read_file_into(fd, len(data), out)
    finally:
        os.close(fd)
    assert bytes(view) == data


def test_reads_into_unaligned_or_short_buffers_and_of_shrunk_files(tmp_path):
    data = random.Random(9).randbytes((2 << 20) + 3)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert bytes(read_file_into(fd, len(data), bytearray(len(data)))) == data  # unaligned memory
        assert (
            bytes(read_file_into(fd, len(data), memoryview(aligned_buffer(len(data)))[: len(data)])) == data
        )  # no room
        os.truncate(path, 1 << 20)  # the file shrank after its size was taken: what is there, no more
        assert bytes(read_file_into(fd, len(data), aligned_buffer(len(data)))) == data[: 1 << 20]
    finally:
        os.close(fd)


def test_push_and_pull_leave_big_files_out_of_the_page_cache(tmp_path, key, repo_url, repo_dir, cli):
    """The chunks a push stores and the file a pull restores skip the cache (where the file system
    allows it), and both are exact; a small file in the same checkpoint goes through the cache."""
    probe = tmp_path / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if not SequentialWriter(fd).direct:
            pytest.skip("this file system refuses O_DIRECT")
    finally:
        os.close(fd)
    src = tmp_path / "ckpt"
    src.mkdir()
    big = random.Random(11).randbytes((9 << 20) + 12345)
    (src / "model.bin").write_bytes(big)
    (src / "meta.json").write_text('{"step": 3}')
    cli("push", "--repo", repo_url, str(src), "--chunk-size", "2M", check=True)
    chunks = [p for p in (repo_dir / "chunks").rglob("*") if p.is_file()]
    large = [p for p in chunks if p.stat().st_size >= DIRECT_MIN]
    assert large and not any(_cached(p) for p in large)
    out = tmp_path / "out"
    cli("pull", "--latest", "--repo", repo_url, "--to", str(out), check=True)
    restored = out / "ckpt" / "model.bin"
    assert not _cached(restored)
    assert restored.read_bytes() == big
    assert (out / "ckpt" / "meta.json").read_text() == '{"step": 3}'


def test_token_buffers_suit_the_store(tmp_path, key):
    """Aligned for the local provider, behind its wrappers (O_DIRECT from the buffer); exact
    bytearrays for the cloud stores, which the S3 SDK sends without a copy (providers/s3.py ``request_body``)."""
    from ckpt_sync.providers import azure, gcs, s3

    from ckpt_sync.api import open_repository

    repo = open_repository(str(tmp_path / "repo"), create=True)
    chunk = 8 << 20
    buf = repo.token_buffers(1, chunk).acquire()
    assert is_aligned(memoryview(buf)) and len(buf) >= repo.format.max_token_size(chunk)
    clouds = (s3.S3Provider, azure.AzureBlobProvider, gcs.GCSProvider)
    assert not any(getattr(cls, "aligned_buffers", False) for cls in clouds)
    repo.provider.aligned_buffers = False  # as the wrapper around a cloud store says
    buf = repo.token_buffers(1, chunk).acquire()
    assert isinstance(buf, bytearray) and len(buf) == repo.format.max_token_size(chunk)
    part = memoryview(buf)[: len(buf) - 100]  # a smaller chunk's token: a part of the buffer
    assert s3.request_body(part) is part  # sent as it is, never copied


@pytest.mark.parametrize("background", [False, True])
def test_whole_blocks_go_from_the_callers_buffers_and_each_is_released_once_after(tmp_path, monkeypatch, background):
    """Pull's pattern: each chunk decrypted into an aligned buffer at its file offset modulo ALIGN.
    Its whole blocks are written from that buffer (no copy), ``release`` comes once per buffer, and
    only when the writer is done with it: a buffer scribbled over as soon as it is released (as the
    pool reuses it) leaves the file exact."""
    real, big_writes = os.pwrite, []

    def pwrite(fd, data, offset):
        if len(data) > 64 << 10:  # larger than the staging buffer: straight from a caller's buffer
            big_writes.append(len(data))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    rng = random.Random(f"shifted-{background}")
    data = rng.randbytes((20 << 20) + 1234)
    path = tmp_path / "f"
    released: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with SequentialWriter(fd, staging=64 << 10, background=background) as writer:
            if not writer.direct:
                pytest.skip("this file system refuses O_DIRECT")
            offset, index = 0, 0
            while offset < len(data):
                piece = data[offset : offset + rng.choice([1, 4000, 70_001, 1 << 20, 3_333_333])]
                buf = aligned_buffer(len(piece) + ALIGN)
                shift = offset % ALIGN
                buf[shift : shift + len(piece)] = piece

                def release(buf=buf, index=index):
                    released.append(index)
                    buf[:] = b"\xee" * len(buf)  # reused at once

                writer.write(memoryview(buf)[shift : shift + len(piece)], release=release)
                offset, index = offset + len(piece), index + 1
            writer.finish()
    finally:
        os.close(fd)
    assert sorted(released) == list(range(index))
    assert path.read_bytes() == data
    assert sum(big_writes) > len(data) * 0.8
