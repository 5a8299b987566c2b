"""Noticing masks that appear after an optimizer was first seen.

A parameter's mask is looked up once, at its optimizer's first step. Gradual pruning prunes
later (``torch.nn.utils.prune`` at some epoch, Lightning's ``ModelPruning``, ``torch.ao.pruning``
through parametrize), and without a second look the run would say the weight has no mask and all
its entries are active. Looking again at every step would cost every step a walk over the model;
instead the two calls that put a mask on a module (``BasePruningMethod.apply`` and
``parametrize.register_parametrization``) are wrapped and name the module to the probes, which
look again at that module alone, at their next recorded step. Nothing runs while no one prunes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch.nn.utils.parametrize as parametrize
import torch.nn.utils.prune as prune
from torch import nn

log = logging.getLogger("gfprobe")

Listener = Callable[[nn.Module], None]
_listeners: list[Listener] = []
_originals: dict[str, Any] = {}
_wrappers: dict[str, Any] = {}


def listen(listener: Listener) -> None:
    """Call ``listener(module)`` whenever a mask is put on ``module`` (the wrappers go in first)."""
    if not _listeners:
        _wrap()
    _listeners.append(listener)


def unlisten(listener: Listener) -> None:
    with contextlib.suppress(ValueError):
        _listeners.remove(listener)
    if not _listeners:
        _unwrap()


def _notify(module: Any) -> None:
    for listener in list(_listeners):
        try:
            listener(module)
        except Exception as exc:  # the user's pruning call must succeed whatever happens here
            log.warning("gfprobe: a new mask was not noticed (%s: %s)", type(exc).__name__, exc)


def _wrap() -> None:
    apply_original = prune.BasePruningMethod.__dict__["apply"].__func__
    register_original = parametrize.register_parametrization

    def apply(cls: Any, module: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        method = apply_original(cls, module, name, *args, **kwargs)
        _notify(module)
        return method

    def register_parametrization(module: Any, *args: Any, **kwargs: Any) -> Any:
        result = register_original(module, *args, **kwargs)
        _notify(module)
        return result

    _originals.update(apply=prune.BasePruningMethod.__dict__["apply"], register=register_original)
    _wrappers.update(apply=classmethod(apply), register=register_parametrization)
    prune.BasePruningMethod.apply = _wrappers["apply"]  # type: ignore[method-assign]
    parametrize.register_parametrization = _wrappers["register"]


def _unwrap() -> None:
    """Put the originals back, unless someone wrapped them on top of us since (then ours stay in
    the chain and pass through: no one listens)."""
    if not _originals:
        return
    if prune.BasePruningMethod.__dict__.get("apply") is _wrappers["apply"]:
        prune.BasePruningMethod.apply = _originals["apply"]  # type: ignore[method-assign]
    if parametrize.register_parametrization is _wrappers["register"]:
        parametrize.register_parametrization = _originals["register"]
    _originals.clear()
    _wrappers.clear()
