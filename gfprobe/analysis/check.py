"""Gradient-health rules over recorded runs (``gfprobe check``): pure NumPy, no torch.

Each rule looks at one run's statistics and returns a :class:`Finding`: pass, fail (naming the
offending layer and step), or skip (switched off, or nothing to look at). Layer rules look at the
weight layers (``kind == "weight"``) and their effective norms ‖g ⊙ m‖₂; steps that GradScaler
skipped are left out of every rule but ``amp_skips``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gfprobe.analysis.check_config import Config
from gfprobe.analysis.cost import in_words, observation_cost
from gfprobe.analysis.layers import MEASURE_FIELDS, weight_layer_stats
from gfprobe.measures import egf, layer_norms
from gfprobe.store.reader import StreamData, Unreadable, open_run, read_each
from gfprobe.store.schema import MASKS_IN_FORWARD, MASKS_RAW_OBSERVABLE

# Every statistic a rule reads; read once per run.
FIELDS = (*MEASURE_FIELDS, "nonfinite", "has_grad")
READABLE_RULE = "readable"  # the rule an unreadable file fails where every file must have a result


@dataclass(frozen=True)
class Finding:
    rule: str
    status: str  # "pass" | "fail" | "skip"
    message: str
    layer: str | None = None
    step: int | None = None
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class RunCheck:
    path: str
    findings: list[Finding]

    @property
    def passed(self) -> bool:
        return all(f.status != "fail" for f in self.findings)


@dataclass(frozen=True)
class _View:
    """What the rules read: the stream, and its weight layers over the steps really taken."""

    stream: StreamData
    taken: np.ndarray  # bool [records]: not skipped by GradScaler
    steps: np.ndarray  # optimizer step of each taken record
    names: list[str]  # weight layers
    cols: np.ndarray  # their columns in the stream
    norms: np.ndarray  # [taken, layers] ‖g ⊙ m‖₂
    egf_2: np.ndarray  # [taken]


def _view(stream: StreamData) -> _View:
    taken = ~stream.skipped
    stats, cols = weight_layer_stats(stream)
    return _View(stream, taken, stream.steps[taken], [stream.params.names[c] for c in cols],
                 np.array(cols, dtype=int), layer_norms(stats, 2),
                 egf(stats, 2) if cols else np.zeros(int(taken.sum())))


def _pass(rule: str, message: str) -> Finding:
    return Finding(rule, "pass", message)


def nonfinite(view: _View, settings: dict[str, Any]) -> Finding:
    counts = view.stream.stats["nonfinite"][view.taken]
    bad = np.argwhere(counts > 0)
    if not len(bad):
        return _pass("nonfinite", "no NaN or Inf gradient")
    row, col = int(bad[0][0]), int(bad[0][1])
    name = view.stream.params.names[col]
    return Finding("nonfinite", "fail", f"{int(counts[row, col])} NaN/Inf entries in the gradient of {name} at "
                   f"step {int(view.steps[row])} ({len(np.unique(bad[:, 0]))} steps affected)", name,
                   int(view.steps[row]), float(counts[row, col]), 0.0)


def amp_skips(view: _View, settings: dict[str, Any]) -> Finding:
    skipped = view.stream.skipped
    fraction = float(skipped.mean()) if skipped.size else 0.0
    message = f"{int(skipped.sum())} of {skipped.size} steps skipped by GradScaler ({fraction:.1%})"
    if fraction <= settings["max_fraction"]:
        return _pass("amp_skips", message)
    first = int(view.stream.steps[np.argmax(skipped)])
    return Finding("amp_skips", "fail", f"{message}, more than {settings['max_fraction']:.1%}; the first at "
                   f"step {first}", None, first, fraction, settings["max_fraction"])


def vanishing(view: _View, settings: dict[str, Any]) -> Finding:
    live = view.norms[:, _live(view)]
    names = [n for n, alive in zip(view.names, _live(view), strict=True) if alive]
    below = live < settings["threshold"]
    fractions = below.mean(axis=0) if len(below) else np.zeros(len(names))
    worst = int(np.argmax(fractions)) if len(names) else -1
    if worst >= 0 and fractions[worst] > settings["max_fraction"]:
        step = int(view.steps[np.argmax(below[:, worst])])
        return Finding("vanishing", "fail", f"‖g⊙m‖₂ of {names[worst]} below {settings['threshold']:g} at "
                       f"{fractions[worst]:.0%} of the steps (from step {step})", names[worst], step,
                       float(fractions[worst]), settings["max_fraction"])
    orders = _collapse_orders(view.egf_2)
    if orders > settings["collapse_orders"]:
        return Finding("vanishing", "fail", f"egf_2 collapsed by {orders:.1f} orders of magnitude from the first "
                       "to the last tenth of training", None, int(view.steps[-1]), orders, settings["collapse_orders"])
    return _pass("vanishing", f"no layer below {settings['threshold']:g}; egf_2 fell by "
                 f"{max(orders, 0.0):.1f} orders of magnitude at most")


def _collapse_orders(series: np.ndarray) -> float:
    """log10 of (median of the first tenth / median of the last tenth); 0 when undefined."""
    if len(series) < 10:
        return 0.0
    k = len(series) // 10
    early, late = float(np.median(series[:k])), float(np.median(series[-k:]))
    if early <= 0 or not math.isfinite(early):
        return 0.0
    return math.inf if late <= 0 else math.log10(early / late)


def exploding(view: _View, settings: dict[str, Any]) -> Finding:
    norms = np.where(np.isfinite(view.norms), view.norms, 0.0)
    if norms.size and norms.max() > settings["threshold"]:
        row, col = (int(i) for i in np.unravel_index(int(np.argmax(norms)), norms.shape))
        return Finding("exploding", "fail", f"‖g⊙m‖₂ of {view.names[col]} reached {norms[row, col]:.3g} at step "
                       f"{int(view.steps[row])}, above {settings['threshold']:g}", view.names[col],
                       int(view.steps[row]), float(norms[row, col]), settings["threshold"])
    series = view.egf_2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(series[:-1] > 0, series[1:] / series[:-1], 1.0) if len(series) > 1 else np.ones(0)
    ratios = np.where(np.isfinite(ratios), ratios, 1.0)
    if ratios.size and ratios.max() > settings["jump_factor"]:
        jump = int(np.argmax(ratios)) + 1
        return Finding("exploding", "fail", f"egf_2 jumped {ratios[jump - 1]:.3g}x at step {int(view.steps[jump])}, "
                       f"beyond {settings['jump_factor']:g}x", None, int(view.steps[jump]), float(ratios[jump - 1]),
                       settings["jump_factor"])
    largest = float(norms.max()) if norms.size else 0.0
    return _pass("exploding", f"largest layer norm {largest:.3g}; largest egf_2 rise "
                 f"{float(ratios.max()) if ratios.size else 1.0:.3g}x")


def _live(view: _View) -> np.ndarray:
    """Weight layers with a non-zero gradient at some step (the others are the dead rule's)."""
    if not view.norms.size:
        return np.zeros(len(view.names), dtype=bool)
    return np.asarray((np.nan_to_num(view.norms) > 0).any(axis=0))


def dead(view: _View, settings: dict[str, Any]) -> Finding:
    if not view.names:
        return Finding("dead", "skip", "no weight layers recorded")
    dead_layers = [n for n, alive in zip(view.names, _live(view), strict=True) if not alive]
    if not dead_layers:
        return _pass("dead", f"all {len(view.names)} weight layers had a gradient")
    has_grad = view.stream.stats["has_grad"][view.taken][:, view.cols]
    missing = [n for j, n in enumerate(view.names) if n in dead_layers and not has_grad[:, j].any()]
    why = "no gradient (not connected to the loss?)" if missing else "an exactly zero gradient"
    return Finding("dead", "fail", f"{', '.join(dead_layers)}: {why} at every one of {len(view.steps)} steps",
                   dead_layers[0], None, float(len(dead_layers)), 0.0)


def imbalance(view: _View, settings: dict[str, Any]) -> Finding:
    live = _live(view)
    norms = view.norms[:, live]
    names = [n for n, alive in zip(view.names, live, strict=True) if alive]
    if len(names) < 2:
        return Finding("imbalance", "skip", "fewer than two live weight layers")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = norms.max(axis=1) / norms.min(axis=1)
    ratio = float(np.nanmedian(np.where(np.isfinite(ratios), ratios, np.nan))) if ratios.size else 1.0
    typical = np.nanmedian(norms, axis=0)
    high, low = names[int(np.nanargmax(typical))], names[int(np.nanargmin(typical))]
    message = f"median ratio of the largest to the smallest layer norm {ratio:.3g} ({high} over {low})"
    if not math.isfinite(ratio) or ratio <= settings["max_ratio"]:
        return _pass("imbalance", message)
    return Finding("imbalance", "fail", f"{message}, beyond {settings['max_ratio']:g}", low, None, ratio,
                   settings["max_ratio"])


def mask_leak(view: _View, settings: dict[str, Any]) -> Finding:
    sources = view.stream.params.mask_sources
    masked = [c for c in range(len(sources)) if sources[c] in MASKS_RAW_OBSERVABLE]
    if not masked:
        observable = any(s in MASKS_IN_FORWARD for s in sources)
        return Finding("mask_leak", "pass" if observable else "skip",
                       "prune/parametrize masks: masked weights get no gradient by construction" if observable
                       else "no masks recorded")
    raw = view.stream.stats["sumsq"][view.taken][:, masked]
    effective = view.stream.stats["masked_sumsq"][view.taken][:, masked]
    leak = raw - effective
    share = np.divide(leak, raw, out=np.zeros_like(leak), where=raw > 0)
    leaking = share > 1e-9
    if not leaking.any():
        return _pass("mask_leak", f"no gradient on the masked weights of {len(masked)} parameters")
    row, col = (int(i) for i in np.unravel_index(int(np.argmax(share)), share.shape))
    name = view.stream.params.names[masked[col]]
    return Finding("mask_leak", "fail", f"the optimizer got non-zero gradients for masked weights at "
                   f"{int(leaking.any(axis=1).sum())} of {len(leaking)} steps; worst: {name} at step "
                   f"{int(view.steps[row])}, {share[row, col]:.1%} of its squared gradient norm "
                   "(harmless only if your loop zeroes masked weights after every step)", name,
                   int(view.steps[row]), float(share[row, col]), 0.0)


def instability(view: _View, settings: dict[str, Any]) -> Finding:
    half = view.egf_2[len(view.egf_2) // 2:]
    half = half[np.isfinite(half)]
    if len(half) < 2 or half.mean() <= 0:
        return Finding("instability", "skip", "too few steps in the second half of training")
    cv = float(half.std() / half.mean())
    message = f"coefficient of variation of egf_2 over the second half of training {cv:.3g}"
    if cv <= settings["max_cv"]:
        return _pass("instability", message)
    return Finding("instability", "fail", f"{message}, above {settings['max_cv']:g}: unstable gradient flow", None,
                   None, cv, settings["max_cv"])


def overhead(view: _View, settings: dict[str, Any]) -> Finding:
    cost = observation_cost(view.stream)
    if cost is None:
        return Finding("overhead", "skip", "gfprobe's own time is not measured in this file (written before "
                       "gfprobe measured it, or with fewer than two recorded steps)")
    message = f"gfprobe's own time {in_words(cost.fraction, cost.hook, cost.writer, cost.interval)}"
    limit = settings["max_fraction"]
    if cost.fraction <= limit:
        return _pass("overhead", message)
    every = math.ceil(cost.fraction / limit) if limit > 0 else None
    advice = f"; record every {every} steps (--every {every}) to bring it under" if every else ", above"
    return Finding("overhead", "fail", f"{message}{advice} {limit:.0%}", None, None, cost.fraction, limit)


CHECKS: dict[str, Callable[[_View, dict[str, Any]], Finding]] = {
    "nonfinite": nonfinite, "amp_skips": amp_skips, "vanishing": vanishing, "exploding": exploding,
    "dead": dead, "imbalance": imbalance, "mask_leak": mask_leak, "instability": instability,
    "overhead": overhead,
}  # in the order of check_config.RULES, which lists what the configuration may name


def check_stream(stream: StreamData, path: str, config: Config) -> RunCheck:
    view = _view(stream)
    findings = []
    for rule, check in CHECKS.items():
        if not config[rule]["enabled"]:
            findings.append(Finding(rule, "skip", "switched off in the configuration"))
        elif not len(view.steps) and rule != "amp_skips":
            findings.append(Finding(rule, "skip", "no optimizer step recorded"))
        else:
            findings.append(check(view, config[rule]))
    return RunCheck(path, findings)


def unreadable_check(item: Unreadable) -> RunCheck:
    """A file that could not be read, as a run failing the rule READABLE_RULE: CI reads annotations
    and JUnit, not stderr, and there a run whose health is unknown must not pass unseen."""
    return RunCheck(item.path, [Finding(READABLE_RULE, "fail", f"unreadable run file: {item.error}")])


def check_runs(paths: list[Path], config: Config, stream_index: int = 0) -> list[RunCheck]:
    """Every rule on every run, in order; a RunFileError for the first file that cannot be read."""
    return [check_path(path, config, stream_index) for path in paths]


def check_each(paths: list[Path], config: Config, stream_index: int = 0) -> tuple[list[RunCheck], list[Unreadable]]:
    """Every rule on every readable run, and every file that could not be read, in order."""
    return read_each(paths, lambda path: check_path(path, config, stream_index))


def check_path(path: Path, config: Config, stream_index: int = 0) -> RunCheck:
    """Every rule on one run. Its file is read once."""
    with open_run(path) as run:
        stream = run.stream(stream_index, fields=FIELDS)
    return check_stream(stream, str(path), config)
