"""What the interleaved benchmarks share (overhead.py, peers.py): the 4x512 MLP and its data,
the probe's flush clock, and the summaries of per-round ratios.

Imports neither gfprobe nor SciPy at module level, so that a child process measuring one side's
peak memory pays for what that side imports and nothing else.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 0
BATCH = 128
N_BATCHES = 8  # a small pool of synthetic batches, created once and cycled
IN_FEATURES, HIDDEN, DEPTH, CLASSES = 784, 512, 4, 10


def build_model(seed: int = SEED) -> nn.Sequential:
    """The 4x512 MLP: 784->512, three 512->512, ReLU between, 512->10."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(IN_FEATURES, HIDDEN)]
    for _ in range(DEPTH - 1):
        layers += [nn.ReLU(), nn.Linear(HIDDEN, HIDDEN)]
    layers += [nn.ReLU(), nn.Linear(HIDDEN, CLASSES)]
    return nn.Sequential(*layers)


def make_data(seed: int = SEED) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed + 1)
    return [
        (torch.randn(BATCH, IN_FEATURES, generator=gen),
         torch.randint(0, CLASSES, (BATCH,), generator=gen))
        for _ in range(N_BATCHES)
    ]


def settle(seconds: float) -> None:
    """Optional untimed pause before a block, for helper threads that spin after their last task
    (OpenMP, OpenBLAS) to go idle. Off by default: measured here, a 0.2 s pause made A/A block
    ratios three times as noisy (the CPU comes back cold), and gfprobe caps its BLAS threads."""
    if seconds > 0:
        time.sleep(seconds)


class FlushClock:
    """Keeps the probe's flush timer on the recorded side's own time.

    The probe flushes its rows every ``FLUSH_SECONDS`` of wall time. Interleaving spends most
    of the wall time on the other sides, so without this the recorded side would flush several
    times more often per step than the same loop trained alone. Before each recorded block the
    time spent outside the recorded side's blocks is added to every stream's last flush time.
    """

    def __init__(self, probe: Any, enabled: bool) -> None:
        self._probe = probe
        self._enabled = enabled
        self._left: float | None = None

    def enter(self) -> None:
        if self._enabled and self._left is not None:
            away = time.monotonic() - self._left
            try:
                for stream in self._probe._streams.values():
                    stream.last_flush += away
            except AttributeError as exc:  # the probe's internals moved on
                raise SystemExit(f"--flush-clock recorded no longer fits gfprobe ({exc}); "
                                 "use --flush-clock wall") from exc

    def leave(self) -> None:
        self._left = time.monotonic()


def source_fingerprint() -> str:
    """A short hash of gfprobe's source files, to tell which version a result measured."""
    import gfprobe

    digest = hashlib.sha256()
    root = Path(gfprobe.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio_summary(ratios: list[float]) -> dict[str, Any]:
    """Median of the per-round ratios with its bootstrap 95% interval, quartiles and range."""
    from scipy.stats import bootstrap

    values = np.asarray(ratios)
    interval = bootstrap((values,), np.median, confidence_level=0.95, n_resamples=2000,
                         method="percentile", random_state=0).confidence_interval
    return {**summary(ratios), "ci95": [float(interval.low), float(interval.high)],
            "q1": float(np.percentile(values, 25)), "q3": float(np.percentile(values, 75)),
            "blocks": ratios}
