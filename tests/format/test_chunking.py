"""Chunk plans: always cover the file exactly; cut torch zips and safetensors at tensor boundaries."""

from __future__ import annotations

import io
import os

import pytest

from ckpt_sync.format.chunking import ChunkPolicy, plan_chunks

POLICY = ChunkPolicy(chunk_size=64 * 1024, min_size=16 * 1024)


def _plan(data: bytes, policy: ChunkPolicy = POLICY):
    spans = plan_chunks(io.BytesIO(data), len(data), policy)
    pos = 0
    for off, length in spans:
        assert off == pos and 0 < length <= policy.chunk_size
        pos += length
    assert pos == len(data)
    return spans


def _tensor_bytes(data: bytes, spans) -> set[bytes]:
    return {data[o : o + n] for o, n in spans}


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 300_000])
def test_plain_files_are_cut_at_fixed_size(size):
    _plan(os.urandom(size))


def test_torch_zip_tensors_keep_their_chunks_when_the_pickle_grows(tmp_path):
    import torch

    weights = {f"w{i}": torch.randn(100, 100 + i) for i in range(4)}  # ~40 KiB each: above min_size
    buf_a, buf_b = io.BytesIO(), io.BytesIO()
    torch.save({"model": weights, "history": [1.0]}, buf_a)
    torch.save({"model": weights, "history": [1.0] * 333}, buf_b)  # shifts every later offset
    a, b = buf_a.getvalue(), buf_b.getvalue()
    chunks_a, chunks_b = _tensor_bytes(a, _plan(a)), _tensor_bytes(b, _plan(b))
    for w in weights.values():
        raw = w.numpy().tobytes()
        assert raw in chunks_a and raw in chunks_b  # each tensor's bytes are exactly one chunk


def test_truncated_or_malformed_archives_fall_back_to_fixed_cuts(tmp_path):
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.randn(300, 300)}, buf)
    data = buf.getvalue()
    for broken in (data[: len(data) // 2], data[:-30], b"PK\x03\x04" + os.urandom(200_000)):
        _plan(broken)


def test_safetensors_cut_at_header_and_tensors():
    import torch
    from safetensors.torch import save

    tensors = {"a": torch.randn(128, 128), "b": torch.randn(64, 256), "c": torch.zeros(3)}
    data = save(tensors)
    chunks = _tensor_bytes(data, _plan(data))
    assert tensors["a"].numpy().tobytes() in chunks and tensors["b"].numpy().tobytes() in chunks


def test_large_tensors_are_cut_inside_at_chunk_size():
    import torch

    buf = io.BytesIO()
    torch.save({"big": torch.randn(1000, 100)}, buf)  # 400 KB > 64 KiB chunks
    data = buf.getvalue()
    spans = _plan(data)
    assert sum(1 for _, n in spans if n == POLICY.chunk_size) >= 6
