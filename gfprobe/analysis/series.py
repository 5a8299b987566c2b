"""Per-step series of one run, for plots: each weight layer's effective gradient norm, and the
measures, over the optimizer steps the run recorded (AMP-skipped steps left out)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gfprobe.analysis.layers import MEASURE_FIELDS, weight_layer_stats
from gfprobe.measures import compute_all, layer_norms
from gfprobe.store.reader import open_run


@dataclass(frozen=True)
class RunSeries:
    path: Path
    steps: np.ndarray  # [T] optimizer step of each record
    layers: list[str]  # weight layer names, in column order
    layer_l2: np.ndarray  # [T, L] ‖g ⊙ m‖₂ per weight layer
    measures: dict[str, np.ndarray]  # measure -> [T]
    attrs: dict[str, object]


def read_series(path: Path, stream_index: int = 0) -> RunSeries:
    """One run's series; a RunFileError names the file when it cannot be read."""
    with open_run(path) as run:
        stream = run.stream(stream_index, fields=MEASURE_FIELDS)
        attrs = run.attrs
    stats, cols = weight_layer_stats(stream)
    return RunSeries(path, stream.steps[~stream.skipped], [stream.params.names[c] for c in cols],
                     layer_norms(stats, 2), compute_all(stats), attrs)
