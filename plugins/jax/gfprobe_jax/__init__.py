"""gfprobe_jax: record per-layer gradient statistics of an optax optimizer into a gfprobe run file.

``tx = gfprobe_jax.watch(optax.adam(1e-3), out="run.h5", params=params)`` wraps the optimizer;
``gfprobe report run.h5`` reads the result. Importing this package imports neither JAX nor
optax (gfprobe loads ``gfprobe_jax.plugin`` to list plugins); ``watch`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gfprobe.capture.session import log
    from gfprobe_jax._probe import Probe
    from gfprobe_jax._watch import Watched, WatchState, watch

_LAZY = {
    "watch": "gfprobe_jax._watch",
    "Watched": "gfprobe_jax._watch",
    "WatchState": "gfprobe_jax._watch",
    "Probe": "gfprobe_jax._probe",
    "log": "gfprobe.capture.session",  # gfprobe.log: metrics land in every active run
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("gfprobe-jax")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'gfprobe_jax' has no attribute {name!r}")


__all__ = ["Probe", "WatchState", "Watched", "__version__", "log", "watch"]
