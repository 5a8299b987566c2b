"""Study files and presets: grid expansion, and one clear error per bad key or value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gfprobe.errors import ConfigError
from gfprobe.study import names
from gfprobe.study.config import RunSpec, load_study, parse_study
from gfprobe.study.presets import PRESETS, load_preset

GRID: dict[str, Any] = {"dataset": "mnist1d", "density": [0.1, 0.5], "optimizer": ["sgd", "adam"],
                        "regularisation": ["NR", "BN"], "seed": [0, 1]}


def study(**grid: Any) -> tuple[RunSpec, ...]:
    return parse_study({"grid": [{**GRID, **grid}]}).runs


def test_a_grid_is_the_cross_product_of_its_lists_with_both_members_of_every_pair() -> None:
    runs = study()
    assert len(runs) == 2 * 2 * 2 * 2 * 2  # densities × optimizers × regularisations × seeds × {sparse, dense}
    assert len({r.run_id for r in runs}) == len(runs)
    partners = {r.run_id.replace("-sparse-", "-dense-") for r in runs if r.sparse}
    assert partners == {r.run_id for r in runs if not r.sparse}


def test_study_settings_apply_to_every_run_and_grids_override_them() -> None:
    document = {"study": {"name": "s", "epochs": 7, "batch_size": 32},
                "grid": [{"density": 0.5}, {"density": 0.25, "epochs": 3}]}
    runs = parse_study(document).runs
    assert {(r.density, r.epochs, r.batch_size, r.study) for r in runs} == {(0.5, 7, 32, "s"), (0.25, 3, 32, "s")}


def test_density_one_has_no_sparse_member() -> None:
    runs = study(density=[1.0])
    assert runs and not any(r.sparse for r in runs)


def test_overlapping_grids_train_a_run_once() -> None:
    runs = parse_study({"grid": [{"density": 0.5, "seed": [0, 1]}, {"density": 0.5, "seed": [1, 2]}]}).runs
    assert sorted({r.seed for r in runs}) == [0, 1, 2] and len(runs) == 6


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_parse(preset: str) -> None:
    assert len(load_preset(preset)) > 0


def test_quick_preset_shape() -> None:
    runs = load_preset("quick").runs
    assert {r.dataset for r in runs} == {"mnist1d"}
    assert {r.optimizer for r in runs} == {"momentum", "adam"} and {r.regularisation for r in runs} == {"NR", "BN"}
    assert len({r.seed for r in runs}) >= 2 and len({r.density for r in runs}) >= 3


@pytest.mark.parametrize(
    ("document", "fragments"),
    [
        ({"grid": [{"optimiser": "adam"}]}, ["'optimiser' is not known", "did you mean 'optimizer'", "allowed:"]),
        ({"study": {"epoch": 3}, "grid": [{}]}, ["[study] key 'epoch'", "did you mean 'epochs'"]),
        ({"grids": [{}]}, ["top-level table 'grids'", "did you mean 'grid'"]),
        ({"grid": [{"arch": "resnet"}]}, ["arch = 'resnet'", "allowed: mlp, cnn"]),
        ({"grid": [{"optimizer": ["adam", "lion"]}]}, ["optimizer = 'lion'", "adagrad"]),
        ({"grid": [{"activation": "gelu"}]}, ["activation = 'gelu'", "srelu"]),
        ({"grid": [{"dataset": "mnist"}]}, ["dataset = 'mnist'", "did you mean 'mnist1d'", "cifar100"]),
        ({"grid": [{"regularisation": "BN_DA"}]}, ["regularisation = 'BN_DA'", "DA_BN"]),
        ({"grid": [{"density": [0.5, 0]}]}, ["density = 0", "outside (0, 1]"]),
        ({"grid": [{"density": 1.5}]}, ["density = 1.5", "outside (0, 1]"]),
        ({"grid": [{"seed": 1.5}]}, ["seed = 1.5", "whole number"]),
        ({"grid": [{"epochs": True}]}, ["epochs = True", "whole number"]),
        ({"grid": [{"lr": -0.1}]}, ["lr = -0.1", "greater than 0"]),
        ({"grid": [{"lr": "fast"}]}, ["lr = 'fast'", "must be a number"]),
        ({"grid": []}, ["no [[grid]] table"]),
        ({"study": {"name": "x"}}, ["no [[grid]] table"]),
    ],
    ids=lambda v: "" if isinstance(v, list) else str(v)[:60],
)
def test_bad_study_is_one_clear_error(document: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_study(document)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_study_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such study file"):
        load_study(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[grid]\ndensity = 0.5\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_study(broken)
    good = tmp_path / "mine.toml"
    good.write_text('[[grid]]\ndensity = [0.25, 0.5]\noptimizer = "sgd"\nlr = 0.1\n')
    loaded = load_study(good)
    assert loaded.name == "mine" and len(loaded) == 4


def test_every_regularisation_name_parses_into_known_switches() -> None:
    for name in names.REGULARISATIONS:
        assert names.regularisers(name) <= set(names.REGULARISERS)
    assert names.regularisers("DA_L2_SC_BN") == {"DA", "L2", "SC", "BN"}


def test_planning_a_study_never_imports_torch() -> None:
    code = ("import sys; from gfprobe.study.presets import load_preset; load_preset('paper-mlp'); "
            "import gfprobe.study.capacity; assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
