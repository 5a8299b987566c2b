"""The public analysis API (``gfprobe.api``): its doctests, and agreement with the CLI's numbers."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, child_env

import gfprobe.api as gf

ROOT = FIXTURES.parent
RUNS = [FIXTURES / "runs" / name for name in ("dense.h5", "sparse.h5", "amp.h5")]


def test_docstring_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the examples name fixtures/runs/... relative to the repository
    result = doctest.testmod(gf, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0


def test_everything_public_is_exported_and_typed() -> None:
    for name in gf.__all__:
        assert hasattr(gf, name), name
    assert (Path(gf.__file__).parent / "py.typed").exists()


def test_measures_equal_the_papers_formula_on_the_raw_statistics() -> None:
    run = gf.load(RUNS[1])
    taken = ~run.skipped
    weights = [run.params.index(name) for name in run.layers]
    per_layer = np.sqrt(run.stats["masked_sumsq"][taken][:, weights])
    np.testing.assert_allclose(run.measures()["egf_2"], per_layer.mean(axis=1), rtol=1e-12)


def test_amp_skipped_steps_are_left_out_of_the_measures() -> None:
    run = gf.load(RUNS[2])
    assert run.skipped.any()
    assert len(run.measures()["egf_2"]) == int((~run.skipped).sum())
    assert run.measures_frame().index.tolist() == run.steps[~run.skipped].tolist()


def test_summaries_equal_gfprobe_report_json() -> None:
    done = subprocess.run([sys.executable, "-m", "gfprobe", "report", "--format", "json", *map(str, RUNS)],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)["runs"]
    for summary, printed in zip(gf.summarize(RUNS), cli, strict=True):
        for measure, value in summary.measures.items():
            assert printed["measures"][measure] == pytest.approx(value, rel=1e-12)


def test_layers_frame_holds_every_statistic_of_every_weight_layer() -> None:
    run = gf.load(RUNS[0])
    frame = run.layers_frame()
    assert list(frame.columns) == list(gf.STAT_FIELDS)
    layer = run.layers[-1]
    np.testing.assert_array_equal(frame.xs(layer, level="layer")["sumsq"].to_numpy(), run.layer("sumsq")[:, -1])


def test_metrics_frame_equals_the_metrics() -> None:
    run = gf.load(RUNS[0])
    frame = run.metrics_frame()
    for name, metric in run.metrics.items():
        assert frame[frame.name == name]["value"].tolist() == metric.values.tolist()


def test_check_and_compare_and_correlate_run_on_summaries() -> None:
    results = gf.check(RUNS[:2])
    assert [Path(r.path).name for r in results] == ["dense.h5", "sparse.h5"]
    summaries = gf.summarize(RUNS)
    assert gf.compare(summaries)  # one configuration, sparse against dense
    assert {row.group for row in gf.correlate(summaries, "test_acc")} >= {"all"}


def test_errors_are_the_exported_classes(tmp_path: Path) -> None:
    missing = tmp_path / "missing.h5"
    with pytest.raises(gf.RunFileError, match=r"missing\.h5"):
        gf.load(missing)
    with pytest.raises(gf.ConfigError, match="unknown statistic 'sumsquares'"):
        gf.load(RUNS[0]).layer("sumsquares")
    assert issubclass(gf.RunFileError, gf.GfprobeError)
