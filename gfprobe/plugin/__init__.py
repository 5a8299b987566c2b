"""gfprobe's plugin mechanism: pluggy hooks (``spec``), the plugins installed (``found``) and
their manager (``manager``).

Importing this package imports nothing (``found`` is used in every process ``gfprobe record``
runs, which may have no plugin to start): ``ModuleMask`` and ``hookimpl`` load pluggy on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gfprobe.plugin.spec import ModuleMask, hookimpl

__all__ = ["ModuleMask", "hookimpl"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gfprobe.plugin import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'gfprobe.plugin' has no attribute {name!r}")
