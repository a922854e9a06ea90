"""Peak memory of push and pull does not grow with the checkpoint's size (bounded pipeline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import MEASURE_CLI

# VmHWM is this address space's peak RSS; ru_maxrss would carry the parent's peak across exec.


def _peak_mib(*args: str) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE_CLI, *args], capture_output=True, text=True, check=True).stdout
    return int(out.split("MAXRSS_KIB")[1].split()[0]) / 1024


def _write(path, size):
    block = os.urandom(8 << 20)
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            f.write(bytes([i % 256]) + block[1:])


def test_peak_rss_is_bounded_and_does_not_grow_with_size(tmp_path, key, repo_url):
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    _write(small, 64 << 20)
    _write(large, 512 << 20)
    peaks = {}
    for f in (small, large):
        peaks[("push", f.name)] = _peak_mib("push", "--repo", repo_url, str(f))
        peaks[("pull", f.name)] = _peak_mib("pull", f.name, "--repo", repo_url, "--to", str(tmp_path / "out"))
    assert max(peaks.values()) < 300, peaks
    # 8x the data may not cost more than a little extra memory (allocator noise), let alone 8x.
    for verb in ("push", "pull"):
        assert peaks[(verb, "large.bin")] < peaks[(verb, "small.bin")] + 64, peaks


# torch.load straight from the repository: peak RSS over the load is the tensors plus the reader's
# cache budget, never a copy of the file. The peak is reset (clear_refs) just before the load.
LOAD_VIA_OPEN = """
import json, sys
import torch
import ckpt_sync

def status(field):
    return int([l for l in open("/proc/self/status") if l.startswith(field)][0].split()[1]) * 1024

f = ckpt_sync.open(sys.argv[1], "latest", cache_bytes=int(sys.argv[2]))
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
state = torch.load(f, weights_only=True, map_location="cpu")
peak = status("VmHWM:")
tensors = sum(t.untyped_storage().nbytes() for t in state.values())
print(json.dumps({"before": before, "peak": peak, "tensors": tensors, "verified": f.verified}))
"""


def _load_via_open_peak(tmp_path, repo_url, mib: int, cache_bytes: int) -> dict:
    import torch

    import ckpt_sync

    ckpt = tmp_path / "weights.pt"
    tensor_mib = 24
    gen = torch.Generator().manual_seed(0)
    torch.save({f"layer{i}": torch.randn(tensor_mib << 18, generator=gen) for i in range(mib // tensor_mib)}, ckpt)
    ckpt_sync.push(ckpt, repo_url)
    ckpt.unlink()  # no local copy
    out = subprocess.run(
        [sys.executable, "-c", LOAD_VIA_OPEN, repo_url, str(cache_bytes)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_torch_load_via_open_peaks_at_the_tensors_plus_the_cache(tmp_path, key, repo_url):
    cache = 32 << 20
    m = _load_via_open_peak(tmp_path, repo_url, 48, cache)
    assert m["verified"] and m["tensors"] >= 48 << 20
    print("open() MiB:", {k: round(m[k] / 2**20, 1) for k in ("before", "peak", "tensors")}, "cache", cache >> 20)
    assert m["peak"] - m["before"] <= m["tensors"] + cache, m


@pytest.mark.slow
def test_torch_load_of_300_mb_via_open_peaks_at_the_tensors_plus_the_cache(tmp_path, key, repo_url):
    cache = 64 << 20
    m = _load_via_open_peak(tmp_path, repo_url, 300, cache)
    assert m["verified"] and m["tensors"] >= 288 << 20
    print("open() MiB:", {k: round(m[k] / 2**20, 1) for k in ("before", "peak", "tensors")}, "cache", cache >> 20)
    assert m["peak"] - m["before"] <= m["tensors"] + cache, m
