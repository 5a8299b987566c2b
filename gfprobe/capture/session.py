"""Which recorders are active in this process, so that ``gfprobe.log`` can find them.

This is the one piece of process-wide state in gfprobe, on purpose: ``log`` must work from
anywhere in a script that ``gfprobe record`` wraps, without a handle being passed around.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any

from gfprobe.errors import ConfigError

_log = logging.getLogger("gfprobe")

if TYPE_CHECKING:  # importing gfprobe must stay cheap: the CLI starts with it
    from gfprobe.capture.recorder import Recorder

_active: list[Recorder] = []


def activate(recorder: Recorder) -> None:
    _active.append(recorder)


def deactivate(recorder: Recorder) -> None:
    if recorder in _active:
        _active.remove(recorder)


def recording() -> bool:
    """Whether a run records in this process (``gfprobe.watch`` or ``gfprobe record``)."""
    return bool(_active)


def log(step: int | None = None, **metrics: float) -> None:
    """Record metric values (e.g. ``gfprobe.log(test_acc=0.91)``) in every active run.

    ``step`` defaults to the number of optimizer steps taken so far. A silent no-op when
    nothing records, so scripts can call it unconditionally.
    """
    if not _active:
        return
    values = {}
    for name, value in metrics.items():
        value = getattr(value, "item", lambda v=value: v)()  # 0-d tensors and NumPy scalars
        if not isinstance(value, Real) or isinstance(value, bool):
            raise ConfigError(f"gfprobe.log: metric {name}={value!r} is not a number")
        values[name] = float(value)
    log_values(values, step)


def log_values(values: Mapping[str, float], step: int | None = None) -> None:
    """Like ``log``, for metric names that are not keyword-friendly (``step``, ``top-1``)."""
    if step is not None and (not isinstance(step, int) or step < 0):
        raise ConfigError(f"gfprobe.log: step must be a non-negative int, got step={step!r}")
    for recorder in list(_active):
        recorder.log_metrics(values, step)



def set_attrs(attrs: Mapping[str, Any]) -> None:
    """Store run attributes (e.g. a framework's hyper-parameters) in every active run.

    Values are scalars or strings, anything else is stored as JSON text (see docs/run-file.md).
    A silent no-op when nothing records. Later values for a key replace earlier ones.
    """
    if not _active:
        return
    from gfprobe.store.writer import attr_value  # only while recording: h5py is loaded by then

    storable = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"gfprobe.set_attrs: attribute names are non-empty strings, got {key!r}")
        try:
            storable[key] = attr_value(value)  # here, in the caller's thread: the writer's must not fail
        except ValueError as exc:
            _log.warning("gfprobe: run attribute %r not stored: %s", key, exc)
    for recorder in list(_active):
        recorder.add_attrs(storable)
