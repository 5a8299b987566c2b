"""When to record: schedules are callables from an optimizer step index to a yes/no.

Keeping "when" apart from "what" means hooks never carry ``if step % k`` logic of their own.
"""

from __future__ import annotations

from collections.abc import Callable

from gfprobe.errors import ConfigError

Schedule = Callable[[int], bool]


def every(interval: int, offset: int = 0) -> Schedule:
    """Record step ``offset`` and every ``interval``-th step after it (steps count from 0)."""
    if interval < 1:
        raise ConfigError(f"Recording interval must be at least 1: every={interval}")
    if offset < 0:
        raise ConfigError(f"Recording offset must not be negative: offset={offset}")

    def schedule(step: int) -> bool:
        return step >= offset and (step - offset) % interval == 0

    return schedule


def as_schedule(value: int | Schedule) -> Schedule:
    """Accept either an interval or a ready schedule callable."""
    if isinstance(value, int):
        return every(value)
    if callable(value):
        return value
    raise ConfigError(f"every= must be an int or a callable step -> bool, got {type(value).__name__}")
