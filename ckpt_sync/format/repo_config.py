"""A repository's ``config``: its format version and chunk encoding (the settings fixed when it is
created), its key entries and its MAC, read strictly; and the repository id its id key gives.

docs/FORMAT.md, "config" and "Authentication", is the contract; repository.py opens a repository
with it, repo_auth.py computes the MACs.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigError
from .chunk_format import COMPRESSIONS, PAD_SCHEMES, ChunkFormat
from .chunk_format import VERSIONS as CHUNK_VERSIONS
from .crypto import KeyRing
from .layout import MAX_KEY_ENTRY_BYTES
from .manifest import RepositoryBinding
from .repo_auth import MAC_FIELD, with_config_mac

_FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")

FORMAT_NAME = "ckpt-sync"


FORMAT_VERSION = 2  # what a new repository uses (format 1 repositories stay readable and writable)


READABLE_FORMAT_VERSIONS = frozenset(CHUNK_VERSIONS)  # what it reads: the one home of the config version check


CHUNK_IDS = {1: "hmac-sha256", 2: "blake3-keyed"}


def repository_id(id_key: bytes) -> str:
    """The repository's public name (docs/FORMAT.md; what `init` prints and every manifest names):
    random per repository (its id key is), so two repositories under one Fernet key never share it."""
    return hmac.digest(id_key, b"ckpt-sync repository id v1", "sha256")[:8].hex()


def config_missing_error(url: str) -> ConfigError:
    return ConfigError(
        f"the repository at {url} holds checkpoints but its config object is missing (deleted?): "
        f"not creating a new one; rebuild it with `ckpt-sync repair-config --repo {url}` and the key"
    )


def parse_config(raw: bytes, url: str) -> dict:
    """The one strict check of a ``config`` object: ConfigError naming what is wrong."""

    def damaged(why: str) -> ConfigError:
        return ConfigError(
            f"the repository config at {url} is damaged ({why}): rebuild it with "
            f"`ckpt-sync repair-config --repo {url}` and the key"
        )

    try:
        config = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise damaged("nested too deeply") from None
    except _NotANumber as e:
        raise damaged(f"{e} is not a number JSON allows") from None
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{url} is not a ckpt-sync repository (its config object is not JSON)") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        what = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f"{url} is not a ckpt-sync repository (format {what!r})")
    version = config.get("version")
    if type(version) is not int:
        raise damaged(f"version {version!r} is not an integer")
    if version < 1:
        raise damaged(f"there is no format version {version}")
    if version not in READABLE_FORMAT_VERSIONS:
        raise ConfigError(
            f"the repository at {url} uses format version {version}, newer than this "
            f"ckpt-sync ({FORMAT_VERSION}): upgrade ckpt-sync"
        )
    created = config.get("created", 0.0)
    if type(created) not in (int, float) or not math.isfinite(created) or created < 0:
        raise damaged(f"created {created!r} is not a time")
    if config.get("chunk_id", CHUNK_IDS[version]) != CHUNK_IDS[version]:
        raise damaged(f"chunk_id {config.get('chunk_id')!r} is not format {version}'s")
    keys = config.get("keys")
    if not isinstance(keys, dict):
        raise damaged("keys is not an object")
    for fp, token in keys.items():
        if not _FINGERPRINT.match(fp) or not isinstance(token, str) or len(token) > MAX_KEY_ENTRY_BYTES:
            raise damaged("a key entry is not <32 hex digits>: <Fernet token>")
    pad = config.get("pad", 0)
    if type(pad) is not int or pad not in PAD_SCHEMES:
        raise damaged(f"pad {pad!r} is not a padding scheme ({', '.join(map(str, PAD_SCHEMES))})")
    if config.get("compression") not in COMPRESSIONS:
        raise damaged(f"compression {config.get('compression')!r} is not one of none, zstd")
    if type(config.get("sha256", False)) is not bool:
        raise damaged(f"sha256 {config.get('sha256')!r} is not true or false")
    if MAC_FIELD in config and not (isinstance(config[MAC_FIELD], str) and len(config[MAC_FIELD]) == 64):
        raise damaged("mac is not 64 hex digits")
    return config


def config_altered_error(url: str, why: str) -> ConfigError:
    return ConfigError(
        f"the repository config at {url} {why}: it was altered or replaced; nothing was changed (rebuild it from "
        f"its checkpoints with `ckpt-sync repair-config --repo {url}` and the key)"
    )


@dataclass(frozen=True)
class RepositorySettings:
    """What a repository fixes when it is created (docs/FORMAT.md): its format version and chunk
    encoding (chunk_format.py), and whether pushes also record each file's SHA-256 (format 1 always
    does). A field left None was not chosen: the default at creation, anything for one that exists."""

    version: int | None = None
    pad: int | None = None
    compression: str | None = None  # "zstd", or "none" when chosen off; None: not chosen
    sha256: bool | None = None

    @classmethod
    def of_config(cls, config: dict) -> RepositorySettings:
        version = int(config["version"])
        sha = version == 1 or bool(config.get("sha256", False))
        return cls(version, int(config.get("pad", 0)), config.get("compression") or "none", sha)

    def chunk_format(self, id_key: bytes) -> ChunkFormat:
        """The chunk encoding these (resolved) settings give a repository with ``id_key``."""
        s = self.resolved()
        assert s.version is not None and s.pad is not None
        return ChunkFormat(s.version, id_key, s.pad, None if s.compression == "none" else s.compression)

    def resolved(self) -> RepositorySettings:
        version = FORMAT_VERSION if self.version is None else self.version
        return RepositorySettings(version, self.pad or 0, self.compression or "none", version == 1 or bool(self.sha256))

    def conflicts(self, existing: RepositorySettings) -> list[str]:
        """The chosen fields that differ from ``existing``'s."""
        mine = dataclasses.asdict(self)
        theirs = dataclasses.asdict(existing)
        return [k for k, v in mine.items() if v is not None and v != theirs[k]]

    def describe(self, fields: Iterable[str] | None = None) -> str:
        values = dataclasses.asdict(self)
        shown = {
            "version": lambda v: f"format {v}",
            "pad": lambda v: "padding" if v else "no padding",
            "compression": lambda v: "no compression" if v == "none" else f"{v} compression",
            "sha256": lambda v: "SHA-256 file hashes" if v else "no SHA-256 file hashes",
        }
        return ", ".join(shown[k](values[k]) for k in (fields or values) if values[k] is not None)


class _NotANumber(ValueError):
    pass


def _refuse_constant(name: str) -> None:
    raise _NotANumber(name)


def new_config(
    keys: KeyRing, id_key: bytes, created: float, settings: RepositorySettings, *, every_key: bool = False
) -> dict:
    """A config for ``id_key``, with entries for the ring's first key (``every_key``: for all of its
    keys) and its MAC."""
    s = settings.resolved()
    assert s.version is not None
    fingerprints = keys.fingerprints() if every_key else keys.fingerprints()[:1]
    config: dict = {
        "format": FORMAT_NAME,
        "version": s.version,
        "created": created,
        "chunk_id": CHUNK_IDS[s.version],
        "keys": {fp: keys.fernet(fp).encrypt(id_key).decode("ascii") for fp in fingerprints},
    }
    if s.pad:
        config["pad"] = s.pad
    if s.compression != "none":
        config["compression"] = s.compression
    if s.version != 1 and s.sha256:
        config["sha256"] = True
    return with_config_mac(id_key, config)


def settings_of(binding: RepositoryBinding) -> RepositorySettings:
    return RepositorySettings(binding.version, binding.pad, binding.compression or "none", binding.sha256)


def binding_difference(recorded: RepositoryBinding, config: RepositoryBinding) -> str:
    """What a checkpoint's binding records that the config does not, in words."""
    if recorded.id_key != config.id_key or recorded.created != config.created:
        return "they record another id key or creation time"
    theirs, ours = settings_of(recorded).resolved(), settings_of(config).resolved()
    differ = theirs.conflicts(ours)
    return f"they record {theirs.describe(differ)}, the config says {ours.describe(differ)}"
