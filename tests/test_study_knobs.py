"""The study's data knobs: ``samples`` and ``test_fraction`` (MNIST-1D generated at any size, a
stratified subset of the digits, fixed files refused), the probe batch held out of training, and
run ids and attributes that keep runs of other settings apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gfprobe.cli import main
from gfprobe.errors import ConfigError
from gfprobe.store.reader import open_run
from gfprobe.study import capacity, data, names
from gfprobe.study.config import RunSpec, parse_study
from gfprobe.study.runattrs import changed_settings, run_attrs
from gfprobe.study.sizes import split_sizes


def runs(grid: dict[str, Any] | None = None, **settings: Any) -> tuple[RunSpec, ...]:
    return parse_study({"study": settings, "grid": [grid or {"density": 0.5}]}).runs


# -- study files -------------------------------------------------------------------------------


def test_defaults_are_each_data_sets_own_and_leave_run_ids_as_they_were() -> None:
    mnist1d, = (r for r in runs() if r.sparse)
    digits, = (r for r in runs({"dataset": "digits"}) if r.sparse)
    fashion, = (r for r in runs({"dataset": "fashion-mnist"}) if r.sparse)
    assert (mnist1d.samples, mnist1d.test_fraction) == (5000, 0.2)
    assert (digits.samples, digits.test_fraction) == (1797, 0.2)
    assert (fashion.samples, fashion.test_fraction) == (None, None)
    assert (mnist1d.probe_every, mnist1d.probe_batch) == (0, 0)
    assert mnist1d.run_id == "mnist1d-mlp2-w256-d0.5-sparse-adam-lr0.001-NR-relu-s0"
    # Writing a default out changes nothing: the same data, the same file.
    assert runs(samples=5000, test_fraction=0.2) == runs()


def test_other_data_and_a_probe_stream_get_ids_of_their_own() -> None:
    sparse, = (r for r in runs(samples=10000, test_fraction=0.25, probe_every=10, probe_batch=500) if r.sparse)
    assert sparse.run_id == "mnist1d-n10000-t0.25-mlp2-w256-d0.5-sparse-adam-lr0.001-NR-relu-s0-probe500-every10"
    # Two sizes in one study, one grid each: four runs, four files.
    study = parse_study({"grid": [{"density": 0.5, "samples": 5000}, {"density": 0.5, "samples": 10000}]})
    assert len({r.run_id for r in study.runs}) == 4
    # The held-out examples change the training, measuring does not, but its file holds more: apart too.
    ids = {r.run_id for s in ({}, {"probe_batch": 100}, {"probe_batch": 100, "probe_every": 5})
           for r in runs(**s)}
    assert len(ids) == 6


@pytest.mark.parametrize(("grid", "settings", "fragment"), [
    ({}, {"samples": 0}, "samples = 0 must be greater than 0"),
    ({}, {"samples": 2.5}, "samples = 2.5 must be a whole number"),
    ({}, {"samples": True}, "samples = True must be a whole number"),
    ({}, {"samples": 5005}, "must be a multiple of 10: its generator makes samples / 10 examples of each class"),
    ({}, {"samples": 2_000_000}, "samples = 2,000,000 is more than mnist1d offers (1,000,000)"),
    ({"dataset": "digits"}, {"samples": 1800}, "samples = 1,800 is more than digits offers (1,797)"),
    ({"dataset": "digits"}, {"samples": 40, "test_fraction": 0.1}, "leaves 36 training and 4 test examples"),
    ({}, {"test_fraction": 0}, "test_fraction = 0 is outside (0, 1)"),
    ({}, {"test_fraction": 1.0}, "test_fraction = 1.0 is outside (0, 1)"),
    ({}, {"test_fraction": float("nan")}, "test_fraction = nan must be a finite number"),
    ({}, {"test_fraction": "a fifth"}, "test_fraction = 'a fifth' must be a number"),
    ({"dataset": "cifar10"}, {"samples": 1000}, "samples = 1000 does not apply to cifar10, whose train and test "
                                                "files are fixed"),
    ({"dataset": "fashion-mnist"}, {"test_fraction": 0.5}, "test_fraction = 0.5 does not apply to fashion-mnist"),
    ({}, {"probe_every": 10}, "probe_every = 10 measures the gradient of a held-out probe batch: give its size too"),
    ({}, {"probe_every": -1, "probe_batch": 10}, "probe_every = -1 must not be negative"),
    ({}, {"probe_batch": 1}, "probe_batch = 1 is too small"),
    ({}, {"probe_batch": 4000}, "probe_batch = 4,000 holds out all 4,000 training examples of mnist1d"),
    ({"regularisation": "BN"}, {"samples": 260, "batch_size": 43, "test_fraction": 0.5},
     "130 training examples in batches of 43 leave a last batch of one example"),
], ids=lambda v: str(v)[:40])
def test_bad_data_settings_are_one_clear_error(grid: dict[str, Any], settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        runs({"density": 0.5, **grid}, **settings)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


# -- data --------------------------------------------------------------------------------------


def test_mnist1d_of_another_size_is_generated_the_same_every_time() -> None:
    first = data.load("mnist1d", samples=600, test_fraction=0.25)
    data._mnist1d_arrays.cache_clear()  # generated again, not taken from the cache
    again = data.load("mnist1d", samples=600, test_fraction=0.25)
    for a, b in zip((first.x_train, first.y_train, first.x_test, first.y_test),
                    (again.x_train, again.y_train, again.x_test, again.y_test), strict=True):
        assert torch.equal(a, b)
    assert (len(first.y_train), len(first.y_test)) == (450, 150)
    assert torch.bincount(torch.cat([first.y_train, first.y_test])).tolist() == [60] * 10
    # The cache is keyed by the size: another size is other data, and the first one comes back.
    other = data.load("mnist1d", samples=600, test_fraction=0.5)
    assert torch.equal(torch.cat([other.y_train, other.y_test]), torch.cat([first.y_train, first.y_test]))
    assert len(data.load("mnist1d", samples=700).y_train) == 560
    assert torch.equal(data.load("mnist1d", samples=600, test_fraction=0.25).x_test, first.x_test)


def test_a_digits_subset_keeps_every_class_on_both_sides() -> None:
    split = data.load("digits", samples=300, test_fraction=0.3)
    assert (len(split.y_train), len(split.y_test)) == split_sizes(300, 0.3) == (210, 90)
    train, test = torch.bincount(split.y_train, minlength=10), torch.bincount(split.y_test, minlength=10)
    assert int((train + test).min()) >= 29 and int((train + test).max()) <= 31  # each class's share, within one
    assert int(test.min()) >= 8
    smallest = data.load("digits", samples=20, test_fraction=0.5)
    assert torch.bincount(smallest.y_train).tolist() == torch.bincount(smallest.y_test).tolist() == [1] * 10


def test_fixed_files_refuse_a_size() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist comes as fixed train and test files"):
        data.load("fashion-mnist", samples=100)


def test_the_probe_batch_is_the_same_held_out_examples_for_every_run() -> None:
    split = data.load("digits")
    trained, probe = data.hold_out(split, 100)
    _, again = data.hold_out(data.load("digits"), 100)
    assert probe is not None and again is not None and torch.equal(probe.x, again.x)
    assert len(trained.y_train) == 1337 and len(probe.y) == 100 and torch.equal(trained.x_test, split.x_test)
    rows = {tuple(row.tolist()) for row in split.x_train.flatten(1)}
    kept = {tuple(row.tolist()) for row in trained.x_train.flatten(1)}
    held = {tuple(row.tolist()) for row in probe.x.flatten(1)}
    assert kept | held <= rows and not kept & held  # training examples, none of them trained on
    assert data.hold_out(split, 0) == (split, None)
    with pytest.raises(ConfigError, match="probe_batch = 1,437 holds out all 1,437 training examples"):
        data.hold_out(split, 1437)


# -- run attributes and resuming ---------------------------------------------------------------


def test_the_settings_are_run_attributes_and_a_changed_one_is_named() -> None:
    spec, = (r for r in runs({"dataset": "digits", "density": 0.5}, samples=500, probe_batch=50, probe_every=4)
             if r.sparse)
    plan = capacity.plan_pair("mlp", names.DATASETS["digits"], 256, 0.5, 2)
    attrs = run_attrs(spec, plan)
    assert {k: attrs[k] for k in ("samples", "test_fraction", "probe_every", "probe_batch")} == {
        "samples": 500, "test_fraction": 0.2, "probe_every": 4, "probe_batch": 50}
    assert changed_settings(attrs, spec) == []
    assert changed_settings({**attrs, "study": "renamed"}, spec) == []  # a name sets nothing up
    assert changed_settings({**attrs, "epochs": 5}, spec) == ["epochs = 5 -> 30"]
    # A file from before a setting was recorded had its default, which the run id then implies.
    assert changed_settings({k: v for k, v in attrs.items() if k != "probe_every"}, spec) == []
    fashion, = (r for r in runs({"dataset": "fashion-mnist", "density": 0.5}) if r.sparse)
    assert "samples" not in run_attrs(fashion, plan)


def test_a_study_with_the_knobs_trains_and_records_them(tmp_path: Path) -> None:
    config = tmp_path / "study.toml"
    config.write_text('[study]\nepochs = 1\nsamples = 400\ntest_fraction = 0.25\nprobe_every = 2\nprobe_batch = 30\n'
                      '[[grid]]\ndataset = "digits"\nsparse_width = 16\ndensity = 0.5\nregularisation = "BN"\n')
    result = CliRunner().invoke(main, ["scsdc", "run", "--config", str(config), "--out", str(tmp_path / "out"),
                                       "--no-report"])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out" / "runs").glob("*.h5"))
    name = "digits-n400-t0.25-mlp2-w16-d0.5-{}-adam-lr0.001-BN-relu-s0-probe30-every2.h5"
    assert [f.name for f in files] == [name.format("dense"), name.format("sparse")]
    with open_run(files[1]) as run:
        assert (run.attrs["samples"], run.attrs["test_fraction"], run.attrs["probe_batch"]) == (400, 0.25, 30)
        probe, minibatch = run.stream("probe"), run.stream(0)
    # 300 training examples, 30 held out: 270 in batches of 128, three steps; measured at 0 and 2.
    assert minibatch.steps.tolist() == [0, 1, 2] and probe.steps.tolist() == [0, 2]
    assert np.isfinite(probe.stats["sumsq"]).all()
