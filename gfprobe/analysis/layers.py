"""The weight layers of a stream, as the measures, the report, the rules and the plots see them.

Every measure and rule looks at the weight layers (``kind == "weight"``) over the optimizer steps
really taken: a step GradScaler skipped changed no weight, so its statistics are left out.
"""

from __future__ import annotations

import numpy as np

from gfprobe.measures import LayerStats
from gfprobe.store.reader import StreamData
from gfprobe.store.schema import WEIGHT

# The statistics the measures need: what to read when nothing else is asked for.
MEASURE_FIELDS = ("sumsq", "sum_abs", "masked_sumsq", "masked_sum_abs", "active")
# The per-layer table also shows the largest |g| and the non-finite entries.
PER_LAYER_FIELDS = (*MEASURE_FIELDS, "max_abs", "nonfinite")


def weight_layer_stats(stream: StreamData) -> tuple[LayerStats, list[int]]:
    """The weight layers' statistics over the steps taken, and their columns in the stream."""
    cols = stream.params.indices(WEIGHT)
    taken = ~stream.skipped

    def take(name: str) -> np.ndarray:
        return steps_and_columns(stream.stats[name], taken, cols)

    return LayerStats(take("sumsq"), take("sum_abs"), take("masked_sumsq"),
                      take("masked_sum_abs"), take("active")), [int(c) for c in cols]


def steps_and_columns(values: np.ndarray, taken: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``values[taken][:, cols]`` with one copy at most: chained fancy indexing copies twice, which
    was most of the time of reading a long run (100,000 records of 100 layers: 2.4 s of 7). Where
    every step was taken and the columns are one run, it is a read-only view of ``values``."""
    if len(cols) and int(cols[-1]) - int(cols[0]) + 1 == len(cols):
        block = values[:, int(cols[0]):int(cols[-1]) + 1]
        if not taken.all():
            picked: np.ndarray = block[taken]
            return picked
        block.flags.writeable = False  # a view: a write through it would change the stream's data
        return block
    scattered: np.ndarray = values[np.ix_(np.flatnonzero(taken), cols)]
    return scattered
