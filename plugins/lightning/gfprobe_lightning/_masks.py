"""The masks Lightning's ``ModelPruning`` will apply, reported to gfprobe before it applies them.

gfprobe asks each module for its masks once, when it first sees an optimizer step
(``gfprobe_module_masks``). ``ModelPruning`` prunes through ``torch.nn.utils.prune`` at the end
of an epoch, after that step, so gfprobe's built-in torch-prune masks find nothing yet and the
weights would be recorded as dense for the whole run. ``GfprobeCallback`` therefore announces, at
fit start, every ``(module, tensor)`` that a ``ModelPruning`` callback of the trainer will prune;
this plugin then reports each one with a mask read at every recorded step: the module's
torch-prune buffer ``<name>_mask`` once pruning has made it, all ones before.

Imports neither Lightning nor torch at its top: the plugin module imports it in every process.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from gfprobe.plugin import ModuleMask

SOURCE = "prune"  # the mask convention: torch prune, as gfprobe's built-in reports it

# Keyed by the module object because gfprobe's hook is handed nothing else; weak, so that a model
# that is dropped is forgotten with it. The one piece of module-level state in this plugin.
_announced: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def announce(module: Any, name: str) -> None:
    """``module.<name>`` will be pruned with ``torch.nn.utils.prune`` during training."""
    _announced.setdefault(module, set()).add(name)


def module_masks(module: Any) -> list[ModuleMask]:
    """The announced masks of ``module`` (the answer to ``gfprobe_module_masks``)."""
    try:
        names = sorted(_announced.get(module, ())) if _announced else []
    except TypeError:  # not weakly referenceable: not a module anything announced
        return []
    found = []
    for name in names:
        param = _optimized_tensor(module, name)
        if param is not None:
            found.append(ModuleMask(name, param, _current_mask(module, name, param), SOURCE))
    return found


def _optimized_tensor(module: Any, name: str) -> Any:
    """The parameter the optimizer updates: ``<name>_orig`` once pruned, ``<name>`` before
    (torch prune re-registers the same Parameter object under the new name)."""
    params = getattr(module, "_parameters", {})
    for key in (f"{name}_orig", name):
        if params.get(key) is not None:
            return params[key]
    return None


def _current_mask(module: Any, name: str, param: Any) -> Callable[[], Any]:
    ones: list[Any] = []  # the mask before the first pruning, made once

    def mask() -> Any:
        current = getattr(module, f"{name}_mask", None)  # replaced by each pruning: read every time
        if current is not None:
            return current
        if not ones:
            import torch

            ones.append(torch.ones_like(param, dtype=torch.bool))
        return ones[0]

    return mask
