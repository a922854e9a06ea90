"""What each repository format and chunk encoding costs, side by side in one run (docs/FORMAT.md).

    python bench/encoding.py [--size 512M] [--repeat 3] [--dir PATH]

For a float32 and a bfloat16 checkpoint (a real ``torch.save`` of a model with Adam state), pushes
into fresh local repositories created as format 1, format 2, format 2 + ``--pad``, format 2 +
``--compression zstd``, and format 2 + both, and pulls back. Prints, per encoding: bytes stored
(relative to the checkpoint), push and pull CPU seconds per GiB (user + sys of the child; medians of
interleaved repeats) and peak RSS. Then the incremental case: a second save with one layer changed,
bytes sent with per-chunk compression against ``CheckpointManager(compression=True)``'s
whole-file zstd (which the chunker can only cut at fixed offsets).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Measured, MiB, make_checkpoint, parse_size, print_table, run_python  # noqa: E402

ENCODINGS = {
    "format 1": ["--format", "1"],
    "format 2": [],
    "format 2 + pad": ["--pad"],
    "format 2 + zstd": ["--compression", "zstd"],
    "format 2 + pad + zstd": ["--pad", "--compression", "zstd"],
}


def _bf16(src: Path, dst: Path) -> Path:
    """The same checkpoint with every floating tensor as bfloat16 (as mixed-precision runs save)."""
    import torch

    state = torch.load(src, weights_only=True)

    def conv(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.to(torch.bfloat16)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(conv(state), dst)
    return dst


def _stored(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "chunks").rglob("*") if p.is_file())


def _median_cpu(runs: list[Measured]) -> Measured:
    return sorted(runs, key=lambda m: m.cpu)[len(runs) // 2]


def _one_layer_changed(src: Path, dst: Path) -> Path:
    import torch

    state = torch.load(src, weights_only=True)
    model = state["model_state_dict"]
    first = next(k for k in model if k.endswith("weight"))
    model[first] = torch.randn_like(model[first])
    torch.save(state, dst)
    return dst


def _zst(src: Path, dst: Path) -> Path:
    import zstandard

    with open(src, "rb") as f, open(dst, "wb") as out:
        zstandard.ZstdCompressor(level=1).copy_stream(f, out)
    return dst


def _sent(proc: Measured) -> int:
    import json

    text = proc.stdout[: proc.stdout.rfind("PEAK_RSS_KIB")]
    return json.loads(text)[0]["stats"]["bytes_sent"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="512M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-enc-", dir=args.dir))
    from cryptography.fernet import Fernet

    env = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode(), "XDG_CACHE_HOME": str(work / "cache")}
    try:
        f32 = make_checkpoint(work / "f32" / "checkpoint_s_1.pt", size)
        bf16 = _bf16(f32, work / "bf16" / "checkpoint_s_1.pt")
        for label, ckpt in (("float32", f32), ("bfloat16", bf16)):
            n = ckpt.stat().st_size
            runs: dict[str, tuple[list[Measured], list[Measured]]] = {e: ([], []) for e in ENCODINGS}
            stored: dict[str, int] = {}
            for _ in range(args.repeat):
                for enc, options in ENCODINGS.items():  # interleaved: drift hits every encoding alike
                    repo, out = work / "repo", work / "out"
                    shutil.rmtree(repo, ignore_errors=True)
                    shutil.rmtree(out, ignore_errors=True)
                    push = run_python("-m", "ckpt_sync.cli", "push", "--repo", str(repo), str(ckpt), *options, env=env)
                    pull = run_python(
                        "-m", "ckpt_sync.cli", "pull", "--latest", "--repo", str(repo), "--to", str(out), env=env
                    )
                    assert (out / ckpt.name).stat().st_size == n
                    stored[enc] = _stored(repo)
                    runs[enc][0].append(push)
                    runs[enc][1].append(pull)
            print(f"\n## {label} checkpoint, {n / MiB:.0f} MiB (medians of {args.repeat})")
            rows = []
            for enc in ENCODINGS:
                pushes, pulls = runs[enc]
                peaks = "/".join(f"{max(m.peak_mib or 0 for m in ms):.0f}" for ms in (pushes, pulls))
                cpu = (_median_cpu(pushes).cpu_per_gib(n), _median_cpu(pulls).cpu_per_gib(n))
                rows.append((enc, f"{stored[enc] / n:.3f}", *cpu, peaks))
            header = ("encoding", "stored / size", "push CPU s/GiB", "pull CPU s/GiB", "peak RSS MiB push/pull")
            print_table(rows, header)

            # Incremental: one layer changed. Per-chunk compression keeps dedup; a whole-file
            # compressed save (the manager's compression=True) cannot be cut at tensor boundaries.
            second = _one_layer_changed(ckpt, ckpt.parent / "checkpoint_s_2.pt")
            rows = []
            zst = (_zst(ckpt, work / "a.pt.zst"), _zst(second, work / "b.pt.zst"))
            for enc, options, files in (
                ("format 2, plain files", [], (ckpt, second)),
                ("format 2 + zstd, plain files", ["--compression", "zstd"], (ckpt, second)),
                ("format 2, whole-file .zst saves", [], zst),
            ):
                repo = work / "inc"
                shutil.rmtree(repo, ignore_errors=True)
                sent = []
                for i, path in enumerate(files):
                    push = ["-m", "ckpt_sync.cli", "push", "--repo", str(repo), str(path), "--json"]
                    sent.append(_sent(run_python(*push, *(options if i == 0 else []), env=env)))
                rows.append((enc, f"{sent[0] / n:.3f}", f"{sent[1] / n:.4f}"))
            print(f"\n## {label}: a second save with one layer changed (bytes sent / checkpoint size)")
            print_table(rows, ("what is pushed", "first save", "second save"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
