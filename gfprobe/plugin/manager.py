"""The plugins installed: found through the ``gfprobe`` entry-point group, loaded once, lazily.

Nothing here runs until a hook is first needed (importing gfprobe stays cheap). A plugin that
cannot be loaded (an import error, a hook with a wrong signature, an unknown ``gfprobe_`` hook)
is named in one warning line and skipped; a hook that raises is named in one warning line and
its answer left out. gfprobe itself keeps working either way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pluggy

from gfprobe.errors import FOREIGN_ERRORS
from gfprobe.plugin import spec
from gfprobe.plugin.found import found

log = logging.getLogger("gfprobe")
T = TypeVar("T")

# gfprobe's own implementations, registered like any plugin (their modules import no framework).
_BUILTINS = {"torch-masks": "gfprobe.adapters.torch_masks"}


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``gfprobe plugins`` lists it."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...] = ()
    builtin: bool = False
    error: str | None = None  # why it was skipped; None when it is loaded
    disabled: bool = False


@dataclass
class _Registry:
    manager: pluggy.PluginManager
    infos: list[PluginInfo] = field(default_factory=list)


_loading = threading.Lock()  # two threads asking first must not load every plugin twice
_warned: set[tuple[str, str]] = set()  # (plugin, hook) already named in a warning


def plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager, every installed plugin registered (loaded on first call)."""
    return _registry().manager


def installed() -> list[PluginInfo]:
    """Every plugin found, loaded or skipped, built-in ones first."""
    # gfprobe's version is looked up only here: it costs importlib.metadata, which a recorded
    # process need not import.
    return [dataclasses.replace(info, version=_own_version()) if info.builtin else info
            for info in _registry().infos]


def _registry() -> _Registry:
    with _loading:
        return _load()


def forget() -> None:
    """Find the plugins afresh at the next hook (tests install and remove plugins)."""
    with _loading:
        _load.cache_clear()
        _warned.clear()


@functools.cache
def _load() -> _Registry:
    manager = pluggy.PluginManager(spec.PROJECT)
    manager.add_hookspecs(spec.GfprobeSpec)
    registry = _Registry(manager)
    for name, module in _BUILTINS.items():
        registry.infos.append(_register(manager, name, functools.partial(_import, module), "", builtin=True))
    for entry in found():
        if entry.disabled():
            manager.set_blocked(entry.name)
            registry.infos.append(PluginInfo(entry.name, entry.dist, entry.version, disabled=True))
            continue
        registry.infos.append(_register(manager, entry.name, entry.load, entry.version, dist=entry.dist))
    return registry


def _register(manager: pluggy.PluginManager, name: str, load: Callable[[], object], version: str, *,
              dist: str = "gfprobe", builtin: bool = False) -> PluginInfo:
    try:
        plugin = load()
        manager.register(plugin, name=name)
    except FOREIGN_ERRORS as exc:
        return _skipped(name, dist, version, builtin, exc)
    try:
        manager.check_pending()  # a misspelt gfprobe_ hook would otherwise never be called
        _refuse_wrappers(manager, plugin)
    except pluggy.PluginValidationError as exc:
        manager.unregister(name=name)
        return _skipped(name, dist, version, builtin, exc)
    hooks = tuple(sorted(caller.name for caller in manager.get_hookcallers(plugin) or ()))
    return PluginInfo(name, dist, version, hooks, builtin)


def _refuse_wrappers(manager: pluggy.PluginManager, plugin: object) -> None:
    """gfprobe calls each implementation on its own (``call_each``), so a wrapper would never wrap."""
    for caller in manager.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                raise pluggy.PluginValidationError(plugin, f"{caller.name}: gfprobe's hooks take no wrappers")


def _skipped(name: str, dist: str, version: str, builtin: bool, exc: BaseException) -> PluginInfo:
    error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    log.warning("gfprobe: plugin %r (%s %s) skipped: %s", name, dist, version, error)
    return PluginInfo(name, dist, version, builtin=builtin, error=error)


def _import(module: str) -> object:
    import importlib

    return importlib.import_module(module)


def _own_version() -> str:
    from gfprobe import __version__

    return str(__version__)


def call_each(hook_name: str, convert: Callable[[Any], T], **kwargs: Any) -> Iterator[tuple[str, T]]:
    """Each plugin's answer to ``hook_name``, passed through ``convert``, as ``(plugin name,
    answer)``: plugins before the built-ins (the last registered first, as pluggy calls them).
    A plugin that raises, in the hook or in ``convert`` (a generator fails only when it is
    read), is named in one warning line (the first time that plugin's hook fails in this
    process) and left out; ``None`` answers are left out too."""
    manager = plugin_manager()
    caller = getattr(manager.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            answer = None if result is None else convert(result)
        except FOREIGN_ERRORS as exc:
            warn_once(impl.plugin_name, hook_name, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            continue
        if answer is not None:
            yield impl.plugin_name, answer


def warn_once(plugin: str, what: str, why: str) -> None:
    """One warning line per plugin and hook (or measure) in a process: a hook called once per
    module, or a measure once per run file, would otherwise repeat it hundreds of times."""
    if (plugin, what) in _warned:
        return
    _warned.add((plugin, what))
    log.warning("gfprobe: plugin %r failed in %s: %s", plugin, what, why)
