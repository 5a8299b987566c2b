"""``gfprobe record``'s attachment: every Lightning Trainer gets a ``GfprobeCallback``.

``Trainer.__init__`` is wrapped, once per Lightning package; after the original ``__init__`` a
``GfprobeCallback`` is added to ``trainer.callbacks`` unless one is there already, before the
checkpoint callbacks (Lightning keeps those last). Nothing else about the Trainer changes, so
the script's output, exit code and weights stay as they were.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

from gfprobe_lightning._core import CallbackCore

log = logging.getLogger("gfprobe")
_PATCHED = "_gfprobe_adds_callback"


def callback_class(package: ModuleType) -> type[CallbackCore]:
    """``GfprobeCallback`` for ``package``: ``lightning.pytorch`` or ``pytorch_lightning``."""
    if package.__name__ == "pytorch_lightning":
        from gfprobe_lightning import standalone

        return standalone.GfprobeCallback
    from gfprobe_lightning import callback

    return callback.GfprobeCallback


def add_callback_to_every_trainer(package: ModuleType) -> None:
    """Wrap ``package.Trainer.__init__`` (idempotent)."""
    trainer_cls = package.Trainer
    original = trainer_cls.__init__
    if getattr(original, _PATCHED, False):
        return
    callback_cls = callback_class(package)
    checkpoint_types: tuple[type, ...] = (package.callbacks.Checkpoint,)

    @functools.wraps(original)  # keeps the signature that LightningCLI reads
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            ensure_callback(self, callback_cls, checkpoint_types)
        except Exception as exc:
            log.warning("gfprobe: no GfprobeCallback for this Trainer (%s: %s); its logged metrics are not "
                        "recorded", type(exc).__name__, exc)

    setattr(__init__, _PATCHED, True)
    trainer_cls.__init__ = __init__


def ensure_callback(trainer: Any, callback_cls: type[CallbackCore],
                    checkpoint_types: tuple[type, ...] = ()) -> None:
    """Add a ``callback_cls()`` to ``trainer.callbacks`` unless a GfprobeCallback is there."""
    callbacks: list[Any] = trainer.callbacks
    if any(isinstance(callback, CallbackCore) for callback in callbacks):
        return
    position = next((i for i, callback in enumerate(callbacks) if isinstance(callback, checkpoint_types)),
                    len(callbacks))
    callbacks.insert(position, callback_cls())
