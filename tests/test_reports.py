"""``gfprobe report --correlate / --scsdc`` and ``gfprobe plot`` on a study of fixture runs whose
values are known: every coefficient, p-value and statistic is recomputed here with scipy."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIXTURES, Golden
from scipy import stats

from gfprobe.analysis.correlation import rank_correlation
from gfprobe.cli import main
from gfprobe.store.schema import STAT_FIELDS
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

F = {name: i for i, name in enumerate(STAT_FIELDS)}
PARAMS = [ParamInfo("fc1.weight", (8, 4), "weight", "Linear", "explicit"),
          ParamInfo("fc1.bias", (8,), "bias", "Linear"),
          ParamInfo("fc2.weight", (2, 8), "weight", "Linear", "explicit")]
STEPS = 12


def write_run(path: Path, attrs: dict[str, object], layer_l2: tuple[float, float], raw_scale: float,
              acc: float) -> None:
    """A run whose per-layer effective norms are constant over its steps (so every summary is
    exactly that value) and whose raw norms are ``raw_scale`` times larger."""
    block = np.zeros((STEPS, len(STAT_FIELDS), len(PARAMS)))
    for col, l2 in ((0, layer_l2[0]), (2, layer_l2[1])):
        block[:, F["masked_sumsq"], col] = l2**2
        block[:, F["masked_sum_abs"], col] = 3 * l2
        block[:, F["sumsq"], col] = (raw_scale * l2) ** 2
        block[:, F["sum_abs"], col] = 3 * raw_scale * l2
    block[:, F["sumsq"], 1] = block[:, F["sum_abs"], 1] = 1.0
    block[:, F["active"]] = [p.numel for p in PARAMS]
    block[:, F["has_grad"]] = 1
    writer = RunWriter(path, {"command": ["fixture"]}, attrs)
    writer.add_stream("SGD", PARAMS)
    writer.append_steps(StepBlock(0, np.arange(STEPS), np.arange(STEPS) * 0.1, np.zeros(STEPS, np.uint8), block))
    writer.append_metrics([("test_acc", STEPS, 1.0, acc), ("test_loss", STEPS, 1.0, 2.0 - acc)])
    writer.close("complete", {})


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    """2 optimizers × 2 regularisations × 2 densities × {sparse, dense} × 3 seeds, plus a
    configuration with no dense partner and one with a single seed per side."""
    folder = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(7)
    runs = []
    grid = itertools.product(("sgd", "adam"), ("NR", "BN"), (0.25, 0.5), (True, False), range(3))
    extra = [("sgd", "NR", 0.1, True, s) for s in range(3)] + [("adam", "BN", 0.75, sparse, 0)
                                                                for sparse in (True, False)]
    for optimizer, reg, density, sparse, seed in [*grid, *extra]:
        attrs = {"optimizer": optimizer, "regularisation": reg, "activation": "relu", "sparse": sparse,
                 "density": density if sparse else 1.0, "pair_density": density, "width": 64 if sparse else 32,
                 "seed": seed, "dataset": "fixture"}
        layer_l2 = (float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.1, 1.0)))
        raw_scale = float(rng.uniform(1.0, 4.0)) if sparse else 1.0
        acc = float(np.clip(0.55 + 0.2 * density + (0.05 if reg == "BN" else 0) - (0.04 if sparse else 0)
                            + 0.1 * rng.standard_normal(), 0, 1))
        name = f"{optimizer}-{reg}-d{density}-{'sparse' if sparse else 'dense'}-s{seed}.h5"
        write_run(folder / name, attrs, layer_l2, raw_scale, acc)
        runs.append({**attrs, "egf_2": float(np.mean([np.sqrt(v**2) for v in layer_l2])),
                     "gf_2": float(raw_scale * np.sqrt(sum(v**2 for v in layer_l2))), "acc": acc,
                     "loss": 2.0 - acc})
    return folder, runs


def report_json(folder: Path, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["report", str(folder), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    loaded: dict[str, object] = json.loads(result.stdout)
    return loaded


def test_correlation_matches_scipy(study: tuple[Path, list[dict[str, object]]]) -> None:
    folder, runs = study
    out = report_json(folder, "--correlate", "test_acc", "--correlate", "test_loss")
    assert set(out) == {"correlation"}
    rows = {(r["group"], r["measure"], r["metric"]): r for r in out["correlation"]}  # type: ignore[union-attr]
    assert len(rows) == 3 * 6 * 2
    for group, measure, metric in itertools.product(("sparse", "dense", "all"), ("egf_2", "gf_2"),
                                                    ("test_acc", "test_loss")):
        members = [r for r in runs if group == "all" or r["sparse"] == (group == "sparse")]
        x = np.array([r[measure] for r in members])
        y = np.array([r["acc" if metric == "test_acc" else "loss"] for r in members])
        expected = stats.kendalltau(x, y)
        row = rows[(group, measure, metric)]
        assert set(row) == {"group", "measure", "metric", "method", "n", "coef", "p", "ci"}
        assert row["n"] == len(members) and row["method"] == "kendall"
        assert row["coef"] == pytest.approx(expected.statistic, abs=1e-12)
        assert row["p"] == pytest.approx(expected.pvalue, rel=1e-9)
        low, high = row["ci"]
        assert low <= row["coef"] <= high


def test_spearman_and_by_split(study: tuple[Path, list[dict[str, object]]]) -> None:
    folder, runs = study
    out = report_json(folder, "--correlate", "test_acc", "--method", "spearman", "--by", "optimizer")
    row = next(r for r in out["correlation"]  # type: ignore[union-attr]
               if r["split"] == {"optimizer": "adam"} and r["group"] == "sparse" and r["measure"] == "egf_2")
    members = [r for r in runs if r["optimizer"] == "adam" and r["sparse"]]
    expected = stats.spearmanr([r["egf_2"] for r in members], [r["acc"] for r in members])
    assert row["method"] == "spearman" and row["n"] == len(members)
    assert row["coef"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)


@pytest.mark.parametrize("method", ["kendall", "spearman"])
def test_bootstrap_interval_is_scipys_paired_percentile_bootstrap(method: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    y[:4] = y[4]  # ties
    fn = stats.kendalltau if method == "kendall" else stats.spearmanr
    reference = stats.bootstrap((x, y), lambda a, b: fn(a, b).statistic, paired=True, vectorized=False,
                                n_resamples=300, method="percentile", rng=np.random.default_rng(11))
    _, _, (low, high) = rank_correlation(x, y, method, resamples=300, seed=11)
    assert low == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert high == pytest.approx(reference.confidence_interval.high, abs=1e-12)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_resampled_coefficients_are_scipys_of_each_resample(ties: bool) -> None:
    """The vectorised statistics (blocks of runs for Kendall's τ, midranks from counts for
    Spearman's ρ) against scipy on every resample; block sizes from 1 to one block for all."""
    from gfprobe.analysis import resample

    rng = np.random.default_rng(4)
    n = 60
    x = rng.integers(0, 8, n).astype(float) if ties else rng.normal(size=n)
    y = np.round(x + rng.normal(size=n), 0 if ties else 6)
    index = rng.integers(0, n, (40, n))
    kendall = [stats.kendalltau(x[i], y[i]).statistic for i in index]
    spearman = [stats.spearmanr(x[i], y[i]).statistic for i in index]
    by_block = [resample.kendall(x, y, block)(index) for block in (1, 3, 7, 20, None)]
    assert by_block[-1] == pytest.approx(kendall, abs=1e-12)
    assert all(np.array_equal(tau, by_block[-1]) for tau in by_block)  # exact integers, whatever the blocks
    assert resample.spearman(x, y)(index) == pytest.approx(spearman, abs=1e-12)
    assert resample.kendall(x, y)(index.reshape(4, 10, n)).shape == (4, 10)


@pytest.mark.parametrize("test", ["welch", "mwu"])
def test_scsdc_statistics_match_scipy(study: tuple[Path, list[dict[str, object]]], test: str) -> None:
    folder, runs = study
    out = report_json(folder, "--scsdc", "--test", test)
    comparisons = out["scsdc"]
    assert isinstance(comparisons, list) and len(comparisons) == 2 * 2 * 2 + 2
    for entry in comparisons:
        config = entry["config"]
        assert not {"sparse", "width", "density", "seed"} & set(config)
        members = [r for r in runs if all(r.get(k) == v for k, v in config.items())]
        sparse = np.array([r["acc"] for r in members if r["sparse"]])
        dense = np.array([r["acc"] for r in members if not r["sparse"]])
        if not len(dense):
            assert entry["dense"] is None and entry["note"] == "no dense runs" and entry["p"] is None
            continue
        if len(sparse) < 2:
            assert entry["note"] == "a single seed on a side" and entry["p"] is None
            continue
        assert entry["sparse"]["n"] == len(sparse) and entry["dense"]["n"] == len(dense)
        assert entry["sparse"]["acc_mean"] == pytest.approx(sparse.mean())
        assert entry["dense"]["acc_std"] == pytest.approx(dense.std(ddof=1))
        assert entry["sparse"]["egf_2"] == pytest.approx(np.mean([r["egf_2"] for r in members if r["sparse"]]))
        assert entry["diff"] == pytest.approx(sparse.mean() - dense.mean())
        expected = (stats.ttest_ind(sparse, dense, equal_var=False, alternative="greater").pvalue
                    if test == "welch" else stats.mannwhitneyu(sparse, dense, alternative="greater").pvalue)
        assert entry["p"] == pytest.approx(expected) and entry["test"] == test
    pivots = {(p["rows"], p["columns"]): p["cells"] for p in out["pivots"]}  # type: ignore[union-attr]
    cell = next(c for c in pivots[("optimizer", "regularisation")] if c["row"] == "sgd" and c["column"] == "NR")
    pooled = [r for r in runs if r["optimizer"] == "sgd" and r["regularisation"] == "NR" and r["pair_density"] != 0.1]
    sparse = [r["acc"] for r in pooled if r["sparse"]]
    dense = [r["acc"] for r in pooled if not r["sparse"]]
    expected = (stats.ttest_ind(sparse, dense, equal_var=False, alternative="greater").pvalue if test == "welch"
                else stats.mannwhitneyu(sparse, dense, alternative="greater").pvalue)
    assert cell["configs"] == 2 and cell["n_sparse"] == 6 and cell["p"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("correlation.txt", ["--correlate", "test_acc"]),
        ("correlation.md", ["--correlate", "test_acc", "--format", "markdown"]),
        ("correlation.csv", ["--correlate", "test_acc", "--format", "csv"]),
        ("scsdc.txt", ["--scsdc"]),
        ("scsdc.md", ["--scsdc", "--format", "markdown"]),
        ("scsdc.csv", ["--scsdc", "--format", "csv"]),
        ("scsdc-and-correlation.md", ["--scsdc", "--correlate", "test_acc", "--format", "markdown"]),
    ],
)
def test_golden_report_sections(study: tuple[Path, list[dict[str, object]]], monkeypatch: pytest.MonkeyPatch,
                                golden: Golden, name: str, args: list[str]) -> None:
    folder, _ = study
    monkeypatch.chdir(folder)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("GFPROBE_WIDTH", "110")
    result = CliRunner().invoke(main, ["report", ".", "--resamples", "200", *args])
    assert result.exit_code == 0, result.output
    golden(f"report-{name}", result.stdout)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--correlate", "accuracy"], "no run has a metric 'accuracy'; the runs have: test_acc, test_loss"),
        (["--scsdc", "--scsdc-metric", "top1"], "no run has a metric 'top1' to compare"),
        (["--correlate", "test_acc", "--method", "pearson"], "'pearson' is not one of"),
    ],
)
def test_bad_report_requests(study: tuple[Path, list[dict[str, object]]], args: list[str], fragment: str) -> None:
    folder, _ = study
    result = CliRunner().invoke(main, ["report", str(folder), *args])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_scsdc_needs_the_sparse_attribute(tmp_path: Path) -> None:
    for name in ("a.h5", "b.h5"):
        write_run(tmp_path / name, {"optimizer": "sgd"}, (1.0, 1.0), 1.0, 0.5)
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--scsdc"])
    assert result.exit_code == 2
    assert "no run has a 'sparse' attribute" in result.output


@pytest.mark.parametrize("kind", ["layers", "measures", "scatter", "scsdc"])
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plots_are_written(study: tuple[Path, list[dict[str, object]]], tmp_path: Path, kind: str,
                           suffix: str) -> None:
    folder, runs = study
    out = tmp_path / f"{kind}{suffix}"
    inputs = [str(folder / "sgd-NR-d0.25-sparse-s0.h5")] if kind == "layers" else [str(folder)]
    result = CliRunner().invoke(main, ["plot", *inputs, "--kind", kind, "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]
    if kind == "scatter" and suffix == ".svg":  # text stays text in SVG: the title carries τ
        sparse = [r for r in runs if r["sparse"]]
        tau = stats.kendalltau([r["egf_2"] for r in sparse], [r["acc"] for r in sparse]).statistic
        assert f"τ sparse {tau:+.2f}" in data.decode()
    if kind == "layers" and suffix == ".svg":
        assert "fc1.weight" in data.decode() and "fc2.weight" in data.decode()


def test_plot_refuses_an_unknown_image_type(study: tuple[Path, list[dict[str, object]]], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plot", str(study[0]), "--out", str(tmp_path / "x.jpg")])
    assert result.exit_code == 2 and "use .png or .svg" in result.output


def test_plot_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; from gfprobe.cli import main; "
            f"main(['plot', {str(FIXTURES / 'runs' / 'dense.h5')!r}, '--out', {str(tmp_path / 'x.png')!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "pip install 'gfprobe[plot]'" in done.stderr and "Traceback" not in done.stderr


def test_report_reads_many_runs_in_worker_processes(study: tuple[Path, list[dict[str, object]]]) -> None:
    """Above PARALLEL_FROM files the runs are read by worker processes; results must not change."""
    from gfprobe.analysis import report

    folder, _ = study
    paths = sorted(folder.glob("*.h5"))
    serial = report.build_report(paths)
    previous = report.PARALLEL_FROM
    report.PARALLEL_FROM = 2
    try:
        parallel = report.build_report(paths)
    finally:
        report.PARALLEL_FROM = previous
    assert [r.path for r in parallel] == [r.path for r in serial]
    for a, b in zip(parallel, serial, strict=True):
        assert a.measures == b.measures and a.metrics == b.metrics and a.attrs == b.attrs
    assert all(math.isfinite(r.measures["egf_2"]) for r in parallel)
