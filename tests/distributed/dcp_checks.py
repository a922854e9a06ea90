"""What the DCP tests check about a committed checkpoint, shared by the local and cloud tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ckpt_sync.dcp import METADATA_FILE
from ckpt_sync.format.manifest import Manifest


def chunk_owner(manifest: Manifest) -> dict[str, str]:
    """chunks/<id> key -> the file of the checkpoint holding it."""
    return {f"chunks/{c.id[:2]}/{c.id}": f.path for f in manifest.files for c in f.chunks}


def shard_chunks(manifest: Manifest, folder: Path) -> tuple[dict[str, set[str]], set[str]]:
    """From the pulled folder's DCP metadata: per file, the chunk keys holding sharded tensor data;
    and the chunk keys that hold only whole (replicated) tensors or bytes items."""
    md = FileSystemReader(str(folder)).read_metadata()
    offsets = {}
    for f in manifest.files:
        pos, spans = 0, []
        for c in f.chunks:
            spans.append((pos, pos + c.size, f"chunks/{c.id[:2]}/{c.id}"))
            pos += c.size
        offsets[f.path] = spans
    sharded: dict[str, set[str]] = {}
    other: set[str] = set()
    for index, info in md.storage_data.items():
        entry = md.state_dict_metadata[index.fqn]
        is_shard = isinstance(entry, TensorStorageMetadata) and (
            len(entry.chunks) > 1 or tuple(entry.chunks[0].sizes) != tuple(entry.size)
        )
        for lo, hi, key in offsets[info.relative_path]:
            if lo < info.offset + info.length and info.offset < hi:
                (sharded.setdefault(info.relative_path, set()) if is_shard else other).add(key)
    return sharded, other - {k for keys in sharded.values() for k in keys}


def check_ranged_reads(results: list[dict], manifest: Manifest, folder: Path) -> None:
    """Same world size as the save: each rank fetched its own shards and no other rank's."""
    owner = chunk_owner(manifest)
    sharded, whole_only = shard_chunks(manifest, folder)
    for r in results:
        own = f"__{r['rank']}_0.distcp"
        read = {k for k in r["read"] if k.startswith("chunks/")}
        others = {k for k in read if owner[k] not in (own, METADATA_FILE)}
        assert others <= whole_only, f"rank {r['rank']} fetched another rank's shard chunks"
        assert sharded.get(own, set()) <= read, f"rank {r['rank']} did not fetch all of its own shards"
        own_file = next(f for f in manifest.files if f.path == own)
        shard_bytes = sum(r["read"][k] for k in read if owner[k] != METADATA_FILE)
        # About its share: its own file, plus the few small replicated items it needs.
        assert shard_bytes < own_file.size + 40_000, (r["rank"], shard_bytes, own_file.size)


def check_pulled_folder_loads(folder: Path, reference: Path, tmp: Path) -> None:
    """The pulled folder is a plain DCP checkpoint: DCP's own FileSystemReader loads it exactly."""
    out = tmp / "converted.pt"
    dcp_to_torch_save(str(folder), str(out))
    got = torch.load(out, weights_only=True)
    ref = torch.load(reference, weights_only=True)
    assert got["model"].keys() == ref["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
    for fqn, st in ref["optim"]["state"].items():
        for name, v in st.items():
            assert torch.equal(got["optim"]["state"][fqn][name], v), (fqn, name)
