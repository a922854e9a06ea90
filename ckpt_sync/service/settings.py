"""Settings from a TOML file, the environment and flags, resolved once for every verb.

Precedence, per setting: a command-line flag, then the environment, then the config file, then the
built-in default. The file is ``--config PATH`` (or ``$CKPT_SYNC_CONFIG``), else ``ckpt-sync.toml``
in the working folder, else ``config.toml`` in the user's config folder. It is a flat TOML table of
the settings in ``SETTINGS``; an unknown key or a bad value is a ConfigError naming the key and the
file (or the variable, or the flag), so a typo never silently falls back to a default.

Key material never passes through here: the file may name a ``key_file``; the keys themselves come
from that file or ``$BACKUP_ENCRYPTION_KEY`` (format/keys.py) and are shown only as ``<redacted>``.

The library resolves the same way (``resolve_store``): a function argument stands where the flag
would, so ``ckpt_sync.push(path)`` reaches the repository ``ckpt-sync push path`` would, with the same
error lines. Only the settings that say where the store is and how to reach it (``STORE_SETTINGS``)
come from the file for a library call; what decides deletion (keep, grace) is an explicit argument
there, never a file that happens to lie in the working folder.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_GRACE, DEFAULT_PATTERNS, WATCH_KEEP, WATCH_RESCAN, WATCH_SETTLE
from ..errors import ConfigError, UsageError
from ..format.crypto import KeyRing
from ..format.keys import ENV_KEY, load_keyring
from ..locations import ENV_REPO, config_dir, default_key_file, default_repo_url
from ..providers import RetryPolicy
from ..redact import REDACTED, redact, redact_url
from ..units import SIZE_EXAMPLES, format_bytes, parse_rate, parse_size

ENV_CONFIG = "CKPT_SYNC_CONFIG"
ENV_PREFIX = "CKPT_SYNC_"
LOCAL_FILE = "ckpt-sync.toml"


class BadValue(ValueError):
    """A value a setting's parser rejects; the message says what was expected (never echoes secrets)."""


# --- value parsers: accept what TOML gives (typed) and what flags/env give (text) ----------------


def _whole(minimum: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise BadValue(f"expected a whole number >= {minimum}")
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            v = int(v)
        if not isinstance(v, int) or v < minimum:
            raise BadValue(f"expected a whole number >= {minimum}, got {v!r}")
        return v

    return parse


def _seconds(minimum: float, *, inclusive: bool = True) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise BadValue("expected a number of seconds")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise BadValue(f"expected a number of seconds, got {v!r}") from None
        if f != f or f < minimum or (f == minimum and not inclusive):
            raise BadValue(f"expected a number of seconds {'>=' if inclusive else '>'} {minimum:g}, got {v!r}")
        return f

    return parse


def _size(v: Any) -> str:
    """A size such as ``8M``; kept as text (the verbs parse it), validated here."""
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise BadValue(f"expected a size such as 8M, got {v!r}")
    try:
        if parse_size(str(v)) <= 0:
            raise BadValue(f"expected a size above 0, got {v!r}")
    except UsageError:
        raise BadValue(f"expected a size such as {SIZE_EXAMPLES}, got {v!r}") from None
    return str(v)


def _rate(v: Any) -> int | None:
    """Bytes per second (``50M``, ``50MB/s``, ``20MiB``: units.parse_size), remembering how it was
    written; 0, "0" or "off" means no limit (None)."""
    if isinstance(v, str) and v.strip().lower() in ("", "0", "off", "none", "unlimited"):
        return None
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise BadValue(f"expected bytes per second such as 50M, got {v!r}")
    try:
        n = parse_rate(str(v))
    except UsageError:
        raise BadValue(
            f"expected bytes per second such as 50M, 50MB (10^6 bytes), 20MiB (2^20 bytes) or 1G (0 for no limit), "
            f"got {v!r}"
        ) from None
    return n or None


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise BadValue(f"expected one of {', '.join(choices)}, got {v!r}")
        return str(v)

    return parse


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise BadValue(f"expected a non-empty string, got {v!r}")
    return v.strip()


def _path(v: Any) -> str:
    return str(Path(_text(v)).expanduser())


def _patterns(v: Any) -> tuple[str, ...]:
    """A list of globs, or (from a flag or the environment) one string separated by commas or spaces."""
    items = re.split(r"[,\s]+", v) if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise BadValue(f'expected a list of glob patterns such as ["*.pt"], got {v!r}')
    out = tuple(i.strip() for i in items if i.strip())
    if not out:
        raise BadValue("expected at least one glob pattern")
    return out


def parse_address(v: Any) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9109`` for IPv6; ``:9109`` means every interface) -> (host, port)."""
    text = _text(v)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadValue(f"expected HOST:PORT such as 127.0.0.1:9109, got {v!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _address(v: Any) -> str | None:
    """``HOST:PORT``; "off" turns it off (so a flag can override an address set in the file)."""
    if isinstance(v, str) and v.strip().lower() in ("off", "none"):
        return None
    parse_address(v)
    return _text(v)


def _url(v: Any) -> str:
    return _text(v)


# --- the settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its TOML key, the argparse ``dest`` that carries it, how to parse it, its default."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    dest: str = ""
    flag: str = ""
    env: str | None = ""
    relative_to_file: bool = False  # a relative path in the file is relative to the file's folder

    def __post_init__(self) -> None:
        object.__setattr__(self, "dest", self.dest or self.name)
        object.__setattr__(self, "flag", self.flag or "--" + self.name.replace("_", "-"))
        if self.env == "":
            object.__setattr__(self, "env", ENV_PREFIX + self.name.upper())


SETTINGS: tuple[Setting, ...] = (
    Setting("repo", _url, None, "repository URL (else the embedded local one)", env=ENV_REPO, relative_to_file=True),
    Setting("key_file", _path, None, "Fernet key file (one key a line)", relative_to_file=True),
    Setting(
        "watch_dir",
        _path,
        None,
        "folder `watch` and `status` use when none is given",
        dest="dir",
        flag="DIR",
        relative_to_file=True,
    ),
    Setting("state_dir", _path, None, "queue and held copies (default WATCH_DIR/.ckpt-sync)", relative_to_file=True),
    Setting("keep", _whole(0), WATCH_KEEP, "remote FIFO: keep the N newest resumable (0 keeps all)"),
    Setting(
        "keep_scope",
        _choice("run", "repository"),
        "run",
        "what a watch's keep counts and removes: this folder's run (its sessions), or the whole repository",
    ),
    Setting("patterns", _patterns, None, "checkpoint file name globs for `watch`", dest="pattern", flag="--pattern"),
    Setting("settle", _seconds(0), WATCH_SETTLE, "seconds a file must be closed and unchanged before upload"),
    Setting(
        "rescan",
        _seconds(0, inclusive=False),
        WATCH_RESCAN,
        "seconds between full rescans of the watched folder",
    ),
    Setting("grace", _seconds(0), DEFAULT_GRACE, "unreferenced chunks younger than this are kept (seconds)"),
    Setting("workers", _whole(1), None, "parallel chunk workers (default: by cores)"),
    Setting("chunk_size", _size, None, "chunk size for new uploads (default 8M)"),
    Setting("retry_attempts", _whole(1), RetryPolicy.attempts, "attempts per storage call on transient errors"),
    Setting(
        "retry_time",
        _seconds(0, inclusive=False),
        RetryPolicy.max_seconds,
        "seconds before a storage call stops retrying",
    ),
    Setting("bwlimit", _rate, None, "bytes per second for all uploads and downloads together (0: no limit)"),
    Setting("endpoint_url", _url, None, "object store endpoint (S3-compatible stores, emulators)"),
    Setting("log_format", _choice("text", "json"), "text", "log lines as text or JSON"),
    Setting("metrics_addr", _address, None, "HOST:PORT serving /metrics and /healthz during `watch`"),
)
BY_NAME = {s.name: s for s in SETTINGS}

# Names people reach for that must not hold what they think: say what to use instead.
_MISPLACED = {
    "key": f"key material does not belong in a config file: set key_file = PATH, or ${ENV_KEY}",
    "keys": f"key material does not belong in a config file: set key_file = PATH, or ${ENV_KEY}",
    "encryption_key": f"key material does not belong in a config file: set key_file = PATH, or ${ENV_KEY}",
    "pattern": "the setting is called patterns (a list of globs)",
    "url": "the setting is called repo",
    "concurrency": "the setting is called workers",
    "dir": "the setting is called watch_dir",
}


# CKPT_SYNC_* variables that are not settings: all others are typos and stop every verb.
OTHER_VARIABLES = {
    ENV_CONFIG: "the config file",
    "CKPT_SYNC_AES": "AES backend: cryptography forces the pure library path",
    "CKPT_SYNC_LOCK_TTL": "seconds a lock's holder may go unheard before others judge it gone (locks.py; default 120)",
    "CKPT_SYNC_SETUP_ONLY": "scripts/*.sh: stop after setting up .venv/",
}


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Refuse a ``CKPT_SYNC_*`` variable that nothing reads (``CKPT_SYNC_KEPE=3`` silently did nothing)."""
    env = os.environ if env is None else env
    known = {s.env for s in SETTINGS if s.env} | set(OTHER_VARIABLES)
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean ${close[0]}?" if close else f"known: {', '.join('$' + k for k in sorted(known))}"
            raise ConfigError(f"unknown variable ${name} in the environment ({hint}); unset it or fix its name")


@dataclass(frozen=True)
class Value:
    value: Any
    source: str  # "flag --keep", "env CKPT_SYNC_KEEP", "file /etc/ckpt-sync/run42.toml", "default"


@dataclass(frozen=True)
class Effective:
    """Every setting's value and where it came from; ``key`` says where the keys come from."""

    values: dict[str, Value]
    key: Value
    config_file: Path | None
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name].value

    def rows(self) -> list[tuple[str, str, str]]:
        """(setting, value for display, source): secrets redacted, sizes and rates readable."""
        out = [("key", redact(str(self.key.value)), self.key.source)]
        for s in SETTINGS:
            v = self.values[s.name]
            out.append((s.name, redact(_display(s.name, v.value)), v.source))
        return out

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"config_file": str(self.config_file) if self.config_file else None}
        key = self.key.value
        data["settings"] = {"key": {"value": redact(key) if isinstance(key, str) else key, "source": self.key.source}}
        for s in SETTINGS:
            v = self.values[s.name]
            shown = v.value
            if s.name == "repo" and shown is None:
                shown = default_repo_url()  # the effective repository, not "unset"
            if s.name in ("repo", "endpoint_url") and isinstance(shown, str):
                shown = redact_url(shown)
            elif isinstance(shown, str):
                shown = redact(shown)
            data["settings"][s.name] = {"value": list(shown) if isinstance(shown, tuple) else shown, "source": v.source}
        return data


def _display(name: str, value: Any) -> str:
    if value is None:
        return {
            "repo": default_repo_url(),
            "bwlimit": "unlimited",
            "workers": "auto",
            "chunk_size": "8M",
            "metrics_addr": "off",
            "state_dir": "WATCH_DIR/.ckpt-sync",
            "patterns": " ".join(DEFAULT_PATTERNS),
        }.get(name, "-")
    if name in ("repo", "endpoint_url"):
        return redact_url(value)
    if name == "bwlimit":  # as written ("50MB/s"), and what that is in bytes
        written = getattr(value, "written", "")
        if not written or written.isdigit():
            return f"{value} bytes/s ({format_bytes(value)}/s)"
        return f"{written if '/' in written else written + '/s'} ({value} bytes/s)"
    if isinstance(value, tuple):
        return " ".join(value)
    return str(value)


# --- finding and reading the file ----------------------------------------------------------------


def find_config_file(flag: str | None, env: Mapping[str, str]) -> Path | None:
    """``--config``/``$CKPT_SYNC_CONFIG`` (must exist), else ./ckpt-sync.toml, else the user's config.toml."""
    explicit = flag or env.get(ENV_CONFIG)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            where = "--config" if flag else f"${ENV_CONFIG}"
            raise ConfigError(f"config file {path} (from {where}) does not exist")
        return path
    for candidate in (Path.cwd() / LOCAL_FILE, config_dir() / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's settings, parsed and validated; raises ConfigError naming the key and the file."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        setting = BY_NAME.get(key)
        if setting is None:
            hint = _MISPLACED.get(key) or f"known settings: {', '.join(BY_NAME)}"
            raise ConfigError(f"{path}: unknown setting {key!r} ({hint})")
        try:
            parsed = setting.parse(value)
        except BadValue as err:
            raise ConfigError(f"{path}: {key}: {err}") from None
        if setting.relative_to_file and isinstance(parsed, str) and _is_relative_path(parsed):
            parsed = str((path.parent / parsed).resolve())
        out[key] = parsed
    return out


def _is_relative_path(text: str) -> bool:
    """A plain relative folder path (not a URL, not ``s3:bucket``-like text the URL check should reject)."""
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", text) and not Path(text).is_absolute()


# --- resolution ----------------------------------------------------------------------------------


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_flag: str | None = None,
    *,
    arguments: bool = False,
) -> Effective:
    """Flags > env > file > default for every setting. ``flags`` maps setting names to flag values
    (None or missing: not given on the command line); ``arguments``: they are a library call's
    arguments, and sources and errors name them so."""
    env = os.environ if env is None else env
    path = find_config_file(config_flag, env)
    from_file = read_config_file(path) if path else {}
    values: dict[str, Value] = {}
    for s in SETTINGS:
        given = flags.get(s.name)
        if given is not None and given != []:
            label = f"argument {s.name}" if arguments else f"flag {s.flag}"
            try:
                values[s.name] = Value(s.parse(given), label)
            except BadValue as err:
                raise ConfigError(f"{label.split(' ', 1)[1]}: {err}") from None
            continue
        if s.env and env.get(s.env, "").strip():
            try:
                values[s.name] = Value(s.parse(env[s.env]), f"env {s.env}")
            except BadValue as err:
                raise ConfigError(f"${s.env}: {err}") from None
            continue
        if s.name in from_file:
            values[s.name] = Value(from_file[s.name], f"file {path}")
            continue
        values[s.name] = Value(s.default, "default")
    return Effective(values, _key_source(values["key_file"], env), path)


def _key_source(key_file: Value, env: Mapping[str, str]) -> Value:
    """Where the keys come from, in ckpt_sync.keys' order: a key file from a flag, the key variable, a
    key file from the environment or the file, the default key file. Never the key itself."""
    if key_file.source.startswith(("flag", "argument")):
        return Value(key_file.value, key_file.source)
    if env.get(ENV_KEY):
        return Value(REDACTED, f"env {ENV_KEY}")
    if key_file.value:
        return Value(key_file.value, key_file.source)
    default = default_key_file()
    return Value(str(default) if default.is_file() else f"{default} (missing)", "default")


def apply(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Effective:
    """Resolve every setting and write the effective values back onto ``args`` (the one place the CLI
    resolves configuration). Only the options a verb has are written; the file is validated whole."""
    env = os.environ if env is None else env
    flags = {s.name: getattr(args, s.dest, None) for s in SETTINGS}
    effective = resolve(flags, env, getattr(args, "config", None))
    for s in SETTINGS:
        if hasattr(args, s.dest):
            setattr(args, s.dest, effective[s.name])
    if hasattr(args, "key_file"):
        # $BACKUP_ENCRYPTION_KEY beats a key file named by the env or the config file (not by a flag).
        key = effective.key
        args.key_file = key.value if key.value != REDACTED and key.source != "default" else None
    args.settings = effective
    return effective


# --- the store a verb or a library call reaches ----------------------------------------------------

STORE_SETTINGS = (
    "repo",
    "key_file",
    "endpoint_url",
    "bwlimit",
    "retry_attempts",
    "retry_time",
    "workers",
    "chunk_size",
)


@dataclass(frozen=True)
class StoreAccess:
    """Where the repository is and how to reach it, as resolved from one ``Effective``."""

    url: str
    key_file: str | None  # None: $BACKUP_ENCRYPTION_KEY, else the default key file (keys.load_keyring)
    endpoint_url: str | None
    bwlimit: int | None
    retry: RetryPolicy
    workers: int | None
    chunk_size: int | None  # bytes; None: the default

    def keys(self) -> KeyRing:
        return load_keyring(self.key_file)

    def provider_options(self) -> dict[str, Any]:
        """What ``providers.open_provider`` takes beside the URL: retry budget, endpoint, bwlimit."""
        options: dict[str, Any] = {"retry": self.retry}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.bwlimit:
            options["bwlimit"] = self.bwlimit
        return options


def store_access(effective: Effective) -> StoreAccess:
    """The store the resolved settings name. ``$BACKUP_ENCRYPTION_KEY`` beats a key file named by the
    environment or the config file, not one named by a flag or an argument."""
    key = effective.key
    return StoreAccess(
        url=effective["repo"] or default_repo_url(),
        key_file=key.value if key.value != REDACTED and key.source != "default" else None,
        endpoint_url=effective["endpoint_url"],
        bwlimit=effective["bwlimit"],
        retry=RetryPolicy(attempts=effective["retry_attempts"], max_seconds=effective["retry_time"]),
        workers=effective["workers"],
        chunk_size=parse_size(effective["chunk_size"]) if effective["chunk_size"] else None,
    )


def resolve_store(
    repo: str | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **given: Any,
) -> StoreAccess:
    """A library call's store: its arguments (``repo``, ``key_file``, and any of ``STORE_SETTINGS`` as
    keywords; None: not given) > the environment > the config file > the default, checked as the
    command line checks them (an unknown ``CKPT_SYNC_*`` variable or a bad value is a ConfigError)."""
    unknown = set(given) - set(STORE_SETTINGS)
    if unknown:
        raise TypeError(f"resolve_store() takes the store settings {', '.join(STORE_SETTINGS)}; not {sorted(unknown)}")
    check_environment(env)
    flags = {"repo": repo, "key_file": str(key_file) if key_file is not None else None, **given}
    return store_access(resolve(flags, env, arguments=True))
