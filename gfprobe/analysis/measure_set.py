"""Every measure a report computes: gfprobe's own (``gfprobe.measures``) and those plugins add
through ``gfprobe_measures``. A plugin's measure that fails, or answers with anything but one
number per step, is named in one warning line and reported as missing (NaN), never as a value;
it reads the statistics through read-only views, so it cannot change what the others see."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping

import numpy as np

from gfprobe.errors import FOREIGN_ERRORS
from gfprobe.measures import MEASURES, LayerStats, compute_all
from gfprobe.plugin.manager import call_each, warn_once
from gfprobe.plugin.spec import Measure

log = logging.getLogger("gfprobe")


@functools.cache
def plugin_measures() -> Mapping[str, tuple[str, Measure]]:
    """The measures plugins contribute: name -> (plugin, function); a name already taken is refused."""
    found: dict[str, tuple[str, Measure]] = {}
    for plugin, answer in call_each("gfprobe_measures", dict):
        for name, function in answer.items():
            if not isinstance(name, str) or not name.isidentifier() or not callable(function):
                log.warning("gfprobe: plugin %r offered measure %r, not a named function; left out", plugin, name)
            elif name in MEASURES or name in found:
                log.warning("gfprobe: plugin %r offered measure %r, a name already taken; left out", plugin, name)
            else:
                found[name] = (plugin, function)
    return found


def measure_names() -> tuple[str, ...]:
    """gfprobe's measures, then the plugins' in the order they were found."""
    return (*MEASURES, *plugin_measures())


def compute_series(stats: LayerStats) -> dict[str, np.ndarray]:
    """Every measure per step: :func:`gfprobe.measures.compute_all` and each plugin measure."""
    series = compute_all(stats)
    extra = plugin_measures()
    if extra:
        frozen = _read_only(stats)
        for name, (plugin, function) in extra.items():
            series[name] = _plugin_series(plugin, name, function, frozen)
    return series


def _read_only(stats: LayerStats) -> LayerStats:
    def view(values: np.ndarray) -> np.ndarray:
        out = values.view()
        out.flags.writeable = False
        return out

    return LayerStats(*(view(getattr(stats, f.name)) for f in dataclasses.fields(stats)))


def _plugin_series(plugin: str, name: str, function: Measure, stats: LayerStats) -> np.ndarray:
    steps = stats.sumsq.shape[0]
    try:
        values = np.asarray(function(stats), dtype=np.float64)
        if values.shape != (steps,):
            raise ValueError(f"gave shape {values.shape}, not one value per step ({steps},)")
    except FOREIGN_ERRORS as exc:
        warn_once(plugin, f"measure {name!r}", f"{type(exc).__name__}: {' '.join(str(exc).split())}; "
                  "reported as missing")
        return np.full(steps, np.nan)
    return values
