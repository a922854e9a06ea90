"""One rank of a training run with a rank-aware CheckpointManager (real gloo group, own folder).

``python manager_rank.py SPEC_JSON``. ``mode`` is ``ddp`` (DistributedDataParallel: replicated
state), ``replicated`` (the same, gradients all-reduced per tensor: DDP regroups its gradient
buckets after its first step, so the summation order, and the last bit of the weights, differ
between a run and its resumption) or ``fsdp`` (``fully_shard``: sharded state). Every rank samples
its own batches and dropout from its own seeded RNG, so a bit-exact resume needs every rank's RNG
state as well as the weights.
Each completed step appends ``step loss.hex()`` to ``losses.txt``; when the manager has seen a
signal on this rank before ``maybe_save``, the step goes to ``signal_seen_at``. ``width`` sizes the
hidden layer (a large one makes a large checkpoint). ``result.json`` holds the step the rank
started at and a digest of its model and optimizer state at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ckpt_sync.training import CheckpointManager


def state_digest(model: torch.nn.Module, opt: torch.optim.Optimizer) -> str:
    """A hash of every tensor of the model's and the optimizer's state as this rank holds it (the
    same on every rank of replicated state)."""
    h = hashlib.sha256()

    def add(obj) -> None:
        if isinstance(obj, torch.Tensor):
            obj = obj.to_local() if hasattr(obj, "to_local") else obj  # a DTensor: this rank's shard
            h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                add(obj[k])
        elif isinstance(obj, list | tuple):
            for x in obj:
                add(x)
        else:
            h.update(repr(obj).encode())

    add(model.state_dict())
    add(opt.state_dict())
    return h.hexdigest()


def main() -> None:
    spec = json.loads(sys.argv[1])
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    width = spec.get("width", 32)
    model: torch.nn.Module = torch.nn.Sequential(
        torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(width, 1)
    )
    if spec["mode"] == "ddp":
        train_model: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model)
    elif spec["mode"] == "replicated":  # plain data parallel: the gradients all-reduced by hand, per tensor
        train_model = model
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        train_model = fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-2)
    torch.manual_seed(1000 + rank)  # this rank's data and dropout stream
    random.seed(1000 + rank)
    folder = Path(spec.get("directory") or "ckpt")
    mgr = CheckpointManager(
        folder,
        model=train_model,
        optimizer=opt,
        interval_s=None,
        every_n_steps=spec.get("every"),
        max_keep=spec.get("max_keep", 5),
        async_save=spec.get("async", True),
        repo=spec.get("repo"),
        direct=spec.get("direct", False),
        on_signal="exit",
        exit_code=0,
        session_id=spec.get("session"),
    )
    info = mgr.recover()
    start = info["start_step"] + 1 if info else 1
    with mgr, open("losses.txt", "a") as losses:
        for step in range(start, spec["steps"] + 1):
            x = torch.randn(16, 8) * (1 + random.random())
            out = train_model(x)
            out.pow(2).mean().backward()
            if spec["mode"] == "replicated":
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
            opt.step()
            opt.zero_grad()
            # Reported with an exactly rounded sum: a vectorised reduction's order (and its last bit)
            # depends on where the allocator put the tensor, which differs in a resumed process.
            squares = [v * v for v in out.detach().double().flatten().tolist()]
            loss = math.fsum(squares) / len(squares)
            losses.write(f"{step} {loss.hex()}\n")
            losses.flush()
            Path("progress").write_text(str(step))
            if mgr.emergency_requested and not Path("signal_seen_at").exists():
                Path("signal_seen_at").write_text(str(step))
            mgr.maybe_save(step, epoch=0, loss=loss)
            time.sleep(spec.get("sleep", 0))
    result = {"rank": rank, "start": start, "digest": state_digest(model, opt)}
    Path("result.json").write_text(json.dumps(result))
    # No rank tears its process group down while another still has gloo work in flight: once in
    # CI, rank 1 of an FSDP run aborted in gloo's teardown ("terminate called without an active
    # exception") after rank 0 had destroyed its group and exited.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
