"""gfprobe's Lightning plugin: what ``self.log`` logs and the hyper-parameters, recorded into
gfprobe runs.

Importing this package imports neither Lightning nor torch: ``GfprobeCallback`` is loaded when
first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gfprobe_lightning._core import recording_active
    from gfprobe_lightning.callback import GfprobeCallback

__all__ = ["GfprobeCallback", "recording_active"]

_LAZY = {"GfprobeCallback": "gfprobe_lightning.callback", "recording_active": "gfprobe_lightning._core"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'gfprobe_lightning' has no attribute {name!r}")
