"""gfprobe: gradient-flow diagnostics for neural network training.

Importing gfprobe does not import torch: the analysis side (``gfprobe report``, ``check``)
works from run files alone.
"""

from __future__ import annotations

# typing's flag without importing typing (mypy reads any name TYPE_CHECKING as True): this file
# imports nothing, so a Ctrl-C while ``gfprobe`` starts lands in Python's start-up or after the
# command line has set its handler, not in a traceback through gfprobe (see console.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

    import torch

    from gfprobe.adapters.torch_probe import Probe
    from gfprobe.capture.session import log, set_attrs
    from gfprobe.errors import GfprobeError
    from gfprobe.plugin.spec import hookimpl
    from gfprobe.schedule import Schedule, every

# Importing gfprobe runs nothing but this file: a script that only calls ``gfprobe.log`` pays for
# what it uses.
_LAZY = {"log": "gfprobe.capture.session", "set_attrs": "gfprobe.capture.session", "GfprobeError": "gfprobe.errors",
         "every": "gfprobe.schedule", "hookimpl": "gfprobe.plugin.spec"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("gfprobe")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'gfprobe' has no attribute {name!r}")


__all__ = ["GfprobeError", "__version__", "every", "hookimpl", "log", "set_attrs", "watch"]


def watch(
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    out: str | Path = "run.h5",
    every: int | Schedule = 1,
    masks: str | Mapping[str, torch.Tensor] = "auto",
    attrs: Mapping[str, Any] | None = None,
    all_ranks: bool = False,
) -> Probe:
    """Record per-layer gradient statistics of ``model`` into the HDF5 file ``out``.

    Args:
        model: names the parameters (``None``: every optimizer in the process is recorded and
            named by the modules alive at its first step).
        optimizer: the optimizer to watch; ``None`` watches any optimizer that updates
            parameters of ``model``.
        out: the run file to create; an existing file is never overwritten (a ``.<pid>``
            suffix is added instead).
        every: record every N-th optimizer step, or a schedule callable ``step -> bool``.
        masks: ``"auto"`` (torch prune / parametrize masks), ``"zeros"`` (weights exactly zero
            at the first step are masked), ``"none"``, or a ``{param_name: mask}`` mapping.
        attrs: free-form run attributes stored in the file, e.g. ``{"sparse": True}``.
        all_ranks: under DDP, every rank records its own run into ``<out-stem>.rank<r>.h5``
            (default: rank 0 alone, since DDP leaves every rank the same gradient).

    Returns:
        A :class:`~gfprobe.adapters.torch_probe.Probe`; use it as a context manager or call
        ``close()``. Under DDP rank 0 records. Under sharded training (FSDP2, DTensor, FSDP1)
        every rank records its shard into ``<out-stem>.rank<r>.h5``; merge them with
        ``gfprobe merge`` (``gfprobe record`` merges by itself).
    """
    from gfprobe.adapters.torch_probe import watch as _watch

    return _watch(model, optimizer, out=out, every=every, masks=masks, attrs=attrs, all_ranks=all_ranks)
