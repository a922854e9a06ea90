"""Optional compressed checkpoints (off by default: speed first): zstd, else stdlib zip where
zstandard (a ckpt-sync dependency) is missing.

Compression runs after a normal ``torch.save`` into a temp file, streaming, so memory does not double;
loading decompresses to a temp file first so ``mmap=True`` still applies. A compressed checkpoint is a
standard ``.zst`` or ``.zip`` whose content is the plain ``.pt``: ``zstd -d`` / ``unzip`` recover it.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError

ZSTD_LEVEL = 3
MISSING_ZSTD = "the zstandard package, a ckpt-sync dependency, is missing: reinstall ckpt-sync (scripts/quickstart.sh)"
DEFLATE_LEVEL = 1  # compression is off by default for speed; when on, favour speed too


def _zstd() -> Any | None:
    try:
        import zstandard

        return zstandard
    except ImportError:
        pass
    try:  # Python 3.14+
        from compression import zstd  # type: ignore[import-not-found]

        return zstd
    except ImportError:
        return None


def _zstd_or_stop(what: str) -> Any:
    z = _zstd()
    if z is None:
        raise ConfigError(f"{what}: {MISSING_ZSTD}")
    return z


def resolve_codec(setting: bool | str | None) -> str:
    """The ``compression`` setting as a codec: "" (off), "zstd" or "zip"."""
    if setting in (None, False, "", "false", "none", "off"):
        return ""
    if setting is True or setting in ("true", "on", "auto"):
        return "zstd" if _zstd() is not None else "zip"
    if setting == "zstd":
        _zstd_or_stop("compression 'zstd'")
        return "zstd"
    if setting in ("zip", "deflate"):
        return "zip"
    raise ConfigError(f"unknown compression {setting!r}: use false, true, 'zstd' or 'zip'")


def compress(src: Path, dst: IO[bytes], codec: str, member: str) -> None:
    """Stream the plain checkpoint ``src`` into ``dst`` (``member`` names it inside a zip)."""
    if codec == "zip":
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=DEFLATE_LEVEL) as zf:
            zf.write(src, arcname=member)
        return
    z = _zstd_or_stop("compressing with zstd")
    with open(src, "rb") as f:
        if hasattr(z, "ZstdCompressor") and hasattr(z.ZstdCompressor, "copy_stream"):
            z.ZstdCompressor(level=ZSTD_LEVEL).copy_stream(f, dst)
        else:
            with z.ZstdFile(dst, "w", level=ZSTD_LEVEL) as out:
                shutil.copyfileobj(f, out, 1 << 20)


def decompress(src: Path, dst: IO[bytes], codec: str) -> None:
    """Write the plain ``.pt`` held in ``src`` into ``dst``."""
    if codec == "zip":
        with zipfile.ZipFile(src) as zf:
            members = [n for n in zf.namelist() if n.endswith(".pt")] or zf.namelist()
            if len(members) != 1:
                raise ValueError(f"{src.name}: expected one .pt member, found {len(members)}")
            with zf.open(members[0]) as f:
                shutil.copyfileobj(f, dst, 1 << 20)
        return
    z = _zstd_or_stop(f"{src.name} is zstd-compressed")
    with open(src, "rb") as f:
        if hasattr(z, "ZstdDecompressor") and hasattr(z.ZstdDecompressor, "copy_stream"):
            z.ZstdDecompressor().copy_stream(f, dst)
        else:
            with z.ZstdFile(f) as inp:
                shutil.copyfileobj(inp, dst, 1 << 20)
