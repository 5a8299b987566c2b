"""The ``transformers`` gfprobe plugin: under ``gfprobe record`` every ``Trainer`` gets a ``GfprobeCallback``.

gfprobe loads this module in every process ``gfprobe record`` runs, so it imports neither
transformers nor torch: it waits for ``transformers.trainer`` (the module ``transformers.Trainer``
lazily resolves to) and only then patches ``Trainer``. A process that never builds a Trainer
pays one entry in ``sys.meta_path``.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any

from gfprobe.plugin import hookimpl

if TYPE_CHECKING:
    from gfprobe.bootstrap.recording import Recording

log = logging.getLogger("gfprobe")

TRAINER_MODULE = "transformers.trainer"
_PATCHED = "__gfprobe_transformers__"  # marks our wrappers: patching twice would add two callbacks
_AUTOMATIC = "_gfprobe_automatic_callback"  # on a Trainer: the callback this plugin added to it


@hookimpl
def gfprobe_record_started(recording: Recording) -> None:
    """Attach to every ``Trainer`` once ``transformers.trainer`` is imported (now, if it is)."""

    def attach_to_trainer(module: ModuleType) -> None:
        patch_trainer(module, recording)

    recording.after_import(TRAINER_MODULE, attach_to_trainer)


def patch_trainer(module: ModuleType, recording: Recording | None = None) -> None:
    """Wrap ``module.Trainer.__init__`` (each Trainer, subclasses included, gets a
    ``GfprobeCallback`` unless it was given one) and ``add_callback`` (a ``GfprobeCallback``
    added later replaces the automatic one, so metrics are never stored twice). Every
    GfprobeCallback of a Trainer stores its attributes through ``recording.set_attrs``."""
    trainer = module.Trainer
    if getattr(trainer.__init__, _PATCHED, False):
        return
    original_init, original_add = trainer.__init__, trainer.add_callback

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        _add_automatic(self)
        _adopt(self, recording)

    @functools.wraps(original_add)
    def add_callback(self: Any, callback: Any) -> None:
        index = _drop_automatic(self, callback)
        original_add(self, callback)
        if index is not None:
            _move_last(self, index)
        _adopt(self, recording)

    for wrapper in (__init__, add_callback):
        setattr(wrapper, _PATCHED, True)
    trainer.__init__ = __init__
    trainer.add_callback = add_callback


def _add_automatic(trainer: Any) -> None:
    try:
        from gfprobe_transformers.callback import GfprobeCallback

        if any(isinstance(c, GfprobeCallback) for c in trainer.callback_handler.callbacks):
            return
        callback = GfprobeCallback()
        # First: it must see each event's values before another callback changes them
        # (PrinterCallback pops total_flos from the logs it prints).
        trainer.callback_handler.callbacks.insert(0, callback)
        setattr(trainer, _AUTOMATIC, callback)
    except Exception as exc:
        _warn("could not add GfprobeCallback to the Trainer", exc)


def _adopt(trainer: Any, recording: Recording | None) -> None:
    """Route the attributes of the Trainer's GfprobeCallbacks through ``recording.set_attrs``."""
    if recording is None:
        return
    try:
        from gfprobe_transformers.callback import GfprobeCallback

        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, GfprobeCallback):
                callback._set_attrs = recording.set_attrs
    except Exception as exc:
        _warn("could not hand the recording to GfprobeCallback", exc)


def _drop_automatic(trainer: Any, added: Any) -> int | None:
    """Remove the automatic callback when a GfprobeCallback is added; its position, else None."""
    try:
        from gfprobe_transformers.callback import GfprobeCallback

        automatic = getattr(trainer, _AUTOMATIC, None)
        ours = isinstance(added, GfprobeCallback) or (isinstance(added, type) and issubclass(added, GfprobeCallback))
        callbacks = trainer.callback_handler.callbacks
        if automatic is None or not ours or added is automatic or automatic not in callbacks:
            return None
        index: int = callbacks.index(automatic)
        callbacks.remove(automatic)
        setattr(trainer, _AUTOMATIC, None)
        return index
    except Exception as exc:
        _warn("could not replace the automatic GfprobeCallback", exc)
        return None


def _move_last(trainer: Any, index: int) -> None:
    """Put the callback just added where the automatic one was."""
    try:
        callbacks = trainer.callback_handler.callbacks
        callbacks.insert(index, callbacks.pop())
    except Exception as exc:
        _warn("could not place the added GfprobeCallback", exc)


def _warn(what: str, exc: Exception) -> None:
    log.warning("gfprobe: %s (%s: %s); training goes on without its metrics", what, type(exc).__name__,
                " ".join(str(exc).split()))
