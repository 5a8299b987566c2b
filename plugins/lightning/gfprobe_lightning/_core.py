"""What ``GfprobeCallback`` does, written once for both Lightning packages.

``lightning.pytorch`` and the standalone ``pytorch_lightning`` have the same trainer internals
but distinct ``Callback`` classes; each gets a thin subclass of :class:`CallbackCore`
(``callback.py``, ``standalone.py``). This module imports neither package, nor torch.

**Metrics.** Every value that Lightning hands its loggers passes through one method,
``trainer._logger_connector.log_metrics(metrics, step)``: the ``self.log`` values of a training
step (at the ``log_every_n_steps`` cadence), of an epoch end (``*_epoch`` and ``on_epoch``
values), of validation and test. The callback wraps that method of its trainer for the length of
a stage, so gfprobe gets each logged value exactly once, as the loggers do, with the names they
get (``train_loss_step``, ``train_loss_epoch``), and no host synchronisation that Lightning's
logging does not already make. It sees them even when the trainer has no logger
(``logger=False``): Lightning computes them, then drops them. Values written to a logger
directly (``self.logger.log_metrics``, ``LearningRateMonitor``) bypass that method and are not
recorded.

**Step.** A value is recorded at ``trainer.global_step``: the optimizer steps taken when Lightning
hands it over, gfprobe's own convention for metrics (``gfprobe.log``, ``--metric``). Under
automatic optimization without accumulation that is Lightning's logger step + 1 during fit
(Lightning logs at the index of the last step taken) and the logger step itself after fit.

**Hyper-parameters.** At fit start, before the first optimizer step: what Lightning hands its
loggers, i.e. ``hparams_initial`` of the module and of the datamodule (the datamodule's win on a
clash), unless ``save_hyperparameters(logger=False)`` or ``Trainer(enable_autolog_hparams=False)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from numbers import Real
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfprobe.capture import session
from gfprobe.errors import ConfigError, short
from gfprobe.schedule import as_schedule

if TYPE_CHECKING:
    from gfprobe.adapters.torch_probe import Probe

log = logging.getLogger("gfprobe")

# Set on the wrapper of a trainer's log_metrics: the callback whose wrapper it is. A trainer whose
# metrics are recorded already (a second GfprobeCallback, a stage after an interrupted one) is
# left alone, so that no value is recorded twice.
_WRAPPED_BY = "_gfprobe_callback"
_MASK_MODES = ("auto", "zeros", "none")


def recording_active() -> bool:
    """Whether anything records a gfprobe run in this process: ``gfprobe record``,
    ``gfprobe.watch``, or a ``GfprobeCallback(out=...)`` during its fit."""
    return session.recording()


class CallbackCore:
    """The hooks of ``GfprobeCallback``; see ``gfprobe_lightning.GfprobeCallback``."""

    def __init__(
        self,
        out: str | PathLike[str] | None = None,
        *,
        every: int | Callable[[int], bool] = 1,
        masks: str | Mapping[str, Any] = "auto",
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if out is not None and not isinstance(out, str | PathLike):
            raise ConfigError(f"GfprobeCallback(out=...) is the run file to write, a path; got {short(out)}")
        as_schedule(every)  # validated here, at the boundary, not at fit start
        if isinstance(masks, str) and masks not in _MASK_MODES:
            raise ConfigError(f"GfprobeCallback(masks=...) must be one of {', '.join(_MASK_MODES)} or a "
                              f"{{param_name: mask}} mapping, got {masks!r}")
        self.out = Path(out) if out is not None else None
        self.every = every
        self.masks = masks
        self.attrs = dict(attrs or {})
        self._probe: Probe | None = None
        self._wrapped: tuple[Any, Callable[..., Any]] | None = None  # (logger connector, our wrapper)
        self._warned: set[str] = set()

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._guard("watch the logged metrics", self._wrap_log_metrics, trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # In this order: the recording must exist before attributes go into it. ModelPruning's
        # masks need nothing here: gfprobe takes up a mask put on mid-training at the next step.
        self._guard("start recording", self._start_recording, pl_module)
        self._guard("record the hyper-parameters", self._record_hyperparameters, trainer, pl_module)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._guard("stop watching the logged metrics", self._unwrap_log_metrics)
        if stage == "fit":
            self._guard("close the recording", self._stop_recording, "complete")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning calls no teardown hook after an exception: this is the last hook of the stage.
        self._guard("stop watching the logged metrics", self._unwrap_log_metrics)
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._guard("close the recording", self._stop_recording, status)

    # -- metrics --------------------------------------------------------------------------------
    def _wrap_log_metrics(self, trainer: Any) -> None:
        connector: Any = getattr(trainer, "_logger_connector", None)
        original = getattr(connector, "log_metrics", None)
        if original is None:
            raise RuntimeError("this Lightning version has no trainer._logger_connector.log_metrics; "
                               "the values of self.log are not recorded")
        if getattr(original, _WRAPPED_BY, None) is not None:
            return

        def log_metrics(metrics: Any, step: int | None = None) -> Any:
            self._record_metrics(trainer, metrics, step)
            return original(metrics, step)

        setattr(log_metrics, _WRAPPED_BY, self)
        connector.log_metrics = log_metrics  # on the instance: the class and other trainers are untouched
        self._wrapped = (connector, log_metrics)

    def _unwrap_log_metrics(self) -> None:
        wrapped, self._wrapped = self._wrapped, None
        if wrapped is None:
            return
        connector, wrapper = wrapped
        if vars(connector).get("log_metrics") is wrapper:  # nothing wrapped it on top of us since
            del connector.log_metrics

    def _record_metrics(self, trainer: Any, metrics: Any, step: int | None) -> None:
        """Never raises: Lightning's logging goes on whatever gfprobe makes of a value."""
        try:
            if not metrics or not recording_active():
                return
            values: dict[str, float] = {}
            for name, value in metrics.items():
                if name == "step" and step is None:
                    continue  # `self.log("step", ...)` sets Lightning's logger step: not a metric
                number = _number(value)
                if number is None:
                    self._warn_once(f"metric {name}", "gfprobe: Lightning metric %r is not a single number (%s); "
                                    "it is not recorded", name, short(value))
                    continue
                values[str(name)] = number
            if values:
                session.log_values(values, step=int(trainer.global_step))
        except Exception as exc:
            self._warn_once("metrics", "gfprobe: recording Lightning's logged metrics failed (%s: %s); "
                            "training goes on", type(exc).__name__, exc)

    # -- the run itself -------------------------------------------------------------------------
    def _start_recording(self, pl_module: Any) -> None:
        if self.out is None or self._probe is not None:
            return
        if recording_active():
            log.info("gfprobe: GfprobeCallback(out=%s) ignored: this process records already", self.out)
            return
        import gfprobe

        self._probe = gfprobe.watch(pl_module, out=self.out, every=self.every, masks=self.masks,
                                    attrs=self.attrs)

    def _stop_recording(self, status: str) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.close(status)

    def _record_hyperparameters(self, trainer: Any, pl_module: Any) -> None:
        if recording_active():
            hparams = logged_hyperparameters(trainer, pl_module)
            if hparams:
                session.set_attrs(hparams)

    # -- failures ---------------------------------------------------------------------------------
    def _guard(self, what: str, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:
            self._warn_once(what, "gfprobe: GfprobeCallback could not %s (%s: %s); training goes on",
                            what, type(exc).__name__, " ".join(str(exc).split()))

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the trainer by spawn-based strategies, before any stage starts; the live
        # recording and wrapper belong to this process.
        return {**vars(self), "_probe": None, "_wrapped": None}


def _number(value: Any) -> float | None:
    """``value`` as a float: a number, a one-element tensor or a NumPy scalar; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Real):
        return float(value)
    item = getattr(value, "item", None)
    if not callable(item):
        return None
    try:
        value = item()  # a tensor of several elements, or one on the meta device, raises
    except Exception:
        return None
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else None


def logged_hyperparameters(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The hyper-parameters Lightning hands its loggers at fit start (its ``_log_hyperparams``),
    as run attributes."""
    if not getattr(trainer, "enable_autolog_hparams", True):
        return {}
    merged: dict[str, Any] = {}
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        if owner is not None and getattr(owner, "_log_hyperparams", True):
            merged.update(getattr(owner, "hparams_initial", None) or {})
    merged.pop("_class_path", None)  # LightningCLI's own entry, which Lightning does not log either
    return {str(key): _attr_value(value) for key, value in merged.items() if str(key)}


def _attr_value(value: Any) -> Any:
    """Scalars and strings as they are; 0-d tensors as numbers; the rest as gfprobe stores it
    (JSON text), or its repr where JSON cannot hold it (a dict that contains itself)."""
    if isinstance(value, str | bool | int | float):
        return value
    item = getattr(value, "item", None)  # NumPy scalars, one-element tensors
    if callable(item):
        try:
            scalar = item()
        except Exception:
            scalar = None
        if isinstance(scalar, str | bool | int | float):
            return scalar
    try:
        json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    return value
