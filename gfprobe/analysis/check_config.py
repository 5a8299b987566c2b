"""The rules of ``gfprobe check``, their defaults, and their configuration.

Configuration lives in ``[tool.gfprobe.check]`` of the ``pyproject.toml`` found from the working
directory upwards, or in a TOML file given with ``--config`` (its ``[tool.gfprobe.check]`` table,
or the whole file when it has none). One table per rule; every key is optional::

    [tool.gfprobe.check]
    vanishing = { threshold = 1e-9 }
    instability = { max_cv = 2.0 }
    mask_leak = { enabled = false }

A misspelt rule or key, a value of the wrong type, NaN or inf, a fraction above 1, or a
``tool.gfprobe`` / ``check`` that is not a table is an error that names it (exit 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfprobe.errors import ConfigError, did_you_mean, short
from gfprobe.tomlfile import read_toml

# Each rule's settings and defaults. Defaults are set so that healthy training passes: on the 240
# MNIST-1D runs of docs/science-check.md the largest values were a coefficient of variation of
# egf_2 of 0.73, a layer-norm ratio of 4.6, a step-to-step egf_2 rise of 20.5x, a fall of 0.33 orders.
DEFAULTS: dict[str, dict[str, Any]] = {
    "nonfinite": {"enabled": True},
    "amp_skips": {"enabled": True, "max_fraction": 0.05},
    "vanishing": {"enabled": True, "threshold": 1e-8, "max_fraction": 0.5, "collapse_orders": 3.0},
    "exploding": {"enabled": True, "threshold": 1e4, "jump_factor": 100.0},
    "dead": {"enabled": True},
    "imbalance": {"enabled": True, "max_ratio": 1e4},
    "mask_leak": {"enabled": True},
    "instability": {"enabled": True, "max_cv": 1.0},
    "overhead": {"enabled": True, "max_fraction": 0.25},
}
RULES = tuple(DEFAULTS)
DESCRIPTIONS = {
    "nonfinite": "no NaN or Inf in any gradient at any step AMP did not skip",
    "amp_skips": "GradScaler skipped at most max_fraction of the steps",
    "vanishing": "no weight layer's ‖g⊙m‖₂ below threshold for more than max_fraction of the steps, and "
                 "egf_2 at the end not collapse_orders orders of magnitude below its start",
    "exploding": "no weight layer's ‖g⊙m‖₂ above threshold, and no step-to-step rise of egf_2 beyond jump_factor",
    "dead": "no weight layer with an exactly zero gradient at every step",
    "imbalance": "median over steps of the largest over the smallest weight-layer norm at most max_ratio",
    "mask_leak": "the optimizer gets no non-zero gradient for masked weights (explicit and zeros masks)",
    "instability": "coefficient of variation of egf_2 over the second half of training at most max_cv",
    "overhead": "gfprobe's own time (its hooks and its writer's CPU) at most max_fraction of the step time",
}


Config = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Section:
    """A table of ``[tool.gfprobe]`` whose rules this module reads: ``check``'s, or ``diff``'s
    (``analysis/diff_config.py``). Both live in the same file, so they are found and validated alike."""

    name: str
    defaults: Config
    example: str  # one rule's table, for messages


CHECK = Section("check", DEFAULTS, "vanishing = { threshold = 1e-9 }")


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above ``start``."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None = None, cwd: Path | None = None,
                section: Section = CHECK) -> tuple[Config, Path | None]:
    """The rules' settings (defaults merged with the file's) and the file they came from."""
    source = path if path is not None else find_pyproject((cwd or Path.cwd()).resolve())
    if source is None:
        return validate({}, section=section), None
    document = read_toml(source, f"--config {source}" if path is not None else str(source))
    table = _check_table(document, str(source), section)
    if table is None:  # a pyproject (or a --config file with a [tool] table) without it: the defaults
        table = {} if path is None or "tool" in document else document
    return validate(table, str(source), section), source


def _check_table(document: Mapping[str, Any], source: str, section: Section = CHECK) -> Mapping[str, Any] | None:
    """``[tool.gfprobe.<section>]`` of a document, None when absent; an error when a level is not a table."""
    node: Any = document
    keys = ("tool", "gfprobe", section.name)
    for depth, key in enumerate(keys, start=1):
        node = node.get(key)
        if node is None:
            return None
        if not isinstance(node, Mapping):
            name = ".".join(keys[:depth])
            raise ConfigError(f"{source}: {name} must be a table, got {type(node).__name__} {short(node)}; "
                              f"write the settings as [tool.gfprobe.{section.name}] with one table per rule, e.g. "
                              f"{section.example}")
    table: Mapping[str, Any] = node
    return table


def validate(table: Mapping[str, Any], source: str = "configuration", section: Section = CHECK) -> Config:
    """Merge a check (or diff) table into the defaults, refusing unknown rules, keys and wrong types."""
    defaults = section.defaults
    config = {rule: dict(settings) for rule, settings in defaults.items()}
    for rule, settings in table.items():
        if rule not in defaults:
            raise ConfigError(f"{source}: unknown {section.name} rule {rule!r}{did_you_mean(rule, defaults)}; "
                              f"rules: {', '.join(defaults)}")
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{source}: rule {rule} must be a table, e.g. {rule} = {{ enabled = false }}")
        for key, value in settings.items():
            if key not in defaults[rule]:
                raise ConfigError(f"{source}: rule {rule} has no setting {key!r}{did_you_mean(key, defaults[rule])}; "
                                  f"its settings: {', '.join(defaults[rule])}")
            config[rule][key] = _typed(source, rule, key, value, defaults[rule][key])
    return config


def _typed(source: str, rule: str, key: str, value: Any, default: Any) -> Any:
    where = f"{source}: {rule}.{key} = {short(value)}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number")
    number = _as_float(value)
    if not math.isfinite(number):  # NaN compares false with everything: a rule that could never fail
        raise ConfigError(f"{where} must be a finite number; to turn the rule off write {rule} = {{ enabled = false }}")
    if number < 0:
        raise ConfigError(f"{where} must not be negative")
    if key == "max_fraction" and number > 1:
        raise ConfigError(f"{where} must be a fraction from 0 to 1, e.g. 0.05 for 5% of the steps")
    return number


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # TOML integers are unbounded in tomllib; past 1e308 they are no number we can use
        return math.inf
