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
        block: np.ndarray = stream.stats[name][taken][:, cols]
        return block

    return LayerStats(take("sumsq"), take("sum_abs"), take("masked_sumsq"),
                      take("masked_sum_abs"), take("active")), [int(c) for c in cols]
