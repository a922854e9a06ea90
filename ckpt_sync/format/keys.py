"""Where keys come from.

First found wins: ``--key-file PATH``, env ``BACKUP_ENCRYPTION_KEY`` (comma-separated: the first
encrypts, all decrypt), then the default key file in the user's config folder. A key file holds one
key per line in the same order. Keys are never logged; errors name the source, never the value.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet

from .. import platform
from ..errors import ConfigError, UsageError
from ..locations import default_key_file
from .crypto import KeyRing

ENV_KEY = "BACKUP_ENCRYPTION_KEY"
# A new key cannot read anything already pushed: say so wherever keygen is suggested.
NEW_KEY_ONLY_FOR_NEW = "a new key from `ckpt-sync keygen` suits only a new repository: it cannot read existing backups"
log = logging.getLogger("ckpt_sync.keys")


def parse_keys(text: str, source: str) -> list[bytes]:
    """Decode Fernet keys separated by commas or newlines; the error names ``source`` only."""
    items = [t.strip() for t in text.replace(",", "\n").splitlines()]
    items = [t for t in items if t and not t.startswith("#")]
    if not items:
        raise ConfigError(f"no key found in {source}: put the repository's key there ({NEW_KEY_ONLY_FOR_NEW})")
    raw: list[bytes] = []
    for i, item in enumerate(items, 1):
        try:
            key = base64.urlsafe_b64decode(item.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError(
                f"key #{i} in {source} is not a Fernet key (expected 44 url-safe base64 characters, "
                "as printed by `ckpt-sync keygen`)"
            )
        raw.append(key)
    return raw


def load_keyring(key_file: str | os.PathLike[str] | None = None) -> KeyRing:
    """Find the keys by the documented precedence, or raise ConfigError saying how to provide one."""
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(
                f"key file {path} does not exist: put the repository's key there ({NEW_KEY_ONLY_FOR_NEW})"
            ) from None
        except OSError as err:
            raise ConfigError(f"cannot read key file {path}: {err.strerror}") from None
        _warn_if_exposed(path)
        return KeyRing(parse_keys(text, f"key file {path}"))
    env = os.environ.get(ENV_KEY)
    if env:
        return KeyRing(parse_keys(env, f"${ENV_KEY}"))
    default = default_key_file()
    if default.is_file():
        _warn_if_exposed(default)
        return KeyRing(parse_keys(default.read_text(), f"key file {default}"))
    raise ConfigError(
        f"no encryption key: no --key-file (or key_file setting), ${ENV_KEY} is not set and {default} does "
        f"not exist; give the key the repository was created with ({NEW_KEY_ONLY_FOR_NEW})"
    )


def key_configured(key_file: str | os.PathLike[str] | None = None) -> bool:
    """Is any key source present (a key file given, the variable set, the default key file)?"""
    return key_file is not None or bool(os.environ.get(ENV_KEY)) or default_key_file().is_file()


def _warn_if_exposed(path: Path) -> None:
    """A key file others can read is a leaked key waiting to happen: say so (once per run)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "key file %s is readable by group or others (mode %o): run `chmod 600 %s`", path, mode & 0o777, path
        )


def _private_parents(folder: Path) -> None:
    """Create the missing folders above a new key file with mode 0700 (existing ones are left alone)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(mode=0o700, exist_ok=True)
        os.chmod(f, 0o700)  # the umask may have narrowed it further, never widened: set it exactly


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def write_key_file(path: str | os.PathLike[str], key: str) -> Path:
    """Write a new key file with mode 0600; refuses to overwrite (losing a key loses the data)."""
    p = Path(path).expanduser()
    _private_parents(p.parent)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.BINARY, 0o600)
    except FileExistsError:
        raise UsageError(f"{p} already exists; refusing to overwrite a key (choose another --out)") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    return p
