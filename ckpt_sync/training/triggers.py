"""When to save: tiny policy objects with one method each, composed with ``AnyTrigger`` (as Orbax does).

The manager asks ``should_save(ctx)`` once per ``maybe_save`` call; the best-model decision is a
separate ``BestMetric`` because it looks at a metric, not at the clock or the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class SaveContext:
    step: int
    now: float  # the manager's clock (monotonic seconds)
    last_save_step: int | None  # None before the first save of this run
    last_save_time: float  # when the last save was requested, or when the manager started


class SaveTrigger(Protocol):
    def should_save(self, ctx: SaveContext) -> bool: ...


@dataclass(frozen=True)
class EveryNSeconds:
    """The default: ``time.time() - last_checkpoint_time >= checkpoint_interval`` (180 s)."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("interval must be positive")

    def should_save(self, ctx: SaveContext) -> bool:
        return ctx.now - ctx.last_save_time >= self.seconds


@dataclass(frozen=True)
class EveryNSteps:
    """The alternative: ``global_step % checkpoint_steps == 0`` (once per step, however often asked)."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("every_n_steps must be at least 1")

    def should_save(self, ctx: SaveContext) -> bool:
        return ctx.step % self.n == 0 and ctx.step != ctx.last_save_step


@dataclass(frozen=True)
class AnyTrigger:
    """Fires when any member fires."""

    triggers: tuple[SaveTrigger, ...]

    def should_save(self, ctx: SaveContext) -> bool:
        return any(t.should_save(ctx) for t in self.triggers)


@dataclass(frozen=True)
class Never:
    """For managers that only save on request (``save()``) or on a new best."""

    def should_save(self, ctx: SaveContext) -> bool:
        return False


@dataclass(frozen=True)
class BestMetric:
    """``if val_loss < best_loss``; ``mode="max"`` for accuracy-like metrics."""

    mode: Literal["min", "max"] = "min"
    min_delta: float = 0.0

    @property
    def initial(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def is_better(self, value: float, best: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta


def default_trigger(interval_s: float | None, every_n_steps: int | None) -> SaveTrigger:
    parts: list[SaveTrigger] = []
    if interval_s:
        parts.append(EveryNSeconds(interval_s))
    if every_n_steps:
        parts.append(EveryNSteps(every_n_steps))
    if not parts:
        return Never()
    return parts[0] if len(parts) == 1 else AnyTrigger(tuple(parts))
