"""The manifest: what one committed checkpoint is.

Frozen dataclasses with explicit, versioned to/from-JSON; nothing else touches the JSON shape.
Documented in docs/FORMAT.md.

The store is not trusted (docs/FORMAT.md): a manifest read back is authentic (it decrypted with our
key) but may still be malformed — a buggy writer, a different tool, a copy from another repository.
``parse_manifest`` is the one place its schema is checked: every type, range and limit, so that
the rest of the code can rely on a ``Manifest`` being well formed. Any failure is an
``IntegrityError`` (a damaged checkpoint), never another exception.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ..errors import IntegrityError
from .chunk_format import COMPRESSIONS, PAD_SCHEMES
from .chunk_format import VERSIONS as CHUNK_VERSIONS
from .chunking import MAX_CHUNK_SIZE
from .ordering import Position
from .paths import PATH_MAX, component_problem, file_set_problem, path_problem

MANIFEST_VERSION = 1  # what this version writes
READABLE_MANIFEST_VERSIONS = frozenset({1})  # what it reads: the one home of the version check

# Limits a manifest read back must respect (writers never come near them).
MAX_MANIFEST_BYTES = 32 << 20  # the stored token: ~400k chunk refs, several TiB of checkpoint
MAX_EXTRA_DEPTH = 32  # nesting inside ``extra`` (DCP metadata and the like live there)
MAX_TEXT = 1024  # characters in a free-text field (host, session id, a tag)
MAX_TAGS = 64
MAX_INT = 2**63 - 1
MAX_TIME = 1e11  # unix seconds, year 5138
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPOSITORY_ID = re.compile(r"^[0-9a-f]{16}$")
_MANIFEST_ID = re.compile(r"^[0-9]{13}-[0-9a-f]{16}$")

# What a checkpoint is for: ``pull --latest`` and retention's N count resumable ones (docs/FORMAT.md, Manifests).
RESUMABLE, MODEL_ONLY, BEST = "resumable", "model-only", "best"
ROLES = (RESUMABLE, MODEL_ONLY, BEST)
BEST_MARKER = "best_metadata.json"  # CheckpointManager's best_model/ folder holds this file
# How a push decided the role (``extra.role_from``): said by the user, read from the files
# (checkpoint_content.py), or the default. Manifests without it were committed before content was read.
ROLE_FROM = "role_from"
# Files a weights-only folder holds (Hugging Face save_pretrained, PEFT adapters, tokenizers).
WEIGHT_FILES = re.compile(
    r"^(.*\.safetensors|.*\.safetensors\.index\.json|pytorch_model.*\.bin|adapter_model\.bin|"
    r"[^/]*config\.json|tokenizer.*|special_tokens_map\.json|vocab\..*|merges\.txt|.*\.model|README\.md)$"
)


def infer_role(tags: tuple[str, ...] | list[str], extra: dict[str, Any], content: str | None = None) -> str:
    """The role of a checkpoint nobody named one for: tagged ``best`` (or handed off as the best
    model) -> best, a model-only save -> model-only, else what its files hold (``content``, see
    checkpoint_content.py), else resumable."""
    kind = extra.get("checkpoint_kind")
    if "best" in tags or kind == "best":
        return BEST
    if kind == "model_only":
        return MODEL_ONLY
    return content or RESUMABLE


def names_say_weights_only(kind: str, paths: list[str]) -> bool:
    """Whether file names alone say a checkpoint holds only weights (one safetensors file, a folder of
    weight and configuration files): how a manifest committed before content was read, and so
    recorded as resumable by default, gets its role re-derived."""
    if kind == "file":
        return len(paths) == 1 and paths[0].endswith(".safetensors")
    return bool(paths) and all(WEIGHT_FILES.match(PurePosixPath(p).name) for p in paths)


@dataclass(frozen=True)
class ChunkRef:
    id: str
    size: int


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path inside the checkpoint
    size: int
    sha256: str | None  # always in format-1 repositories; in format 2 only when asked for (push --sha256)
    chunks: tuple[ChunkRef, ...]
    mtime_ns: int | None = None  # the source file's modification time (restored by pull)
    mode: int | None = None  # the source file's permission bits (0o777 part); None in older manifests
    # BLAKE3-256 of the file, as format-2 writers recorded it at first; checked when present. A file
    # with neither hash (format 2 now, unless --sha256) is fixed by its chunk ids: a reader checks
    # each chunk's plaintext against its id, and the ids, their order and sizes are in this manifest.
    blake3: str | None = None

    @property
    def digest(self) -> tuple[str, str] | None:
        """The whole-file hash readers check: (algorithm, hex), BLAKE3 when recorded (cheaper);
        None when the file records none (its chunk ids are then its hash, see ``blake3``)."""
        if self.blake3 is not None:
            return "blake3", self.blake3
        if self.sha256 is not None:
            return "sha256", self.sha256
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "size": self.size}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.blake3 is not None:
            out["blake3"] = self.blake3
        out["mtime_ns"] = self.mtime_ns
        out["chunks"] = [[c.id, c.size] for c in self.chunks]
        if self.mode is not None:
            out["mode"] = self.mode
        return out

    @classmethod
    def from_json(cls, d: Any) -> FileEntry:
        """Strictly checked (see ``parse_manifest``); raises IntegrityError."""
        d = _obj(d, "file entry")
        path = _text(d.get("path"), "file path", limit=PATH_MAX)
        problem = path_problem(path)
        if problem:
            raise IntegrityError(f"unsafe path in manifest: {path!r} ({problem})")
        size = _int(d.get("size"), f"size of {path!r}")
        sha, b3 = (_optional(d.get(k), _hex64, f"{k} of {path!r}") for k in ("sha256", "blake3"))
        raw_chunks = d.get("chunks")
        if not isinstance(raw_chunks, list):
            raise IntegrityError(f"file {path!r}: chunks is not a list")
        chunks = []
        for c in raw_chunks:
            if not (isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and _HEX64.match(c[0])):
                raise IntegrityError(f"file {path!r}: a chunk is not [64 hex digits, size]")
            csize = _int(c[1], f"chunk size in {path!r}")
            if not 1 <= csize <= MAX_CHUNK_SIZE:
                raise IntegrityError(f"file {path!r}: a chunk claims {csize} bytes (allowed 1 to {MAX_CHUNK_SIZE})")
            chunks.append(ChunkRef(c[0], csize))
        mtime = _optional(d.get("mtime_ns"), _int, f"mtime_ns of {path!r}")
        mode = _optional(d.get("mode"), _int, f"mode of {path!r}")
        entry = cls(path, size, sha, tuple(chunks), mtime, mode & 0o777 if mode is not None else None, b3)
        if sum(c.size for c in chunks) != entry.size:
            raise IntegrityError(f"manifest entry {entry.path!r}: chunk sizes do not add up to the file size")
        return entry


@dataclass(frozen=True)
class RepositoryBinding:
    """Which repository a manifest belongs to, and a copy of what rebuilds that repository's config.

    ``id`` names the repository (derived from its id key, see repository.py); ``id_key`` is the
    base64 chunk-id key, so ``ckpt-sync repair-config`` can rebuild a lost config with the Fernet
    key alone (the manifest is encrypted with that key, as the config's key entries are).
    """

    id: str
    id_key: str
    created: float
    pad: int = 0
    version: int = 1  # the repository's format version (chunk_format.py); absent in format-1 manifests
    compression: str | None = None
    sha256: bool = False  # format 2: pushes record each file's SHA-256 too
    # The config carried its MAC when this was committed: a config without one is then an altered one.
    authenticated: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "id_key": self.id_key, "created": self.created, "pad": self.pad}
        if self.version != 1:
            out["version"] = self.version
        if self.compression is not None:
            out["compression"] = self.compression
        if self.sha256:
            out["sha256"] = True
        if self.authenticated:
            out["authenticated"] = True
        return out

    def settings(self) -> tuple[str, float, int, int, str | None, bool]:
        """What the config must agree with: its id key, creation time and chunk encoding."""
        return self.id_key, self.created, self.pad, self.version, self.compression, self.sha256

    @classmethod
    def from_json(cls, d: Any) -> RepositoryBinding:
        d = _obj(d, "repository")
        rid, key = d.get("id"), d.get("id_key")
        if not isinstance(rid, str) or not _REPOSITORY_ID.match(rid):
            raise IntegrityError("repository id is not 16 hex digits")
        if not isinstance(key, str) or len(key) != 44:
            raise IntegrityError("repository id_key is not a base64 32-byte key")
        pad, version = _int(d.get("pad", 0), "repository pad"), _int(d.get("version", 1), "repository version")
        compression = _optional(d.get("compression"), _text, "repository compression")
        if version not in CHUNK_VERSIONS or pad not in PAD_SCHEMES or compression not in COMPRESSIONS:
            raise IntegrityError(f"repository format {version}/{pad}/{compression} is unknown")
        sha, authenticated = d.get("sha256", False), d.get("authenticated", False)
        if type(sha) is not bool or type(authenticated) is not bool:
            raise IntegrityError("repository sha256 or authenticated is not true or false")
        created = _time(d.get("created"), "repository created")
        return cls(rid, key, created, pad, version, compression, sha, authenticated)


CHECKPOINT_ID = "checkpoint_id"  # the key in ``extra`` that keeps a checkpoint's first id (Manifest.checkpoint_id)


@dataclass(frozen=True)
class Manifest:
    id: str  # object name under manifests/ (time-sortable, opaque)
    name: str  # file or directory name the user pushed
    created: float  # unix seconds
    host: str
    files: tuple[FileEntry, ...]
    kind: str = "file"  # "file" or "dir"
    session_id: str | None = None
    global_step: int | None = None
    epoch: int | float | None = None
    loss: float | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    role: str = RESUMABLE
    # The id of the manifest this one replaces (manifests are write-once: a tag change commits a new
    # one, then deletes the old). Readers hide a superseded manifest, so a crash in between still
    # shows one checkpoint.
    supersedes: str | None = None
    repository: RepositoryBinding | None = None  # stamped by Repository.commit; absent in older manifests

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files)

    @property
    def checkpoint_id(self) -> str:
        """The id users see and select this checkpoint by: the id it was first committed under. A tag
        change commits a new manifest (a new ``id``) that keeps the first in ``extra.checkpoint_id``
        (tags.py), so an id in a script or a note never goes stale."""
        v = self.extra.get(CHECKPOINT_ID)
        return v if isinstance(v, str) and _MANIFEST_ID.match(v) else self.id

    @property
    def source_mtime_ns(self) -> int | None:
        """The pushed file's (or folder's newest) modification time, when the push recorded it."""
        v = self.extra.get("source_mtime_ns")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def position(self) -> Position:
        """Where this checkpoint is in training (see ordering.py): what "newest" compares."""
        mtime = self.source_mtime_ns
        return Position(
            self.session_id if isinstance(self.session_id, str) else None,
            self.global_step if isinstance(self.global_step, int) and not isinstance(self.global_step, bool) else None,
            mtime / 1e9 if mtime is not None else None,
            self.created,
            self.id,
        )

    def same_version(self, other: Manifest, *, chunk_ids: bool = True) -> bool:
        """The same checkpoint committed twice: same name, kind, tags and files (paths, sizes, hashes
        and chunk ids, which are a hash of the content too). ``chunk_ids`` False: the two are in
        repositories whose chunk ids differ (another id key), so ids are not compared; where a file
        then has no whole-file hash to compare either (format 2), only the same commit (the same
        manifest id: a copy keeps it) is the same version."""

        def contents(m: Manifest) -> list[tuple[str, int, tuple[str, str] | None, tuple[str, ...]]]:
            return [(f.path, f.size, f.digest, tuple(c.id for c in f.chunks) if chunk_ids else ()) for f in m.files]

        unhashed = any(f.digest is None for f in (*self.files, *other.files))
        return (
            self.name == other.name
            and self.kind == other.kind
            and sorted(self.tags) == sorted(other.tags)
            and contents(self) == contents(other)
            and (chunk_ids or not unhashed or self.id == other.id)
        )

    def chunk_ids(self) -> set[str]:
        return {c.id for f in self.files for c in f.chunks}

    def to_json(self) -> dict[str, Any]:
        out = {
            "version": MANIFEST_VERSION,
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "created": self.created,
            "host": self.host,
            "session_id": self.session_id,
            "global_step": self.global_step,
            "epoch": self.epoch,
            # A diverged run's NaN loss is not a number JSON can carry (readers refuse NaN).
            "loss": self.loss if self.loss is None or math.isfinite(self.loss) else None,
            "tags": list(self.tags),
            "role": self.role,
            "extra": _finite(self.extra),
            "supersedes": self.supersedes,
            "files": [f.to_json() for f in self.files],
        }
        if self.repository is not None:
            out["repository"] = self.repository.to_json()
        return out

    @classmethod
    def from_json(cls, d: Any, *, expected_id: str | None = None) -> Manifest:
        """Strictly checked (see ``parse_manifest``); raises IntegrityError."""
        d = _obj(d, "manifest")
        version = d.get("version")
        if type(version) is not int or version not in READABLE_MANIFEST_VERSIONS:
            raise IntegrityError(f"unsupported manifest version {version!r}; upgrade ckpt-sync")
        mid = d.get("id")
        if not isinstance(mid, str) or not _MANIFEST_ID.match(mid):
            raise IntegrityError("manifest id is not <13 digits>-<16 hex digits>")
        # A manifest copied to another name would otherwise replay an old checkpoint as new.
        if expected_id is not None and mid != expected_id:
            raise IntegrityError(f"manifest {expected_id} claims to be {mid} (moved or replayed object)")
        name = _text(d.get("name"), "name", limit=PATH_MAX)
        problem = component_problem(name)
        if problem:
            raise IntegrityError(f"unsafe name in manifest: {name!r} ({problem})")
        kind = d.get("kind", "file")
        if kind not in ("file", "dir"):
            raise IntegrityError(f"manifest kind {kind!r} is neither 'file' nor 'dir'")
        raw_files = d.get("files")
        if not isinstance(raw_files, list) or not raw_files or (kind == "file" and len(raw_files) != 1):
            raise IntegrityError("manifest files must be a list of one entry (file) or more (dir)")
        files = tuple(FileEntry.from_json(f) for f in raw_files)
        problem = file_set_problem([f.path for f in files])
        if problem:
            raise IntegrityError(f"unsafe paths in manifest: {problem}")
        tags = d.get("tags", [])
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise IntegrityError(f"tags must be a list of at most {MAX_TAGS} strings")
        extra = d.get("extra") or {}
        if not isinstance(extra, dict) or _depth(extra) > MAX_EXTRA_DEPTH:
            raise IntegrityError(f"extra must be a JSON object nested at most {MAX_EXTRA_DEPTH} deep")
        role = d.get("role")
        if role is not None and role not in ROLES:
            raise IntegrityError(f"role {role!r} is not one of {', '.join(ROLES)}")
        binding = d.get("repository")
        tags = tuple(_text(t, "tag") for t in tags)
        role = role or infer_role(tags, extra)
        if ROLE_FROM not in extra and role == RESUMABLE and names_say_weights_only(kind, [f.path for f in files]):
            role = MODEL_ONLY  # committed before content was read, resumable only by default
        return cls(
            id=mid,
            name=name,
            kind=kind,
            created=_time(d.get("created"), "created"),
            host=_text(d.get("host", ""), "host"),
            session_id=_optional(d.get("session_id"), _text, "session_id"),
            global_step=_optional(d.get("global_step"), _int, "global_step"),
            epoch=_optional(d.get("epoch"), _epoch, "epoch"),
            loss=_optional(d.get("loss"), _number, "loss"),
            tags=tags,
            extra=extra,
            supersedes=_optional(d.get("supersedes"), _manifest_id, "supersedes") or None,
            files=files,
            role=role,
            repository=None if binding is None else RepositoryBinding.from_json(binding),
        )


def parse_manifest(plaintext: bytes | bytearray | memoryview, *, expected_id: str | None = None) -> Manifest:
    """A decrypted manifest's bytes -> ``Manifest``, or IntegrityError naming what is wrong.

    Refuses non-UTF-8, non-JSON, NaN/Infinity, nesting deep enough to exhaust the stack, and any
    field of the wrong type or out of range.
    """
    where = f"manifest {expected_id}" if expected_id else "manifest"
    try:
        data = json.loads(bytes(plaintext).decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise IntegrityError(f"{where} is malformed (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise IntegrityError(f"{where} is not valid JSON ({err})") from None
    try:
        return Manifest.from_json(data, expected_id=expected_id)
    except RecursionError:
        raise IntegrityError(f"{where} is malformed (nested too deeply)") from None
    except IntegrityError as err:
        raise IntegrityError(f"{where} is malformed: {err}") from None


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (a diverged metric) as null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


# --- field checks ----------------------------------------------------------------------------------


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise IntegrityError(f"{what} is a JSON {type(v).__name__}, not an object")
    return v


def _manifest_id(v: Any, what: str) -> str:
    if v == "":
        return v  # written as "no predecessor" by some writers
    if not isinstance(v, str) or not _MANIFEST_ID.match(v):
        raise IntegrityError(f"{what} is not a manifest id ({v!r})")
    return v


def _text(v: Any, what: str, *, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise IntegrityError(f"{what} is not a string of at most {limit} characters")
    return v


def _hex64(v: Any, what: str) -> str:
    if not isinstance(v, str) or not _HEX64.match(v):
        raise IntegrityError(f"{what} is not 64 hex digits")
    return v


def _int(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INT:
        raise IntegrityError(f"{what} is not a non-negative integer ({v!r})")
    return v


def _number(v: Any, what: str) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise IntegrityError(f"{what} is not a finite number ({v!r})")
    return float(v)


def _epoch(v: Any, what: str) -> int | float:
    """Whole epochs from most loops, fractional ones from Hugging Face's trainer state."""
    if type(v) is int:
        return _int(v, what)
    if _number(v, what) < 0:
        raise IntegrityError(f"{what} is negative ({v!r})")
    return v


def _time(v: Any, what: str) -> float:
    t = _number(v, what)
    if not 0 <= t <= MAX_TIME:
        raise IntegrityError(f"{what} is not a plausible unix time ({v!r})")
    return t


def _optional(v: Any, check: Any, what: str) -> Any:
    return None if v is None else check(v, what)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_EXTRA_DEPTH:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest
