"""``GfprobeCallback`` for the standalone ``pytorch_lightning`` package, whose Trainer expects
its own ``Callback`` class; see ``gfprobe_lightning.GfprobeCallback``."""

from __future__ import annotations

from pytorch_lightning import Callback

from gfprobe_lightning._core import CallbackCore


class GfprobeCallback(CallbackCore, Callback):
    """``gfprobe_lightning.GfprobeCallback`` for ``import pytorch_lightning as pl``."""

