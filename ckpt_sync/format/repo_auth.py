"""Authentication of the repository's plaintext state: the ``config`` object and ``keys/`` entries.

Both are plaintext (a reader must find the key check before it can decrypt anything), and both steer
what a writer does: the config's settings decide how chunks are encoded (padding, compression), and
the key entries decide which keys the repository "knows", hence whether a manifest no key opens is
damage or merely written with a key this host lacks. So each carries a MAC only a key holder can
make: an HMAC-SHA256 under a key derived from the repository's id key (which only a holder of one of
its Fernet keys can unwrap). docs/FORMAT.md gives the exact bytes; this module is their one home.

Objects written before authentication existed carry no MAC. They are accepted while the config has
none (a repository of the previous release) and gain one on the first write by a key holder
(``Repository.authenticate_state``); once the config is authenticated, a key entry without a valid
MAC is ignored, never trusted.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

CONFIG_MAC_INFO = b"ckpt-sync config mac v1"
KEY_ENTRY_MAC_INFO = b"ckpt-sync key entry mac v1"
MAC_FIELD = "mac"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _subkey(id_key: bytes, info: bytes) -> bytes:
    return hmac.digest(id_key, info, "sha256")


def canonical_config(config: dict[str, Any]) -> bytes:
    """The bytes a config's MAC covers: every field but ``mac``, as compact JSON with sorted keys."""
    body = {k: v for k, v in config.items() if k != MAC_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def config_mac(id_key: bytes, config: dict[str, Any]) -> str:
    return hmac.new(_subkey(id_key, CONFIG_MAC_INFO), canonical_config(config), "sha256").hexdigest()


def config_mac_ok(id_key: bytes, config: dict[str, Any]) -> bool:
    """Whether ``config`` carries a MAC and it is the one ``id_key`` gives (constant-time compare)."""
    mac = config.get(MAC_FIELD)
    return isinstance(mac, str) and hmac.compare_digest(mac, config_mac(id_key, config))


def with_config_mac(id_key: bytes, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its MAC (the last field, so the object still reads top-down)."""
    body = {k: v for k, v in config.items() if k != MAC_FIELD}
    return {**body, MAC_FIELD: config_mac(id_key, body)}


def key_entry_mac(id_key: bytes, fingerprint: str, token: str) -> str:
    msg = f"{fingerprint}\n{token}".encode("ascii")
    return hmac.new(_subkey(id_key, KEY_ENTRY_MAC_INFO), msg, "sha256").hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    """One ``keys/<fingerprint>`` object: the id key wrapped under that key, and its MAC (None in an
    entry written before authentication: the object was the bare token)."""

    fingerprint: str
    token: str
    mac: str | None = None

    def authentic(self, id_key: bytes) -> bool:
        return self.mac is not None and hmac.compare_digest(
            self.mac, key_entry_mac(id_key, self.fingerprint, self.token)
        )

    def render(self) -> bytes:
        return json.dumps({"token": self.token, "mac": self.mac}, separators=(",", ":")).encode("ascii")

    @classmethod
    def parse(cls, fingerprint: str, raw: bytes) -> KeyEntry | None:
        """The entry, or None when the object is neither form (a JSON object with a string ``token``
        and a 64-hex ``mac``, or a bare ASCII token)."""
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            return None
        if not text.startswith("{"):
            return cls(fingerprint, text) if text and "\n" not in text else None
        try:
            d = json.loads(text)
        except ValueError:
            return None
        token, mac = (d.get("token"), d.get("mac")) if isinstance(d, dict) else (None, None)
        if not isinstance(token, str) or not token or not isinstance(mac, str) or not _HEX64.match(mac):
            return None
        return cls(fingerprint, token, mac)

    @classmethod
    def sealed(cls, id_key: bytes, fingerprint: str, token: str) -> KeyEntry:
        return cls(fingerprint, token, key_entry_mac(id_key, fingerprint, token))
