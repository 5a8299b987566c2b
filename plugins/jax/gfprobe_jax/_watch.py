"""``watch``: an optax transformation that records the gradients it consumes.

The wrapper's ``update`` computes the ten statistics of the ``updates`` it receives (the gradient
the optimizer consumes) inside whatever ``jit`` the user compiles the step with, and sends them to
the host through an unordered ``io_callback``: the Python thread that dispatches steps never waits
for them (see README.md, "How it works").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.experimental import io_callback

from gfprobe.capture.recorder import Recorder
from gfprobe.errors import ConfigError
from gfprobe.outpath import check_writable
from gfprobe_jax import plugin
from gfprobe_jax._params import ParamTable, build_table
from gfprobe_jax._probe import Probe, run_metadata
from gfprobe_jax._stats import step_stats

log = logging.getLogger("gfprobe")


class WatchState(NamedTuple):
    """The watched optimizer's state: the wrapped one's, and what recording needs inside ``jit``."""

    step: jax.Array  # int32 scalar: updates applied so far, the recorded step index
    masks: tuple[jax.Array | None, ...]  # bool, one per parameter leaf (None: not masked)
    inner_state: optax.OptState


class Watched(optax.GradientTransformationExtraArgs):  # type: ignore[misc]  # optax ships no py.typed
    """An optax transformation whose updates are recorded; use it wherever the wrapped one went.

    Close it with :meth:`close` or a ``with`` block; otherwise the run is closed at exit.
    """

    probe: Probe

    def close(self, status: str = "complete") -> Path | None:
        """Write every recorded step and finalise the run file; returns its path. Idempotent."""
        return self.probe.close(status)

    @property
    def path(self) -> Path | None:
        """The run file (None before the first recorded step, or when nothing is recorded)."""
        return self.probe.path

    @property
    def failure(self) -> str | None:
        """Why recording stopped early, or None."""
        return self.probe.failure

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close("interrupted" if interrupted else "failed" if exc_type else "complete")


def watch(
    tx: optax.GradientTransformation,
    out: str | Path | None = None,
    params: Any | None = None,
    masks: Any | None = None,
    every: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str = "optax",
) -> Watched:
    """Record per-layer gradient statistics of ``tx``'s updates into the run file ``out``.

    Args:
        tx: the optax transformation to wrap, e.g. ``optax.adam(1e-3)``.
        out: the run file to create; an existing file is never overwritten (a ``.<pid>`` suffix
            is added instead). If it cannot be written, a warning is logged and training goes
            on unrecorded. Default: ``gfprobe record``'s ``--out`` when the script runs under
            it, else ``run.h5``.
        params: the parameter pytree, which names the parameters (``Dense_0.kernel``); when
            ``None``, the first ``tx.init(params)`` does.
        masks: ``None`` or a pytree (or flat ``{name: mask}`` mapping) of binary masks for some
            or all parameters; entries other than 0 are active weights.
        every: record every N-th update (updates count from 0). Default: ``gfprobe record``'s
            ``--every`` under it, else 1.
        attrs: free-form run attributes stored in the file, e.g. ``{"sparse": True}``; under
            ``gfprobe record`` its ``--attr`` values are stored too (the script's win on a clash).
        name: the optimizer's name in the file (``/streams/optimizer``), e.g. ``"adam"``.

    Returns:
        A :class:`Watched` transformation: ``init`` and ``update`` as ``tx``'s, plus ``close()``.

    Raises:
        ConfigError: ``tx`` is not a transformation, ``every`` is not a positive int, or a mask
            does not fit ``params``.
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise ConfigError(f"gfprobe_jax.watch: tx must be an optax GradientTransformation such as "
                          f"optax.adam(1e-3), got {type(tx).__name__}")
    recording = plugin.current
    out = out if out is not None else recording.out if recording is not None else "run.h5"
    every = every if every is not None else recording.every if recording is not None else 1
    attrs = {**(recording.attrs if recording is not None else {}), **(attrs or {})}
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"Recording interval must be a positive int: every={every!r}")
    table = build_table(params, masks) if params is not None else None
    recorder = Recorder(Path(out), run_metadata(every, masks is not None), attrs)
    probe = Probe(recorder, name)
    probe.table = table
    try:
        check_writable(out, "gfprobe_jax.watch(out=...)")
    except ConfigError as exc:  # training matters more than its recording: warn and train on
        log.warning("gfprobe: not recording: %s", exc)
    else:
        probe.start()
    inner = optax.with_extra_args_support(tx)
    recorded = _Updates(probe, inner, masks, every)
    watched = Watched(recorded.init, recorded.update)
    watched.probe = probe
    return watched


class _Updates:
    """``init`` and ``update`` of the watched transformation."""

    def __init__(self, probe: Probe, inner: optax.GradientTransformationExtraArgs, masks: Any | None,
                 every: int) -> None:
        self._probe = probe
        self._inner = inner
        self._masks = masks
        self._every = every
        self._warned = False

    def init(self, params: optax.Params) -> WatchState:
        inner_state = self._inner.init(params)
        return WatchState(jnp.zeros((), jnp.int32), self._state_masks(params), inner_state)

    def update(self, updates: optax.Updates, state: WatchState, params: optax.Params | None = None,
               **extra_args: Any) -> tuple[optax.Updates, WatchState]:
        if self._probe.active:
            self._record(updates, state)
        new_updates, inner_state = self._inner.update(updates, state.inner_state, params, **extra_args)
        return new_updates, WatchState(state.step + 1, state.masks, inner_state)

    def _state_masks(self, params: optax.Params) -> tuple[jax.Array | None, ...]:
        """The masks, as device arrays for the state; () when ``params`` is not the recorded tree."""
        if self._probe.table is None:
            self._probe.table = build_table(params, self._masks)  # a bad mask raises here, at set-up
        leaves, treedef = jax.tree_util.tree_flatten(params)
        if not self._probe.table.matches(leaves, treedef):
            self._mismatch("init()")
            return ()
        return tuple(None if m is None else jnp.asarray(m) for m in self._probe.table.masks)

    def _record(self, updates: optax.Updates, state: WatchState) -> None:
        """Trace the statistics and their callback into the update (runs at trace time only)."""
        try:
            leaves, treedef = jax.tree_util.tree_flatten(updates)
            table: ParamTable | None = self._probe.table
            if table is None or not table.matches(leaves, treedef) or len(state.masks) != len(leaves):
                self._mismatch("update()")
                return
            masks, step, probe = state.masks, state.step, self._probe

            def emit() -> None:
                floats, ints = step_stats(leaves, masks)
                io_callback(probe.receive, None, step, floats, ints, ordered=False)

            if self._every == 1:
                emit()
            else:
                jax.lax.cond(step % self._every == 0, emit, lambda: None)
        except Exception as exc:  # a bug here must not stop training
            self._probe.fail(exc)

    def _mismatch(self, where: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("gfprobe: %s got a pytree whose leaves differ from the recorded parameters "
                        "(params= or the first init()); those updates are not recorded", where)
