"""Run code right after a module is imported, without importing it (or anything) first."""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from gfprobe.errors import FOREIGN_ERRORS

OnImport = Callable[[ModuleType], None]
OnError = Callable[[BaseException], None]


def after_import(module_name: str, callback: OnImport, on_error: OnError) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported: now if it already is, else right
    after its import finishes. An exception from ``callback`` goes to ``on_error``, never to the
    code that imported the module."""
    module = sys.modules.get(module_name)
    if module is None:
        sys.meta_path.insert(0, _AfterImport(module_name, callback, on_error))
        return
    try:
        callback(module)
    except FOREIGN_ERRORS as exc:
        on_error(exc)


class _AfterImport(importlib.abc.MetaPathFinder):
    """A finder that finds nothing itself: it wraps the loader of whichever finder finds the module.

    It stays on ``sys.meta_path`` until the module has been executed: a look-up that imports
    nothing (``importlib.util.find_spec("torch")``, as libraries do to see whether torch is
    installed) must not use it up.
    """

    def __init__(self, module_name: str, callback: OnImport, on_error: OnError) -> None:
        self._name = module_name
        self._callback = callback
        self._on_error = on_error
        self._searching = threading.local()  # asking the other finders: do not answer ourselves
        self._done = False

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != self._name or self._done or getattr(self._searching, "active", False):
            return None
        self._searching.active = True
        try:
            spec = _find_elsewhere(self, fullname, path, target)
        finally:
            self._searching.active = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        self._wrap(spec.loader)
        return spec

    def _wrap(self, loader: Any) -> None:
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            if self._done:
                return
            self._done = True
            with contextlib.suppress(ValueError):  # already gone: another thread removed it
                sys.meta_path.remove(self)
            try:
                self._callback(module)
            except FOREIGN_ERRORS as exc:
                self._on_error(exc)

        loader.exec_module = exec_module


def _find_elsewhere(me: _AfterImport, fullname: str, path: Sequence[str] | None,
                    target: ModuleType | None) -> Any:
    """The spec whichever other finder gives (site-packages, an editable install, ...)."""
    for finder in list(sys.meta_path):
        find = getattr(finder, "find_spec", None) if finder is not me else None
        spec = find(fullname, path, target) if find else None
        if spec is not None:
            return spec
    return None
