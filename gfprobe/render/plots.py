"""Figures, with matplotlib (an optional extra: ``pip install 'gfprobe[plot]'``).

Five kinds, each a function from analysis results to an image file (PNG or SVG, by suffix):

* ``layers``: each weight layer's effective gradient norm ‖g ⊙ m‖₂ over training, log scale,
  one line per layer, one panel per run;
* ``measures``: gf_2, egf_2, gf_1 and egf_1 over training, one line per run (sparse runs solid,
  dense dashed);
* ``scatter``: a measure's run summary against a metric across runs, sparse and dense marked
  apart, Kendall's τ of each group in the title;
* ``scsdc``: the metric of sparse and capacity-matched dense runs side by side, mean ± std over
  seeds, one panel per setting;
* ``diff``: two runs' per-layer ‖g ⊙ m‖₂ overlaid (BASE solid, NEW dashed), and NEW/BASE per layer
  at the steps both recorded, with ``gfprobe diff``'s tolerance band; a row per pair of runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gfprobe.analysis.attrs import group_of
from gfprobe.analysis.correlation import rank_correlation
from gfprobe.analysis.report import RunSummary
from gfprobe.analysis.scsdc import Comparison
from gfprobe.analysis.series import RunSeries
from gfprobe.errors import ConfigError, GfprobeError
from gfprobe.render.formats import order_key
from gfprobe.render.safe import visible
from gfprobe.summary import describe_runs

KINDS = ("layers", "measures", "scatter", "scsdc", "diff")
FORMATS = (".png", ".svg")
COLOURS = {"sparse": "#d62728", "dense": "#1f77b4", None: "#555555"}
MAX_PANELS = 12
MAX_DIFF_PAIRS = 6  # rows of two panels each


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise GfprobeError("plots need matplotlib, an optional extra: pip install 'gfprobe[plot]'") from None
    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 150, "savefig.bbox": "tight", "svg.fonttype": "none", "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9, "axes.titlesize": 9, "legend.fontsize": 7,
                         "legend.frameon": False})
    return plt


def check_out(out: Path, what: str = "--out") -> None:
    """Refuse an image type other than .png or .svg, before any run is read."""
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"{what} {out}: unsupported image type {out.suffix or '(none)'!r}; use .png or .svg")


def _save(fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def _label(path: Path) -> str:
    return _plain(path.name.removesuffix(".h5"))


def _plain(value: object) -> str:
    """Text from a run file as matplotlib shows it: visible (an image reaches no CI log, so '::'
    stays as it is), and ``$`` never starts mathtext."""
    return visible(value).replace("$", r"\$")


def _log_axis(ax: Any, axis: str = "y") -> None:
    """Log scale. Over less than about a decade and a half, minor ticks at 2 and 5 are labelled
    too (decades alone would leave one label); over more, decades only (minor labels collide)."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    low, high = getattr(ax, f"get_{axis}lim")()
    target = getattr(ax, f"{axis}axis")
    if low > 0 and math.log10(high / low) < 1.5:
        target.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        target.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    else:
        target.set_minor_formatter(NullFormatter())


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving mean over ``window`` steps (same length; shorter windows at the ends). Gradient
    norms jump at every short last batch of an epoch; the smoothed line shows the trend."""
    if window <= 1 or len(values) < 3:
        return values
    kernel = np.ones(window)
    finite = np.isfinite(values)
    total = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    count = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        smoothed: np.ndarray = total / count
    return smoothed


def _grid(n: int, width: float = 3.6, height: float = 2.6) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    columns = 2 if n == 4 else min(n, 3)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False,
                             constrained_layout=True)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_layers(series: Sequence[RunSeries], out: Path) -> Path:
    if not series:
        raise ConfigError("nothing to plot: no runs")
    shown = list(series[:MAX_PANELS])
    fig, axes = _grid(len(shown), width=4.2, height=3.0)
    for ax, run in zip(axes, shown, strict=True):
        window = max(1, len(run.steps) // 50)
        for j, name in enumerate(run.layers):
            values = np.where(run.layer_l2[:, j] > 0, run.layer_l2[:, j], np.nan)
            raw = ax.plot(run.steps, values, lw=0.6, alpha=0.25)
            ax.plot(run.steps, smooth(values, window), lw=1.4, color=raw[0].get_color(), label=_plain(name))
        _log_axis(ax)
        ax.set_title(_label(run.path), loc="left")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("‖g ⊙ m‖₂ per weight layer")
        ax.legend(loc="best", ncol=1 if len(run.layers) <= 6 else 2)
    if len(series) > MAX_PANELS:
        fig.suptitle(f"first {MAX_PANELS} of {len(series)} runs", x=0.01, ha="left")
    return _save(fig, out)


def plot_measures(series: Sequence[RunSeries], out: Path, measures: Sequence[str] = ("gf_2", "egf_2", "gf_1",
                                                                                       "egf_1")) -> Path:
    """A few runs: one smoothed line each. Many: per group (sparse, dense), the median over runs
    with the band of their middle half, on a shared grid of steps."""
    if not series:
        raise ConfigError("nothing to plot: no runs")
    fig, axes = _grid(len(measures), width=4.0, height=2.8)
    many = len(series) > 8
    for ax, measure in zip(axes, measures, strict=True):
        if many:
            _plot_bands(ax, series, measure)
        else:
            for run in series:
                values = np.where(run.measures[measure] > 0, run.measures[measure], np.nan)
                ax.plot(run.steps, smooth(values, max(1, len(values) // 50)), lw=1.2,
                        ls="--" if group_of(run.attrs) == "dense" else "-", label=_label(run.path))
        _log_axis(ax)
        ax.set_title(measure, loc="left")
        ax.set_xlabel("optimizer step")
    axes[0].legend(loc="best")
    return _save(fig, out)


def _plot_bands(ax: Any, series: Sequence[RunSeries], measure: str) -> None:
    end = min(int(run.steps[-1]) for run in series if len(run.steps))
    grid = np.linspace(0, end, 200)
    for group in ("sparse", "dense", None):
        members = [run for run in series if group_of(run.attrs) == group and len(run.steps) > 1]
        if not members:
            continue
        curves = []
        for run in members:
            values = np.where(run.measures[measure] > 0, run.measures[measure], np.nan)
            logged = np.log10(smooth(values, max(1, len(values) // 50)))
            curves.append(np.interp(grid, run.steps, logged))
        low, mid, high = np.nanpercentile(np.array(curves), [25, 50, 75], axis=0)
        ax.fill_between(grid, 10**low, 10**high, color=COLOURS[group], alpha=0.2, lw=0)
        ax.plot(grid, 10**mid, color=COLOURS[group], lw=1.5, label=f"{group or 'runs'}: median of {len(members)}")


def plot_scatter(runs: Sequence[RunSummary], out: Path, metric: str = "test_acc",
                 measures: Sequence[str] = ("gf_2", "egf_2")) -> Path:
    if not any(metric in run.metrics for run in runs):
        raise ConfigError(f"no run has a metric {metric!r} to plot against; choose one with --metric")
    fig, axes = _grid(len(measures), width=3.8, height=3.2)
    how = describe_runs(((r.how, r.points, r.steps) for r in runs), short=True)  # the summary on x
    for ax, measure in zip(axes, measures, strict=True):
        taus = []
        for group in ("sparse", "dense", None):
            members = [r for r in runs if group_of(r.attrs) == group]
            if not members:
                continue
            x = np.array([r.measures[measure] for r in members])
            y = np.array([r.metrics.get(metric, {}).get("last", math.nan) for r in members])
            ax.scatter(x, y, s=14, alpha=0.75, color=COLOURS[group], marker="o" if group != "dense" else "s",
                       label=group or "runs", edgecolors="none")
            tau = rank_correlation(x, y, "kendall", resamples=0)[0]
            taus.append(f"τ {group or 'runs'} {tau:+.2f}" if math.isfinite(tau) else f"τ {group or 'runs'} –")
        _log_axis(ax, "x")
        ax.set_xlabel(f"{measure} ({how})")
        ax.set_ylabel(_plain(metric))
        ax.set_title(f"{measure}: " + ", ".join(taus), loc="left")
        ax.legend(loc="best")
    return _save(fig, out)


def _tick(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else _plain(value)


def plot_scsdc(comparisons: Sequence[Comparison], out: Path, metric: str = "test_acc") -> Path:
    """Sparse and dense bars with error bars; x: the configurations' capacity (pair density when
    the runs have it), one panel per combination of the other settings that vary."""
    from gfprobe.render.scsdc import varying_keys

    rows = [c for c in comparisons if c.sparse is not None and c.dense is not None]
    if not rows:
        raise ConfigError("no configuration has both sparse and dense runs: nothing to compare")
    shown, _ = varying_keys(rows)
    x_key = "pair_density" if "pair_density" in shown else (shown[-1] if shown else None)
    panel_keys = [k for k in shown if k != x_key]
    panels: dict[tuple[Any, ...], list[Comparison]] = {}
    for row in rows:
        panels.setdefault(tuple(row.config.get(k) for k in panel_keys), []).append(row)
    keys = sorted(panels, key=str)[:MAX_PANELS]
    fig, axes = _grid(len(keys), width=3.4, height=2.6)
    for ax in axes[1:]:
        ax.sharey(axes[0])
    for ax, key in zip(axes, keys, strict=True):
        members = sorted(panels[key], key=lambda c: order_key(c.config.get(x_key) if x_key else None))
        positions = np.arange(len(members))
        for offset, side in ((-0.2, "sparse"), (0.2, "dense")):
            sides = [getattr(c, side) for c in members]
            ax.bar(positions + offset, [s.acc_mean for s in sides], width=0.38, color=COLOURS[side], alpha=0.85,
                   yerr=[0 if not math.isfinite(s.acc_std) else s.acc_std for s in sides], capsize=2,
                   error_kw={"lw": 0.8}, label=side)
        for position, c in zip(positions, members, strict=True):
            if math.isfinite(c.p) and c.p <= 0.05:
                top = max(c.sparse.acc_mean + (c.sparse.acc_std or 0), c.dense.acc_mean)  # type: ignore[union-attr]
                ax.text(position, top, "*", ha="center", va="bottom")
        ax.set_xticks(positions, [_tick(c.config.get(x_key) if x_key else "") for c in members])
        ax.set_xlabel("density of the pair" if x_key == "pair_density" else _plain(x_key or ""))
        ax.set_ylabel(f"{_plain(metric)} (mean ± std)")
        ax.set_title(_plain(" ".join(f"{k}={v}" for k, v in zip(panel_keys, key, strict=True)) or "all runs"),
                     loc="left")
    low = min(min(c.sparse.acc_mean, c.dense.acc_mean) for c in rows)  # type: ignore[union-attr]
    axes[0].set_ylim(max(0.0, low - 0.1), None)
    shown_note = f"first {MAX_PANELS} of {len(panels)} settings; " if len(panels) > MAX_PANELS else ""
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper right", ncol=2)
    fig.suptitle(f"SC-SDC: sparse vs capacity-matched dense ({shown_note}* one-sided p ≤ 0.05)", x=0.01,
                 ha="left", fontsize=9)
    return _save(fig, out)


def plot_diff(pairs: Sequence[tuple[str, RunSeries, RunSeries]], out: Path, rtol: float | None = None) -> Path:
    """Per pair (run id, BASE, NEW), a row: both runs' layer norms overlaid, one colour per layer;
    and NEW/BASE per layer at the steps both recorded, with the band ``gfprobe diff`` tolerates."""
    from matplotlib.ticker import MaxNLocator

    if not pairs:
        raise ConfigError("nothing to plot: no pair of runs")
    shown = list(pairs[:MAX_DIFF_PAIRS])
    fig, axes = _pyplot().subplots(len(shown), 2, figsize=(8.8, 3.0 * len(shown)), squeeze=False,
                                   constrained_layout=True)
    for (left, right), (run_id, base, new) in zip(axes, shown, strict=True):
        colours = {name: f"C{k % 10}" for k, name in enumerate(dict.fromkeys([*base.layers, *new.layers]))}
        _overlay(left, base, new, colours)
        left.set_title(f"{_plain(run_id)}: BASE solid, NEW dashed", loc="left")
        _ratios(right, base, new, colours, rtol)
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps are whole
    if len(pairs) > MAX_DIFF_PAIRS:
        fig.suptitle(f"first {MAX_DIFF_PAIRS} of {len(pairs)} pairs of runs", x=0.01, ha="left")
    return _save(fig, out)


def _overlay(ax: Any, base: RunSeries, new: RunSeries, colours: dict[str, str]) -> None:
    for run, style in ((base, "-"), (new, "--")):
        for j, name in enumerate(run.layers):
            values = np.where(run.layer_l2[:, j] > 0, run.layer_l2[:, j], np.nan)
            first = style == "-" or name not in base.layers  # one legend entry per layer
            ax.plot(run.steps, values, ls=style, lw=1.3 if style == "-" else 1.0, color=colours[name],
                    label=_plain(name) if first else None)
    if (np.concatenate([base.layer_l2.ravel(), new.layer_l2.ravel()]) > 0).any():
        _log_axis(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("‖g ⊙ m‖₂ per weight layer")
    ax.legend(loc="best", ncol=1 if len(colours) <= 6 else 2)


def _plain_ratio_ticks(ax: Any) -> None:
    """Ratios as plain numbers (0.5, 2, 10) at 1, 2 and 5 times each decade: a ratio axis spans
    a few decades at most, where scientific notation and decades alone read poorly."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _ratios(ax: Any, base: RunSeries, new: RunSeries, colours: dict[str, str], rtol: float | None) -> None:
    common, base_rows, new_rows = np.intersect1d(base.steps, new.steps, return_indices=True)
    drawn: list[np.ndarray] = []
    for j, name in enumerate(base.layers):
        if name not in new.layers:
            continue
        b, n = base.layer_l2[base_rows, j], new.layer_l2[new_rows, new.layers.index(name)]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(b == n, 1.0, n / b)
        ratio = np.where(np.isfinite(ratio) & (ratio > 0), ratio, np.nan)  # a log axis shows no 0 or inf
        ax.plot(common, ratio, lw=1.2, color=colours[name])
        drawn.append(ratio[np.isfinite(ratio)])
    if rtol is not None:
        ax.axhspan(1 / (1 + rtol), 1 + rtol, color="#999999", alpha=0.3, lw=0, label=f"tolerance (rtol {rtol:g})")
        ax.legend(loc="best")
    ax.axhline(1.0, color="#555555", lw=0.6)
    shown = np.concatenate([np.ones(1), *drawn])
    if len(shown) == 1:
        ax.text(0.5, 0.5, "no common step or layer", transform=ax.transAxes, ha="center")
    elif shown.max() / shown.min() > 4:  # a factor of 10 reads best on a log axis, 1% on a linear one
        _log_axis(ax)
        _plain_ratio_ticks(ax)
    ax.set_title(f"NEW / BASE at the {len(common)} common steps", loc="left")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ratio of ‖g ⊙ m‖₂")
