"""One rank of a real gloo process group saving or loading mostly replicated state through ckpt_sync.dcp.

``python fanout_rank.py ACTION SPEC_JSON`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set, in
the rank's own working folder. The state: ``tensors`` replicated tensors of ``tensor_mib`` MiB each
(the same on every rank, seeded), a DTensor sharded over the ranks (``shard_kib`` KiB per rank) and
a bytes item. Actions:

- ``save``: ``dcp.save`` it through the Writer.
- ``load``: zeros of the same shapes, ``dcp.load`` through the Reader (``fan_out``,
  ``budget``), then compare every tensor with what was saved.

Each rank writes ``result.json``: whether every tensor came back exactly, the Reader's counters
and its fan-out counters.

Test-only faults, set by the test in the environment (never by default):

- ``CKPT_SYNC_TEST_FLIP_SENT_CHUNK_ON_RANK=R``: rank R flips a byte of the first chunk of
  everything it sends its peers (a faulty or hostile peer);
- ``CKPT_SYNC_TEST_FAIL_SHARE_GETS_ON_RANK=R``: rank R's store refuses every chunk read R makes
  for its share of the rounds (on the fan-out's share threads): its peers must read those chunks
  from the store themselves.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ckpt_sync.providers import open_provider
from ckpt_sync.providers.wrapper import WrappingProvider
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from ckpt_sync.dcp import Reader, Writer
from ckpt_sync.errors import TransientStorageError
from ckpt_sync.format.keys import load_keyring
from ckpt_sync.format.repository import Repository
from ckpt_sync.integrations import fan_out

FLIP = "CKPT_SYNC_TEST_FLIP_SENT_CHUNK_ON_RANK"
FAIL = "CKPT_SYNC_TEST_FAIL_SHARE_GETS_ON_RANK"


class FailingShareGets(WrappingProvider):
    """Refuses the chunk reads this rank makes for its share of the fan-out (a store error)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.refused = 0
        self._lock = threading.Lock()

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        if key.startswith("chunks/") and threading.current_thread().name.startswith("ckpt-fanout-share"):
            with self._lock:
                self.refused += 1
            raise TransientStorageError(f"injected: {key} not readable now")
        return super().get(key, start, length)


def flip_what_this_rank_sends() -> None:
    original = fan_out.Exchange.pack

    def corrupted(self, theirs, fetched):
        out = original(self, theirs, fetched)
        if out[0]:  # the first chunk was fetched: flip its first byte
            out[len(theirs)] ^= 0xFF
        return out

    fan_out.Exchange.pack = corrupted


def build_state(spec: dict, mesh, *, zeros: bool) -> dict:
    world = dist.get_world_size()
    n = spec["tensor_mib"] * (1 << 20) // 4
    state: dict = {}
    for i in range(spec["tensors"]):
        g = torch.Generator().manual_seed(i)
        state[f"replicated.{i}"] = torch.zeros(n) if zeros else torch.randn(n, generator=g)
    rows = spec["shard_kib"] * 1024 // (4 * 256)
    g = torch.Generator().manual_seed(99)
    full = torch.zeros(rows * world, 256) if zeros else torch.randn(rows * world, 256, generator=g)
    state["sharded"] = distribute_tensor(full, mesh, [Shard(0)])
    state["extra"] = {"step": -1 if zeros else 7}
    return state


def same(a, b) -> bool:
    if isinstance(a, DTensor):
        return isinstance(b, DTensor) and torch.equal(a.to_local(), b.to_local())
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def main() -> None:
    action, spec = sys.argv[1], json.loads(sys.argv[2])
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    provider = open_provider(spec["repo"])
    failing = None
    if os.environ.get(FAIL) == str(rank):
        provider = failing = FailingShareGets(provider)
    if os.environ.get(FLIP) == str(rank):
        flip_what_this_rank_sends()
    repo = Repository.open(provider, load_keyring(), create=action == "save")
    result: dict = {"rank": rank}
    if action == "save":
        writer = Writer(repo, name=spec["name"], metadata={"global_step": 7})
        dcp.save(build_state(spec, mesh, zeros=False), storage_writer=writer)
        result["stats"] = writer.stats.to_json()
        result["manifest"] = writer.manifest.id if writer.manifest is not None else None
    else:
        state = build_state(spec, mesh, zeros=True)
        reader = Reader(repo, fan_out=spec.get("fan_out"), fan_out_budget=spec.get("budget") or fan_out.DEFAULT_BUDGET)
        dcp.load(state, storage_reader=reader)
        result["exact"] = same(state, build_state(spec, mesh, zeros=False))
        result["stats"] = reader.stats.to_json()
        result["fan_out"] = reader.fan_out_stats.to_json()
        result["manifest"] = reader.manifest.id if reader.manifest is not None else None
        result["refused"] = failing.refused if failing is not None else 0
    Path("result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
