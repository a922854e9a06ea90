"""One rank of a real gloo process group, run by tests/distributed/launch.py as its own process.

``python dcp_rank.py ACTION SPEC_JSON`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set, in the
rank's own working folder (its "host disk"). Actions:

- ``save``: build the FSDP2-sharded model (``fully_shard`` on CPU), train ``steps`` steps, write the
  full model and optimizer state to ``reference.pt`` (rank 0), and ``dcp.save`` it through the Writer.
- ``load``: a fresh model with other weights, ``dcp.load`` through the Reader, then compare the full
  state with ``reference``.

Each rank writes ``result.json`` in its folder: what it sent and read (a counting provider wrapper).
``pause_after_puts`` makes this rank stop inside ``write_data`` after that many chunk uploads (it
writes ``paused`` and sleeps) so the test can ``kill -9`` it there.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ckpt_sync.providers import open_provider
from ckpt_sync.providers.wrapper import WrappingProvider
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from ckpt_sync.dcp import Reader, Writer
from ckpt_sync.format.keys import load_keyring
from ckpt_sync.format.repository import Repository


class CountingProvider(WrappingProvider):
    """Counts bytes fetched and objects stored, per key; optionally stops for good after N chunk puts."""

    def __init__(self, inner, pause_after_puts: int | None = None) -> None:
        super().__init__(inner)
        self.read: Counter[str] = Counter()
        self.puts: list[str] = []
        self.pause_after_puts = pause_after_puts
        self._lock = threading.Lock()

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        data = super().get(key, start, length)
        with self._lock:
            self.read[key] += len(data)
        return data

    def put(self, key: str, data) -> None:
        super().put(key, data)
        if not key.startswith("chunks/"):
            return
        with self._lock:
            self.puts.append(key)
            n = len(self.puts)
        if self.pause_after_puts is not None and n >= self.pause_after_puts:
            # Renamed into place so the test never reads a half-written pid.
            Path("paused.tmp").write_text(str(os.getpid()))
            os.replace("paused.tmp", "paused")
            while True:  # inside write_data, with chunks stored and the commit not reached: kill -9 me
                time.sleep(1)


def build_model(seed: int, width: int, mesh) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 8),
    )
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train(model, opt, steps: int) -> None:
    g = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def full_state(model, opt) -> dict:
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": msd, "optim": osd}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def main() -> None:
    action, spec = sys.argv[1], json.loads(sys.argv[2])
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    pause = spec.get("pause_after_puts", {}).get(str(rank))
    provider = CountingProvider(open_provider(spec["repo"]), pause)
    repo = Repository.open(provider, load_keyring(), create=action == "save")
    result: dict = {"rank": rank, "world": world}
    if action == "save":
        model, opt = build_model(0, spec["width"], mesh)
        train(model, opt, spec["steps"])
        ref = full_state(model, opt)
        if rank == 0:
            torch.save(ref, spec["reference"])
        msd, osd = get_state_dict(model, opt)
        writer = Writer(repo, name=spec["name"], metadata={"global_step": spec["steps"]}, chunk_size=64 * 1024)
        try:
            dcp.save({"model": msd, "optim": osd, "extra": {"steps": spec["steps"]}}, storage_writer=writer)
            result["ok"] = True
        except Exception as err:  # a peer died: DCP reports it on every rank
            result["ok"] = False
            result["error"] = f"{type(err).__name__}: {err}"[:2000]
        result["manifest"] = writer.manifest.id if writer.manifest is not None else None
        result["stats"] = writer.stats.to_json()
    else:
        model, opt = build_model(99, spec["width"], mesh)  # other weights and fresh optimizer state
        train(model, opt, 1)
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd, "extra": {"steps": -1}}
        reader = Reader(repo, checkpoint=spec.get("checkpoint", "latest"))
        dcp.load(state, storage_reader=reader)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        got = full_state(model, opt)
        if rank == 0:
            ref = torch.load(spec["reference"], weights_only=True)
            result["exact"] = same(ref, got)
        result["extra"] = state["extra"]
        result["manifest"] = reader.manifest.id if reader.manifest is not None else None
    result["read"] = dict(provider.read)
    result["puts"] = provider.puts
    Path("result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
