"""A ``checkpoint_config`` (interval, max_keep, rotation, compression, async_save) from YAML or TOML.

The keys may sit under a top-level ``checkpoint_config`` table (as docs/TRAINING.md shows) or at the top level.
Unknown keys are an error: a typo such as ``max_kept`` would otherwise silently keep the default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

KEYS = ("interval", "max_keep", "rotation", "compression", "async_save")


@dataclass(frozen=True)
class CheckpointConfig:
    interval: float | None = 180  # seconds; None or 0 turns the time trigger off
    max_keep: int | None = 5  # None keeps everything
    rotation: str = "FIFO"
    compression: bool | str = False
    async_save: bool = True

    def manager_kwargs(self) -> dict[str, Any]:
        """As ``CheckpointManager`` keyword arguments."""
        return {
            "interval_s": self.interval or None,
            "max_keep": self.max_keep,
            "rotation": self.rotation,
            "compression": self.compression,
            "async_save": self.async_save,
        }

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "config") -> CheckpointConfig:
        section = data.get("checkpoint_config", data)
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: checkpoint_config must be a table of settings")
        unknown = sorted(set(section) - set(KEYS))
        if unknown:
            raise ConfigError(
                f"{source}: unknown checkpoint_config key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}"
            )
        out = cls(**{k: section[k] for k in KEYS if k in section})
        _check(out, source)
        return out


def _check(c: CheckpointConfig, source: str) -> None:
    if c.interval is not None and (isinstance(c.interval, bool) or not isinstance(c.interval, int | float)):
        raise ConfigError(f"{source}: interval must be a number of seconds, got {c.interval!r}")
    if c.interval is not None and c.interval < 0:
        raise ConfigError(f"{source}: interval must not be negative")
    if c.max_keep is not None and (isinstance(c.max_keep, bool) or not isinstance(c.max_keep, int) or c.max_keep < 1):
        raise ConfigError(f"{source}: max_keep must be a whole number of at least 1, got {c.max_keep!r}")
    if not isinstance(c.rotation, str) or c.rotation.upper() != "FIFO":
        raise ConfigError(f"{source}: rotation {c.rotation!r} is not supported (only FIFO)")
    if not isinstance(c.compression, bool | str):
        raise ConfigError(f"{source}: compression must be true/false or a codec name, got {c.compression!r}")
    if not isinstance(c.async_save, bool):
        raise ConfigError(f"{source}: async_save must be true or false, got {c.async_save!r}")


def load_checkpoint_config(path: str | os.PathLike[str]) -> CheckpointConfig:
    """Read ``path`` (``.yaml``/``.yml`` needs PyYAML; ``.toml`` uses the standard library)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read checkpoint config {p}: {err.strerror or err}") from None
    if p.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: invalid TOML ({err})") from None
    elif p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{p}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: invalid YAML ({err})") from None
    else:
        raise ConfigError(f"{p}: use a .yaml, .yml or .toml file")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings")
    return CheckpointConfig.from_mapping(data, str(p))
