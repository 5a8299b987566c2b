"""The hooks a gfprobe plugin implements (pluggy, project name ``gfprobe``).

A plugin is any object with ``@gfprobe.hookimpl`` functions, announced by an entry point in the
``gfprobe`` group of its distribution::

    [project.entry-points.gfprobe]
    lightning = "gfprobe_lightning.plugin"

Every hook is optional. Hooks run inside the training a plugin observes, so gfprobe calls each
one guarded: a plugin that raises is named in one warning line and the training goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    import numpy as np

    from gfprobe.bootstrap.recording import Recording
    from gfprobe.measures import LayerStats

PROJECT = "gfprobe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# A measure a plugin contributes: per-step weight-layer statistics in, one value per step out.
Measure = Callable[["LayerStats"], "np.ndarray"]


@dataclass(frozen=True)
class ModuleMask:
    """A mask a module applies to one of its tensors, as ``gfprobe_module_masks`` reports it.

    ``param`` is the tensor the optimizer updates (``weight_orig`` under torch prune), ``name``
    the name the user knows it by (``weight``), ``mask`` returns the current 0/1 mask (called at
    every recorded step: pruning again may replace it), and ``grad_is_masked`` says whether the
    gradient the optimizer gets is already ``g ⊙ m`` (true when the module computes
    ``weight = original * mask``, by the chain rule).
    """

    name: str
    param: Any
    mask: Callable[[], Any]
    source: str
    grad_is_masked: bool = True


class GfprobeSpec:
    """Hook specifications; the docstrings are the contract."""

    @hookspec
    def gfprobe_record_started(self, recording: Recording) -> None:
        """Recording was armed in a process that ``gfprobe record`` runs, before its script runs.

        Attach to a framework here, lazily: ``recording.after_import("lightning.pytorch", f)``
        calls ``f(module)`` once that module is imported (at once if it already is), so a process
        that never imports the framework pays nothing. Log metrics with ``gfprobe.log`` and run
        attributes with ``recording.set_attrs``; an adapter that writes its own run file takes
        ``recording.out``, ``.every`` and ``.attrs`` as its defaults, and names a file written
        elsewhere with ``recording.wrote(path)`` (see ``gfprobe.bootstrap.recording.Recording``).
        """

    @hookspec
    def gfprobe_module_masks(self, module: Any) -> Iterable[ModuleMask] | None:
        """The masks ``module`` (a ``torch.nn.Module``) applies to its own tensors, not its
        children's; ``None`` or empty when it applies none. Called once per module when an
        optimizer is first seen. gfprobe's built-in implementation reports torch prune and
        parametrize masks; a plugin's answer for a tensor wins over it."""

    @hookspec
    def gfprobe_measures(self) -> Mapping[str, Measure] | None:
        """Extra gradient-flow measures, by name: ``gfprobe report`` (and ``gfprobe.api``'s
        ``Run.measures``) summarises, tables and correlates them like the built-in ``egf_2``;
        ``plot`` and ``check`` keep to the built-in ones. Each function gets read-only
        statistics and returns one value per step. Names must not clash with built-in measures."""

    @hookspec
    def gfprobe_commands(self) -> Iterable[click.Command] | None:
        """Extra ``gfprobe`` subcommands (click commands); a built-in command's name is refused."""
