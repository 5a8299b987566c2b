"""Which plugins are installed: the entry points of the ``gfprobe`` group.

Scanning the installed distributions for them costs a Python process about 30 ms. ``gfprobe
record`` scans once and hands the result to every process of its command (``use``), so that a
process started many times over (a DataLoader worker, a compile worker) does not scan again, and
one with no plugin to start imports nothing for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GROUP = "gfprobe"  # the entry-point group plugins announce themselves in
DISABLE_ENV = "GFPROBE_DISABLE_PLUGINS"  # comma-separated plugin names, or "all"


@dataclass(frozen=True)
class Found:
    """One installed plugin's entry point."""

    name: str
    value: str  # "module" or "module:attribute"
    dist: str
    version: str

    def load(self) -> object:
        """What the entry point names, as ``EntryPoint.load`` gives it (without importing
        importlib.metadata, which a process handed its plugins need not)."""
        import functools
        import importlib

        module, _, attribute = self.value.partition(":")
        loaded: object = importlib.import_module(module.strip())
        return functools.reduce(getattr, filter(None, attribute.strip().split(".")), loaded)

    def disabled(self) -> bool:
        names = {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}
        return self.name in names or "all" in names


_given: list[list[Found]] = []  # set by use(): the entry points this process takes as installed


def found() -> list[Found]:
    """The installed plugins, sorted by name (so that hooks run in the same order everywhere)."""
    if _given:
        return list(_given[0])
    from importlib.metadata import entry_points

    return sorted((Found(e.name, e.value, e.dist.name if e.dist else "?", e.dist.version if e.dist else "?")
                   for e in entry_points(group=GROUP)), key=lambda f: f.name)


def use(entries: list[Found]) -> None:
    """Take ``entries`` as the installed plugins instead of scanning for them."""
    _given[:] = [list(entries)]
