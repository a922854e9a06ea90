"""Full training state: RNG states, host metadata, and CPU snapshots for background writes.

Everything produced here loads with ``torch.load(weights_only=True)``: tensors, containers and plain
values only (numpy's RNG key is stored as a tensor, not an ndarray, for that reason).
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import platform
import random
import socket
from typing import Any

import torch

log = logging.getLogger("ckpt_sync.training")

try:
    import numpy as np
except ImportError:  # numpy is optional: its RNG state is captured only when it is installed
    np = None  # type: ignore[assignment]

# What torch.load(weights_only=True) accepts besides tensors (checked at save time so that a bad
# value fails the save that adds it, not the recovery weeks later).
_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def capture_rng_state() -> dict[str, Any]:
    """``random_state``: python, numpy (when installed), torch, CUDA (all devices, when available)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if np is not None:
        name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = (str(name), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state["torch_cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a missing part (numpy absent, no GPU here) is skipped with a log line."""
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        if np is None:
            log.warning("checkpoint holds a numpy RNG state but numpy is not installed; not restored")
        else:
            name, key, pos, has_gauss, cached = state["numpy"]
            key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
            np.random.set_state((name, key.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    cuda_states = state.get("torch_cuda") or []
    if cuda_states:
        if not torch.cuda.is_available():
            log.warning("checkpoint holds CUDA RNG states but CUDA is not available here; not restored")
        else:
            n = min(len(cuda_states), torch.cuda.device_count())
            for i in range(n):
                torch.cuda.set_rng_state(cuda_states[i], i)


def _as_python_state(s: Any) -> tuple[Any, ...]:
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def system_metadata() -> dict[str, Any]:
    """``metadata``: host, GPU, CUDA and torch versions (computed once per manager)."""
    cuda = torch.cuda.is_available()
    return {
        "hostname": os.environ.get("COMPUTERNAME") or socket.gethostname(),
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda,
        "pytorch_version": str(torch.__version__),  # TorchVersion would not load weights-only
        "python_version": platform.python_version(),
    }


def gpu_memory() -> int | None:
    """Peak allocated CUDA memory in bytes, for ``training_stats['gpu_memory']``; None without CUDA."""
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


class Snapshotter:
    """Deep CPU copies of state, so later in-place updates (optimizer steps) can never leak into a write.

    Tensors are copied (GPU tensors to the host, through pinned buffers); a tensor reachable twice
    (tied weights) is copied once; plain immutable values are shared; anything else is deep-copied.

    With ``reuse=True`` the host buffers of the previous snapshot are kept and filled in place next
    time (same place in the structure, same shape and dtype). Copying into memory that is already
    mapped avoids the page faults of fresh allocations, which dominate a large snapshot; the price
    is that the "2x memory while saving" stays allocated between saves. The caller must only
    take a new snapshot once the previous one has been written (the manager waits for that).
    """

    def __init__(self, *, reuse: bool = True) -> None:
        self.reuse = reuse
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    def __call__(self, obj: Any) -> Any:
        memo: dict[int, Any] = {}
        fresh: dict[tuple[Any, ...], torch.Tensor] = {}
        pending_cuda = False

        def tensor(x: torch.Tensor, path: tuple[Any, ...]) -> torch.Tensor:
            nonlocal pending_cuda
            t = x.detach()
            buf = self._buffers.get(path)
            plain = t.layout == torch.strided and not t.is_quantized
            if self.reuse and plain and buf is not None and buf.shape == t.shape and buf.dtype == t.dtype:
                out = buf
            elif t.device.type == "cpu" or not plain:
                out = t.to("cpu", copy=True)
                fresh[path] = out
                return out
            else:
                out = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            cuda = t.is_cuda and out.is_pinned()
            out.copy_(t, non_blocking=cuda)
            pending_cuda |= cuda
            fresh[path] = out
            return out

        def copy_(x: Any, path: tuple[Any, ...]) -> Any:
            if isinstance(x, torch.Tensor):
                if id(x) not in memo:
                    memo[id(x)] = tensor(x, path)
                return memo[id(x)]
            if isinstance(x, _PLAIN):
                return x
            if isinstance(x, collections.OrderedDict):
                return collections.OrderedDict((k, copy_(v, (*path, k))) for k, v in x.items())
            if type(x) is dict:
                return {k: copy_(v, (*path, k)) for k, v in x.items()}
            if type(x) in (list, tuple):
                return type(x)(copy_(v, (*path, i)) for i, v in enumerate(x))
            return copy.deepcopy(x)

        result = copy_(obj, ())
        if pending_cuda:
            torch.cuda.synchronize()  # non-blocking device-to-host copies must land before the write reads them
        self._buffers = fresh if self.reuse else {}
        return result


def snapshot(obj: Any) -> Any:
    """A one-off deep CPU copy of ``obj`` (no buffers kept)."""
    return Snapshotter(reuse=False)(obj)


def check_loadable(obj: Any, where: str) -> None:
    """Raise TypeError when ``obj`` holds something ``torch.load(weights_only=True)`` would refuse."""
    # Exact types: a str/float subclass (TorchVersion, numpy.float64) pickles as its own class.
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_loadable(k, f"{where} key")
            check_loadable(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, _CONTAINERS):
        for i, v in enumerate(obj):
            check_loadable(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}: checkpoints hold only tensors, numbers, strings and "
        "dict/list/tuple of them, so that they load safely with torch.load(weights_only=True)"
    )


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensor storages in ``obj`` (each storage once): about what ``torch.save`` of
    it writes, for messages such as how much room a checkpoint needs; never for decisions."""
    seen: set[tuple[str, int]] = set()
    total = 0

    def walk(x: Any) -> None:
        nonlocal total
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = (str(x.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, _CONTAINERS):
            for v in x:
                walk(v)

    walk(obj)
    return total
