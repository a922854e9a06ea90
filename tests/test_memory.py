"""Peak memory of push and pull does not grow with the checkpoint's size (bounded pipeline)."""

from __future__ import annotations

import os
import subprocess
import sys

# VmHWM is this address space's peak RSS; ru_maxrss would carry the parent's peak across exec.
MEASURE = """
import sys
from ckpt_sync.cli import main
rc = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("MAXRSS_KIB", hwm)
sys.exit(rc)
"""


def _peak_mib(*args: str) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=True).stdout
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
