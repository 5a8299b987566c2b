"""Exact capacity matching of SC-SDC pairs (SCIENCE.md §4): counts, widths, densities, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from gfprobe.errors import ConfigError
from gfprobe.study.capacity import PairPlan, dense_width, plan_pair, plan_pairs, round_half_up
from gfprobe.study.names import DATASETS, DatasetInfo

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CASES = [
    pytest.param("mlp", ds, 100, h, id=f"mlp{h}-{ds}")
    for h in (1, 2, 4) for ds in ("mnist1d", "fashion-mnist", "cifar100")
] + [pytest.param("cnn", ds, w, 2, id=f"cnn{w}-{ds}") for ds in ("mnist1d", "digits", "cifar10") for w in (32, 20)]


@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: f"d{d}")
@pytest.mark.parametrize(("arch", "dataset", "width", "hidden"), CASES)
def test_every_layer_has_exactly_the_dense_count_of_active_weights(
        arch: str, dataset: str, width: int, hidden: int, density: float) -> None:
    plan = plan_pair(arch, DATASETS[dataset], width, density, hidden_layers=hidden)
    for layer in plan.layers:
        assert layer.sparse_active == math.prod(layer.dense_shape)
        assert layer.dense_active == math.prod(layer.dense_shape)
        assert layer.sparse_active <= layer.sparse_numel == math.prod(layer.sparse_shape)
        assert layer.sparse_density == layer.sparse_active / layer.sparse_numel
    assert plan.sparse_active_total == plan.dense_active_total == sum(layer.dense_active for layer in plan.layers)
    assert plan.sparse_numel_total == sum(math.prod(layer.sparse_shape) for layer in plan.layers)
    if density == 1.0:
        assert all(layer.sparse_shape == layer.dense_shape for layer in plan.layers)


@pytest.mark.parametrize("hidden", [1, 2, 4])
def test_mlp_layer_names_and_shapes(hidden: int) -> None:
    plan = plan_pair("mlp", DATASETS["fashion-mnist"], 50, 0.3, hidden_layers=hidden)
    assert [layer.name for layer in plan.layers] == [f"fc{i}" for i in range(1, hidden + 1)] + ["out"]
    assert plan.layers[0].sparse_shape == (50, 784)
    assert plan.layers[0].dense_shape == (15, 784)
    assert all(layer.sparse_shape == (50, 50) and layer.dense_shape == (15, 15) for layer in plan.layers[1:-1])
    assert plan.layers[-1].sparse_shape == (10, 50)
    assert plan.layers[-1].dense_shape == (10, 15)
    assert (plan.arch, plan.density, plan.sparse_width, plan.dense_width) == ("mlp", 0.3, 50, 15)


def test_paper_dense_widths_from_3076() -> None:
    assert [dense_width(3076, d) for d in (0.1, 0.3, 0.5, 0.7, 0.9)] == [308, 923, 1538, 2153, 2768]
    plans = plan_pairs("mlp", DATASETS["cifar10"], 3076, [0.1, 0.3, 0.5, 0.7, 0.9])
    assert [p.dense_width for p in plans] == [308, 923, 1538, 2153, 2768]


@pytest.mark.parametrize(("x", "expected"), [(0.5, 1), (1.5, 2), (2.5, 3), (2.4999, 2), (922.8, 923), (0.49, 0)],
                         ids=str)
def test_rounding_is_half_up_not_half_to_even(x: float, expected: int) -> None:
    assert round_half_up(x) == expected


def test_dense_width_rounds_halves_up() -> None:
    assert dense_width(5, 0.5) == 3  # round() would give 2
    assert dense_width(10, 0.25) == 3  # 2.5


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.7, 0.9], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("hidden", [1, 2, 4])
def test_first_and_last_density_is_ratio_hidden_is_its_square(hidden: int, density: float) -> None:
    plan = plan_pair("mlp", DATASETS["cifar10"], 3076, density, hidden_layers=hidden)
    ratio = plan.dense_width / plan.sparse_width
    assert plan.layers[0].sparse_density == pytest.approx(ratio, rel=1e-12)
    assert plan.layers[-1].sparse_density == pytest.approx(ratio, rel=1e-12)
    for layer in plan.layers[1:-1]:
        assert layer.sparse_density == pytest.approx(ratio**2, rel=1e-12)


@pytest.mark.parametrize(("dataset", "kernel", "fc_in"), [
    ("cifar10", (3, 3), 128 * 8 * 8), ("fashion-mnist", (3, 3), 128 * 7 * 7), ("digits", (3, 3), 128 * 2 * 2),
    ("mnist1d", (3,), 128 * 10),
], ids=["cifar10", "fashion-mnist", "digits", "mnist1d"])
def test_cnn_base_plan_is_the_papers(dataset: str, kernel: tuple[int, ...], fc_in: int) -> None:
    info = DATASETS[dataset]
    plan = plan_pair("cnn", info, 32, 1.0)
    assert [layer.name for layer in plan.layers] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc"]
    assert [layer.sparse_shape[0] for layer in plan.layers[:-1]] == [32, 64, 64, 128, 128]
    assert [layer.sparse_shape[1] for layer in plan.layers[:-1]] == [info.shape[0], 32, 64, 64, 128]
    assert all(layer.sparse_shape[2:] == kernel for layer in plan.layers[:-1])
    assert plan.layers[-1].sparse_shape == (info.classes, fc_in)


def test_cnn_channels_scale_and_dense_channels_round_per_block() -> None:
    plan = plan_pair("cnn", DATASETS["cifar10"], 48, 0.3)
    assert [layer.sparse_shape[0] for layer in plan.layers[:-1]] == [48, 96, 96, 192, 192]
    # 0.3 × (48, 96, 96, 192, 192) = 14.4, 28.8, 28.8, 57.6, 57.6
    assert [layer.dense_shape[0] for layer in plan.layers[:-1]] == [14, 29, 29, 58, 58]
    assert plan.dense_width == 14
    assert plan.layers[0].dense_shape == (14, 3, 3, 3)
    assert plan.layers[-1].dense_shape == (10, 58 * 8 * 8)
    assert plan.layers[0].sparse_density == pytest.approx(14 / 48, rel=1e-12)
    assert plan.layers[1].sparse_density == pytest.approx(29 * 14 / (96 * 48), rel=1e-12)


def test_plan_pairs_keeps_order() -> None:
    plans = plan_pairs("mlp", DATASETS["digits"], 40, [0.9, 0.1, 0.5])
    assert [p.density for p in plans] == [0.9, 0.1, 0.5]
    assert [p.dense_width for p in plans] == [36, 4, 20]


def test_to_json_contract() -> None:
    plan = plan_pair("cnn", DATASETS["digits"], 16, 0.5)
    record = json.loads(json.dumps(plan.to_json()))
    assert {"density", "dense_width", "layers"} <= record.keys()
    assert record["density"] == 0.5
    assert record["dense_width"] == 8
    assert record["sparse_active_total"] == record["dense_active_total"] == plan.dense_active_total
    assert [layer["name"] for layer in record["layers"]] == [layer.name for layer in plan.layers]
    for got, layer in zip(record["layers"], plan.layers, strict=True):
        assert {"name", "sparse_shape", "dense_shape", "sparse_active", "dense_active"} <= got.keys()
        assert got["sparse_shape"] == list(layer.sparse_shape)
        assert got["dense_shape"] == list(layer.dense_shape)
        assert got["sparse_active"] == got["dense_active"] == layer.dense_active
        assert got["sparse_density"] == layer.sparse_density


def test_plans_are_frozen() -> None:
    plan = plan_pair("mlp", DATASETS["digits"], 10, 0.5)
    assert isinstance(plan, PairPlan)
    with pytest.raises(AttributeError):
        plan.density = 0.1  # type: ignore[misc]


TINY = DatasetInfo("tiny", (1, 3, 8), 2)
FLAT = DatasetInfo("flat", (40,), 10)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(arch="resnet"), r"unknown architecture 'resnet': use one of mlp, cnn"),
    (dict(density=0.0), r"density 0\.0 is outside \(0, 1\]"),
    (dict(density=1.5), r"density 1\.5 is outside \(0, 1\]: give the fraction"),
    (dict(density=-0.1), r"density -0\.1 is outside"),
    (dict(density=float("nan")), r"density nan is outside"),
    (dict(sparse_width=0), r"sparse width 0 must be a whole number of at least 1"),
    (dict(sparse_width=2.5), r"sparse width 2\.5 must be a whole number"),
    (dict(hidden_layers=0), r"hidden_layers=0 must be at least 1"),
    (dict(sparse_width=64, density=0.005),
     r"sparse width 64 is too small for density 0\.005: the dense network would have 0\.32 units per layer; "
     r"use a sparse width of at least 100"),
    (dict(sparse_width=1, density=0.3), r"would have 0\.3 units per layer; use a sparse width of at least 2$"),
    (dict(arch="cnn", sparse_width=4, density=0.1),
     r"sparse width 4 is too small for density 0\.1: the dense CNN's block 1 would have 0\.4 channels; "
     r"use a sparse width of at least 5"),
    (dict(arch="cnn", dataset=TINY), r"data set 'tiny' has examples of shape \(1, 3, 8\), too small .* at least 4"),
    (dict(arch="cnn", dataset=FLAT), r"data set 'flat' has examples of shape \(40,\): the CNN needs"),
], ids=["arch", "density-0", "density-above-1", "density-negative", "density-nan", "width-0", "width-float",
        "hidden-0", "too-narrow-mlp", "too-narrow-width-1", "too-narrow-cnn", "cnn-spatial", "cnn-flat"])
def test_validation_errors_name_the_value_and_the_fix(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = dict(arch="mlp", dataset=DATASETS["mnist1d"], sparse_width=64, density=0.5,
                                   hidden_layers=2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        plan_pair(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("arch", "density"), [("mlp", 0.005), ("mlp", 0.3), ("mlp", 0.07), ("cnn", 0.1),
                                               ("cnn", 0.013)], ids=str)
def test_suggested_minimum_width_is_the_smallest_that_works(arch: str, density: float) -> None:
    with pytest.raises(ConfigError, match=r"at least (\d+)") as info:
        plan_pair(arch, DATASETS["cifar10"], 1, density)
    minimum = int(str(info.value).rsplit(" ", 1)[1])
    plan = plan_pair(arch, DATASETS["cifar10"], minimum, density)
    assert min(layer.dense_shape[0] for layer in plan.layers) >= 1
    with pytest.raises(ConfigError, match="too small"):
        plan_pair(arch, DATASETS["cifar10"], minimum - 1, density)


def test_hidden_layers_is_ignored_by_the_cnn() -> None:
    assert len(plan_pair("cnn", DATASETS["digits"], 8, 0.5, hidden_layers=0).layers) == 6


def test_capacity_does_not_import_torch() -> None:
    code = "import sys, gfprobe.study.capacity; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
