"""gfprobe's own cost in a run: how much of the training's time went into observing it.

Every recorded step carries the seconds gfprobe spent in the training thread since the stream's
previous record (its hooks, the steps the schedule left out included) and its share of the
writer thread's CPU time (``schema.COST_COLUMNS``). Set against the time between recorded steps,
they give the observation cost as a fraction of step time. The first record is left out: it
carries the one-off set-up (finding the parameters, creating the file), not the steady cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gfprobe.store.reader import StreamData


@dataclass(frozen=True)
class ObservationCost:
    """Medians per recorded step over the records measured, in seconds: medians, because a
    training thread preempted inside a hook on a busy machine would otherwise make one slow step
    look like gfprobe's steady cost."""

    records: int  # records the medians are over
    hook: float  # in the training thread (the hooks and the statistics kernel)
    writer: float  # the writer thread's CPU time
    interval: float  # wall time between consecutive records (one step, or ``every`` steps)

    @property
    def fraction(self) -> float:
        """gfprobe's time over the training's: 0.01 is 1% of the step time."""
        return (self.hook + self.writer) / self.interval if self.interval > 0 else math.nan


def observation_cost(stream: StreamData) -> ObservationCost | None:
    """The stream's observation cost; None when its file did not measure it (written before
    gfprobe did, or by a recorder that leaves the columns empty) or it has fewer than two records."""
    if stream.hook_time is None or stream.writer_time is None or len(stream.times) < 2:
        return None
    hook, writer = stream.hook_time[1:], stream.writer_time[1:]
    interval = np.diff(stream.times)
    measured = np.isfinite(hook) & np.isfinite(writer) & np.isfinite(interval)
    if not measured.any():
        return None
    return ObservationCost(int(measured.sum()), float(np.median(hook[measured])),
                           float(np.median(writer[measured])), float(np.median(interval[measured])))


def in_words(fraction: float, hook: float, writer: float, interval: float) -> str:
    """An observation cost for people (times in seconds): what share, and of what it is made."""
    return (f"{fraction:.1%} of the step time ({hook * 1e3:.3g} ms in the training thread + "
            f"{writer * 1e3:.3g} ms writer CPU per recorded step, {interval * 1e3:.3g} ms apart)")


def cost_json(cost: ObservationCost | None) -> dict[str, float | int] | None:
    """The cost as plain data (seconds per recorded step, and the fraction); None when not measured."""
    if cost is None:
        return None
    return {"fraction": cost.fraction, "hook_s": cost.hook, "writer_s": cost.writer, "interval_s": cost.interval,
            "records": cost.records}
