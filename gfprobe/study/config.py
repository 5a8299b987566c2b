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

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gfprobe.errors import ConfigError, did_you_mean, short
from gfprobe.study import names, sizes
from gfprobe.tomlfile import read_toml

# Settings: one value per run, shared unless a grid overrides them.
SETTINGS: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 128,
    "eval_every": 5,  # epochs between evaluations of test accuracy and loss (and at the end)
    "record_every": 1,  # gfprobe records every N-th optimizer step
    "weight_decay": 5e-4,  # the L2 strength, used when the regularisation includes L2
    "init": "dense",
    # The data (gfprobe.study.sizes): None is the data set's own, and TOML cannot write None.
    "samples": None,  # examples generated (mnist1d) or used (digits), train and test together
    "test_fraction": None,  # the test split's share of them
    # The probe-batch protocol (Evci et al. 2020): the gradient of probe_batch training examples,
    # held out of training, every probe_every optimizer steps, recorded as a stream of its own.
    "probe_every": 0,  # 0: no probe stream
    "probe_batch": 0,  # 0: nothing held out
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
INTEGERS = ("hidden_layers", "sparse_width", "seed", "epochs", "batch_size", "eval_every", "record_every", "samples",
            "probe_every", "probe_batch")
POSITIVE = ("hidden_layers", "sparse_width", "epochs", "batch_size", "eval_every", "record_every", "lr", "samples")
NUMBERS = ("lr", "density", "weight_decay", "test_fraction")
NON_NEGATIVE = ("weight_decay", "probe_every", "probe_batch")
# Bounds that keep planning finite: a plan has one row per layer, and widths enter float arithmetic.
MAX_HIDDEN_LAYERS = 1000
MAX_SPARSE_WIDTH = 1_000_000
# Below this even the widest sparse network leaves its dense partner without a unit (d × W_s < ½).
MIN_DENSITY = 0.5 / MAX_SPARSE_WIDTH
INT64 = 2**63  # whole numbers are stored as 64-bit run attributes and seed torch's generator
MAX_RUNS = 1_000_000  # per grid, before sparse/dense pairing: a typo in a list must not exhaust memory
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
    # None for the data sets of fixed files; set for the others, to their own values by default.
    samples: int | None = None
    test_fraction: float | None = None
    probe_every: int = 0
    probe_batch: int = 0
    study: str = "study"

    @property
    def run_id(self) -> str:
        """A file-name-safe id that differs between any two runs of a study.

        The data and probe settings appear only when they are not the defaults, so the runs of
        studies that never set them keep their ids (and their files count as done), while runs on
        other data, or recorded with a probe stream, never take an earlier run's file.
        """
        arch = f"mlp{self.hidden_layers}" if self.arch == "mlp" else self.arch
        kind = "sparse" if self.sparse else "dense"
        size = sizes.SIZES.get(self.dataset)
        data = ""
        if size is not None and self.samples != size.default:
            data += f"-n{self.samples}"
        if size is not None and self.test_fraction != size.test_fraction:
            data += f"-t{self.test_fraction:g}"
        probe = (f"-probe{self.probe_batch}" if self.probe_batch else "") + (
            f"-every{self.probe_every}" if self.probe_every else "")
        return (f"{self.dataset}{data}-{arch}-w{self.sparse_width}-d{self.density:g}-{kind}-{self.optimizer}"
                f"-lr{self.lr:g}-{self.regularisation}-{self.activation}-s{self.seed}{probe}")

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
    document = read_toml(path, str(path), "study file")
    return parse_study(document, source=str(path), default_name=path.stem)


def parse_study(document: Mapping[str, Any], source: str = "study", default_name: str = "study") -> Study:
    """Validate a parsed study document and expand its grids into runs."""
    _check_keys(document, ("study", "grid"), f"{source}: top-level table")
    shared = document.get("study", {})
    _check_keys(shared, STUDY_KEYS, f"{source}: [study] key")
    shared = dict(shared)
    name = shared.pop("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{source}: [study] name = {short(name)} must be a non-empty string, e.g. name = \"mine\"")
    grids = document.get("grid")
    if grids is None or grids == []:
        raise ConfigError(f"{source}: no [[grid]] table; add at least one, e.g. [[grid]] with density = [0.1, 0.5]")
    if not isinstance(grids, list):
        raise ConfigError(f"{source}: grid = {short(grids)} must be tables written [[grid]], e.g. "
                          "[[grid]] with density = [0.1, 0.5]")
    runs: dict[str, RunSpec] = {}
    for index, grid in enumerate(grids, start=1):
        where = f"{source}: [[grid]] #{index}"
        _check_keys(grid, (*AXES, *SETTINGS), f"{where} key")
        for spec in _expand(where, name, {**SETTINGS, **shared, **grid}):
            known = runs.setdefault(spec.run_id, spec)  # grids may overlap: a run is trained once
            if known != spec:  # ids print numbers to 6 digits: closer values would share one file
                raise ConfigError(f"{where}: two different runs get the id {spec.run_id}; make values such as "
                                  "density and lr differ within 6 significant digits, or give other settings")
    return Study(name, tuple(runs.values()))


def _expand(where: str, study: str, values: Mapping[str, Any]) -> Iterator[RunSpec]:
    axes = _axes(where, values)
    settings = {key: values[key] for key in SETTINGS}
    for key, options in {**axes, **{k: [v] for k, v in settings.items()}}.items():
        for value in options:
            if value is not None:  # only a default is None: TOML has no null
                _check_value(where, key, value)
    if settings["probe_every"] and not settings["probe_batch"]:
        raise ConfigError(f"{where}: probe_every = {settings['probe_every']} measures the gradient of a held-out "
                          "probe batch: give its size too, e.g. probe_batch = 500")
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo, strict=True))
        data = _data_settings(where, point, settings)
        base = RunSpec(sparse=False, study=study, **point, **{**settings, **data})
        base = replace(base, lr=float(base.lr), density=float(base.density),
                       weight_decay=float(base.weight_decay))
        yield base
        if base.density < 1.0:  # at density 1 the "sparse" network is the dense one
            yield replace(base, sparse=True)


def _axes(where: str, values: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Each axis's values, refusing an empty list (it would drop the grid silently) and a grid too large."""
    axes = {key: _as_list(values[key]) if key in values else [AXES[key]] for key in AXES}
    for key, options in axes.items():
        if not options:
            raise ConfigError(f"{where}: {key} = [] has no value; give one value or a list of them")
    size = math.prod(len(options) for options in axes.values())
    if size > MAX_RUNS:
        raise ConfigError(f"{where}: its lists make {size:,} combinations, more than {MAX_RUNS:,}; "
                          "shorten them or split the study")
    return axes


def _data_settings(where: str, point: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``samples`` and ``test_fraction`` for one run's data set, its own where the study leaves
    them out, checked against what the data set has; None for data sets of fixed files."""
    dataset = point["dataset"]
    size = sizes.SIZES.get(dataset)
    if size is None:
        for key in ("samples", "test_fraction"):
            if settings[key] is not None:
                raise ConfigError(f"{where}: {key} = {settings[key]!r} does not apply to {dataset}, whose train "
                                  f"and test files are fixed; set it in a grid of {' or '.join(sizes.SIZES)} runs")
        return {"samples": None, "test_fraction": None}
    samples = size.default if settings["samples"] is None else settings["samples"]
    fraction = size.test_fraction if settings["test_fraction"] is None else float(settings["test_fraction"])
    if samples > size.most:
        raise ConfigError(f"{where}: samples = {samples:,} is more than {dataset} offers ({size.most:,}); "
                          f"use at most {size.most:,}")
    if samples % size.multiple:
        raise ConfigError(f"{where}: samples = {samples:,} for {dataset} must be a multiple of {size.multiple}: its "
                          f"generator makes samples / {size.multiple} examples of each class")
    n_train, n_test = sizes.split_sizes(samples, fraction)
    if min(n_train, n_test) < size.least_per_split:
        raise ConfigError(f"{where}: samples = {samples:,} with test_fraction = {fraction:g} leaves {n_train} training "
                          f"and {n_test} test examples; {dataset} needs at least {size.least_per_split} in each")
    _check_training_size(where, point, settings, n_train)
    return {"samples": samples, "test_fraction": fraction}


def _check_training_size(where: str, point: Mapping[str, Any], settings: Mapping[str, Any], n_train: int) -> None:
    """What is left to train on once the probe batch is held out: at least one example, and no
    last batch of a single example in an MLP with BatchNorm (which cannot normalise one value)."""
    probe, batch = settings["probe_batch"], settings["batch_size"]
    if probe >= n_train:
        raise ConfigError(f"{where}: probe_batch = {probe:,} holds out all {n_train:,} training examples of "
                          f"{point['dataset']}; use fewer, e.g. probe_batch = {max(2, n_train // 10)}")
    left = n_train - probe
    if point["arch"] == "mlp" and "BN" in names.regularisers(point["regularisation"]) and left % batch == 1:
        raise ConfigError(f"{where}: {left:,} training examples in batches of {batch} leave a last batch of one "
                          "example, which BatchNorm cannot normalise; change batch_size, samples or probe_batch")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _check_keys(table: Any, allowed: Sequence[str], what: str) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{what.rsplit(' ', 1)[0]} must be a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{what} {key!r} is not known{did_you_mean(key, allowed)}; "
                              f"allowed: {', '.join(allowed)}")


def _check_value(where: str, key: str, value: Any) -> None:
    if key in CHOICES and (not isinstance(value, str) or value not in CHOICES[key]):
        raise ConfigError(f"{where}: {key} = {short(value)} is not known{did_you_mean(str(value), CHOICES[key])}; "
                          f"allowed: {', '.join(CHOICES[key])}")
    if key in INTEGERS:
        _check_integer(where, key, value)
    if key in NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{where}: {key} = {short(value)} must be a number")
    if key in NUMBERS and not _finite(value):
        raise ConfigError(f"{where}: {key} = {short(value)} must be a finite number")
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"{where}: {key} = {value!r} must be greater than 0")
    if key == "density":
        check_density(value, f"{where}: density")
    if key in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{where}: {key} = {value!r} must not be negative")
    if key == "test_fraction" and not 0 < value < 1:
        raise ConfigError(f"{where}: test_fraction = {value!r} is outside (0, 1); it is the test split's share of "
                          "the examples, e.g. 0.2")
    if key == "probe_batch" and value == 1:
        raise ConfigError(f"{where}: probe_batch = 1 is too small: the probe pass runs in training mode, where "
                          "BatchNorm needs at least 2 examples; use 0 (no probe) or at least 2")


def _check_integer(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key} = {short(value)} must be a whole number")
    highest = {"hidden_layers": MAX_HIDDEN_LAYERS, "sparse_width": MAX_SPARSE_WIDTH}.get(key, INT64 - 1)
    if value > highest:
        raise ConfigError(f"{where}: {key} = {short(value)} is too large; the most gfprobe takes is {highest:,}")
    if value < -INT64:
        raise ConfigError(f"{where}: {key} = {short(value)} is too small; the least gfprobe takes is {-INT64:,}")


def check_density(value: float, what: str = "density") -> None:
    """Refuse a density that is not a number in [MIN_DENSITY, 1] (NaN and inf included)."""
    if not 0 < value <= 1:  # false for NaN too
        raise ConfigError(f"{what} = {value!r} is outside (0, 1]; a density is the fraction of weights kept, "
                          "e.g. 0.1 for a network with 10% of its weights active")
    if value < MIN_DENSITY:
        raise ConfigError(f"{what} = {value!r} is too small: even a sparse width of {MAX_SPARSE_WIDTH:,} would leave "
                          f"the dense network no unit; use a density of at least {MIN_DENSITY:g}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past float's range
        return False
