"""Study configuration: the TOML file, the built-in presets, and the grid of runs they expand to.

A study file has an optional ``[study]`` table of settings shared by every run, and one or more
``[[grid]]`` tables. Every key of a grid takes one value or a list; a grid expands to the cross
product of its lists, and a study to the union of its grids (so "every regularisation with ReLU"
and "every activation without regularisation" are two grids, not a product of both)::

    [study]
    name = "mine"
    epochs = 30

    [[grid]]
    dataset = "mnist1d"
    arch = "mlp"
    hidden_layers = 2
    sparse_width = 256
    density = [0.1, 0.3, 0.5]
    optimizer = ["sgd", "adam"]
    lr = 0.01
    regularisation = ["NR", "BN"]
    activation = "relu"
    seed = [0, 1, 2]

Every key and value is checked before anything trains; an error names the key or value, the
allowed ones, and the closest match to a misspelling. This module imports no torch.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomllib

from gfprobe.errors import ConfigError
from gfprobe.study import names

# Settings: one value per run, shared unless a grid overrides them.
SETTINGS: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 128,
    "eval_every": 5,  # epochs between evaluations of test accuracy and loss (and at the end)
    "record_every": 1,  # gfprobe records every N-th optimizer step
    "weight_decay": 5e-4,  # the L2 strength, used when the regularisation includes L2
    "init": "dense",
}
# Axes: a value or a list per grid; the grid is their cross product.
AXES: dict[str, Any] = {
    "dataset": "mnist1d",
    "arch": "mlp",
    "hidden_layers": 2,
    "sparse_width": 256,
    "density": 0.5,
    "optimizer": "adam",
    "lr": 0.001,
    "regularisation": "NR",
    "activation": "relu",
    "seed": 0,
}
CHOICES: dict[str, Sequence[str]] = {
    "dataset": tuple(names.DATASETS), "arch": names.ARCHS, "optimizer": names.OPTIMIZERS,
    "regularisation": names.REGULARISATIONS, "activation": names.ACTIVATIONS, "init": names.INITS,
}
INTEGERS = ("hidden_layers", "sparse_width", "seed", "epochs", "batch_size", "eval_every", "record_every")
POSITIVE = ("hidden_layers", "sparse_width", "epochs", "batch_size", "eval_every", "record_every", "lr")
STUDY_KEYS = ("name", *SETTINGS)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: one network (sparse or dense) under one setting."""

    dataset: str
    arch: str
    hidden_layers: int
    sparse_width: int
    density: float  # the pair's density: the sparse network's, and the dense one's capacity
    sparse: bool
    optimizer: str
    lr: float
    regularisation: str
    activation: str
    seed: int
    epochs: int
    batch_size: int
    eval_every: int
    record_every: int
    weight_decay: float
    init: str
    study: str = "study"

    @property
    def run_id(self) -> str:
        """A file-name-safe id that differs between any two runs of a study."""
        arch = f"mlp{self.hidden_layers}" if self.arch == "mlp" else self.arch
        kind = "sparse" if self.sparse else "dense"
        return (f"{self.dataset}-{arch}-w{self.sparse_width}-d{self.density:g}-{kind}-{self.optimizer}"
                f"-lr{self.lr:g}-{self.regularisation}-{self.activation}-s{self.seed}")

    @property
    def regularisers(self) -> frozenset[str]:
        return names.regularisers(self.regularisation)


@dataclass(frozen=True)
class Study:
    """A named list of runs (sparse and dense members of every pair, every seed)."""

    name: str
    runs: tuple[RunSpec, ...]

    def __len__(self) -> int:
        return len(self.runs)


def load_study(path: Path) -> Study:
    """Read and validate a study file."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_study(document, source=str(path), default_name=path.stem)


def parse_study(document: Mapping[str, Any], source: str = "study", default_name: str = "study") -> Study:
    """Validate a parsed study document and expand its grids into runs."""
    _check_keys(document, ("study", "grid"), f"{source}: top-level table")
    shared = dict(document.get("study", {}))
    _check_keys(shared, STUDY_KEYS, f"{source}: [study] key")
    name = str(shared.pop("name", default_name))
    grids = document.get("grid")
    if not isinstance(grids, list) or not grids:
        raise ConfigError(f"{source}: no [[grid]] table; add at least one, e.g. [[grid]] with density = [0.1, 0.5]")
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for index, grid in enumerate(grids, start=1):
        where = f"{source}: [[grid]] #{index}"
        _check_keys(grid, (*AXES, *SETTINGS), f"{where} key")
        for spec in _expand(where, name, {**SETTINGS, **shared, **grid}):
            if spec.run_id not in seen:  # grids may overlap: a run is trained once
                seen.add(spec.run_id)
                runs.append(spec)
    return Study(name, tuple(runs))


def _expand(where: str, study: str, values: Mapping[str, Any]) -> Iterator[RunSpec]:
    axes = {key: _as_list(values[key]) if key in values else [AXES[key]] for key in AXES}
    settings = {key: values[key] for key in SETTINGS}
    for key, options in {**axes, **{k: [v] for k, v in settings.items()}}.items():
        for value in options:
            _check_value(where, key, value)
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo, strict=True))
        base = RunSpec(sparse=False, study=study, **point, **settings)
        base = replace(base, lr=float(base.lr), density=float(base.density),
                       weight_decay=float(base.weight_decay))
        yield base
        if base.density < 1.0:  # at density 1 the "sparse" network is the dense one
            yield replace(base, sparse=True)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _check_keys(table: Any, allowed: Sequence[str], what: str) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{what.rsplit(' ', 1)[0]} must be a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{what} {key!r} is not known{_did_you_mean(key, allowed)}; "
                              f"allowed: {', '.join(allowed)}")


def _check_value(where: str, key: str, value: Any) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: {key} = {value!r} is not known{_did_you_mean(str(value), CHOICES[key])}; "
                          f"allowed: {', '.join(CHOICES[key])}")
    if key in INTEGERS and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: {key} = {value!r} must be a whole number")
    if key in ("lr", "density", "weight_decay") and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{where}: {key} = {value!r} must be a number")
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"{where}: {key} = {value!r} must be greater than 0")
    if key == "density" and not 0 < value <= 1:
        raise ConfigError(f"{where}: density = {value!r} is outside (0, 1]; a density is the fraction of "
                          "weights kept, e.g. 0.1 for a network with 10% of its weights active")
    if key == "weight_decay" and value < 0:
        raise ConfigError(f"{where}: weight_decay = {value!r} must not be negative")


def _did_you_mean(word: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
