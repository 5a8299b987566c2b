"""gfprobe for Hugging Face Transformers: a ``Trainer``'s metrics and arguments in gfprobe run files.

Importing this package imports neither transformers nor torch (gfprobe loads its plugin module in
every process ``gfprobe record`` runs); ``GfprobeCallback`` is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gfprobe_transformers.callback import GfprobeCallback

__all__ = ["GfprobeCallback", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "GfprobeCallback":
        from gfprobe_transformers.callback import GfprobeCallback

        globals()[name] = GfprobeCallback
        return GfprobeCallback
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("gfprobe-transformers")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module 'gfprobe_transformers' has no attribute {name!r}")
