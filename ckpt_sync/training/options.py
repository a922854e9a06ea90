"""``CheckpointManager``'s options as a few small frozen groups, each with defaults that work.

The manager's constructor keeps every loose keyword it has always had (``every_n_steps=100``,
``max_keep=3``, ...); each one belongs to exactly one group below (``KEYWORDS``), and the manager
stores only the groups. A caller may pass a whole group instead (``triggers=Triggers(...)``,
``remote_sync=RemoteSync(...)``: the keyword is the group's name in snake case);
giving a group and one of its loose keywords at once is a UsageError, since one would silently
win over the other. A group checks its values when it is built, with the errors the constructor
always raised for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from ..errors import ConfigError, UsageError
from ..transfer.retention import RetentionPolicy
from .triggers import BestMetric, SaveTrigger, default_trigger


class _Unset:
    """The value of a loose keyword the caller did not give: its group's default applies."""

    def __repr__(self) -> str:
        return "<group default>"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Triggers:
    """When to save: a checkpoint (time, step, or any ``trigger``), and the best model (``best_metric``).

    ``trigger`` replaces ``interval_s`` and ``every_n_steps``; ``full_every=K`` makes only every K-th
    triggered save a full one (optimizer and scheduler state), the rest model-only.
    """

    KEYWORDS: ClassVar[dict[str, str]] = {
        "interval_s": "interval_s",
        "every_n_steps": "every_n_steps",
        "trigger": "trigger",
        "best_metric": "best_metric",
        "full_every": "full_every",
    }

    interval_s: float | None = 180  # None (or 0) turns the time trigger off
    every_n_steps: int | None = None
    trigger: SaveTrigger | None = None
    best_metric: BestMetric = field(default_factory=BestMetric)  # None stands for this default too
    full_every: int | None = None

    def __post_init__(self) -> None:
        if self.best_metric is None:
            object.__setattr__(self, "best_metric", BestMetric())
        if self.full_every is not None and self.full_every < 1:
            raise UsageError("full_every must be at least 1")
        self.save_trigger()  # a bad interval or step count fails here, not at the first save

    def save_trigger(self) -> SaveTrigger:
        return self.trigger or default_trigger(self.interval_s, self.every_n_steps)


@dataclass(frozen=True)
class LocalRetention:
    """What stays in the checkpoint folder (and in ``backup_dir``): FIFO of ``max_keep``, or ``policy``.

    ``policy`` (a ``ckpt_sync.retention`` policy, e.g. ``build_policy(keep_every_steps=1000,
    keep_last=3)``) replaces ``max_keep``; ``max_keep=None`` keeps every checkpoint.
    """

    KEYWORDS: ClassVar[dict[str, str]] = {
        "max_keep": "max_keep",
        "retention": "policy",
        "rotation": "rotation",
        "backup_dir": "backup_dir",
    }

    max_keep: int | None = 5
    policy: RetentionPolicy | None = None
    rotation: str = "FIFO"  # FIFO is the only rotation
    backup_dir: str | os.PathLike[str] | None = None  # a second folder (another disk), rotated the same way

    def __post_init__(self) -> None:
        if str(self.rotation).upper() != "FIFO":
            raise ConfigError(f"rotation {self.rotation!r} is not supported (only FIFO)")
        if self.max_keep is not None and self.max_keep < 1:
            raise UsageError("max_keep must be at least 1 (or None to keep every checkpoint)")


@dataclass(frozen=True)
class AsyncWrites:
    """Saves written by a background thread, so the training loop waits only for the host copy."""

    KEYWORDS: ClassVar[dict[str, str]] = {
        "async_save": "enabled",
        "reuse_snapshot_buffers": "reuse_snapshot_buffers",
        "if_busy": "if_busy",
    }

    enabled: bool = True
    # Keep the host copy between saves and refill it in place: faster snapshots, fewer page faults.
    reuse_snapshot_buffers: bool = True
    # A trigger while the previous write runs: "wait" for it or "skip" this save (best and emergency saves wait).
    if_busy: Literal["wait", "skip"] = "wait"

    def __post_init__(self) -> None:
        if self.if_busy not in ("wait", "skip"):
            raise UsageError(f"if_busy must be 'wait' or 'skip', not {self.if_busy!r}")


@dataclass(frozen=True)
class RemoteSync:
    """Where finished checkpoints go off the machine, and what the repository keeps.

    ``remote_keep`` prunes the repository to that many newest checkpoints (plus ``best``) after each
    upload: None follows the local ``max_keep``, 0 never prunes; ``remote_retention`` replaces the
    count. ``direct=True`` saves full checkpoints straight into ``repo`` with no local copy (sharded
    DTensor/FSDP state through DCP's Writer, other state through ``ckpt_sync.save``'s stream); a
    save the store cannot take is written locally and queued instead.
    """

    KEYWORDS: ClassVar[dict[str, str]] = {
        "repo": "repo",
        "key_file": "key_file",
        "remote_keep": "remote_keep",
        "remote_retention": "remote_retention",
        "direct": "direct",
    }

    repo: str | None = None
    key_file: str | os.PathLike[str] | None = None
    remote_keep: int | None = None
    remote_retention: RetentionPolicy | None = None
    direct: bool = False


@dataclass(frozen=True)
class Emergency:
    """What SIGINT/SIGTERM do: an emergency checkpoint at the next safe point, then raise or exit.

    ``on_signal="exit"`` exits with ``exit_code`` (default 128 + the signal number);
    ``handle_signals=False`` leaves signals alone. ``pid_file`` is written at start and removed at
    close, for external power-event hooks.
    """

    KEYWORDS: ClassVar[dict[str, str]] = {
        "handle_signals": "handle_signals",
        "on_signal": "on_signal",
        "exit_code": "exit_code",
        "pid_file": "pid_file",
    }

    handle_signals: bool = True
    on_signal: Literal["raise", "exit"] = "raise"
    exit_code: int | None = None
    pid_file: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if self.on_signal not in ("raise", "exit"):
            raise UsageError(f"on_signal must be 'raise' or 'exit', not {self.on_signal!r}")


Group = Triggers | LocalRetention | AsyncWrites | RemoteSync | Emergency
G = TypeVar("G", Triggers, LocalRetention, AsyncWrites, RemoteSync, Emergency)

# The manager's keyword for each group, as the caller writes it.
GROUP_KEYWORDS: dict[type[Group], str] = {
    Triggers: "triggers",
    LocalRetention: "local_retention",
    AsyncWrites: "async_writes",
    RemoteSync: "remote_sync",
    Emergency: "emergency",
}


def group_of(keyword: str) -> str | None:
    """The manager's group keyword that loose ``keyword`` belongs to (None: it belongs to none)."""
    return next((name for cls, name in GROUP_KEYWORDS.items() if keyword in cls.KEYWORDS), None)


def resolve(cls: type[G], given: G | None, arguments: dict[str, Any]) -> G:
    """The group: ``given``, else one built from its loose keywords in ``arguments`` (the manager's
    arguments by name; ``UNSET`` ones take the group's default). Both at once is a UsageError."""
    passed = {k: arguments[k] for k in cls.KEYWORDS if arguments[k] is not UNSET}
    if given is None:
        return cls(**{cls.KEYWORDS[k]: v for k, v in passed.items()})
    if not isinstance(given, cls):
        raise UsageError(f"{GROUP_KEYWORDS[cls]}= takes a {cls.__name__}, not {type(given).__name__}")
    if passed:
        inside = ", ".join(f"{cls.KEYWORDS[k]}=..." for k in passed)
        raise UsageError(
            f"give either {GROUP_KEYWORDS[cls]}={cls.__name__}(...) or {', '.join(f'{k}=' for k in passed)}, "
            f"not both: write {cls.__name__}({inside})"
        )
    return given
