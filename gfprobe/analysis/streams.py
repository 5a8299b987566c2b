"""Which streams a report covers, and what their gradients are.

A run file holds a stream per optimizer (the minibatch gradient each step consumed) and may hold
measurement streams (a fixed probe batch's gradient, taken every K steps). ``gfprobe report
--stream`` picks them by index or name, several at once; each pick is summarised, correlated and
compared on its own, as a *block*, so figures from different protocols are never mixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfprobe.analysis.report import RunSummary, read_report
from gfprobe.errors import ConfigError
from gfprobe.store.reader import Unreadable
from gfprobe.store.schema import MINIBATCH, PROBE_BATCH
from gfprobe.summary import DEFAULT_POINTS

ALL = "all"  # every stream any file has, one block each


@dataclass(frozen=True)
class StreamBlock:
    """The runs' summaries of one stream pick (``--stream``): its index or name as given."""

    selector: str
    runs: list[RunSummary]

    @property
    def protocols(self) -> list[str]:
        """The protocols of its runs' streams (one, unless files disagree about the stream)."""
        return sorted({run.protocol for run in self.runs})

    @property
    def minibatch(self) -> bool:
        """Every run's stream is an optimizer's minibatch gradient (as in files without protocols)."""
        return all(run.protocol == MINIBATCH for run in self.runs)

    @property
    def label(self) -> str:
        """``stream probe: probe-batch gradient of 500 held-out training examples, every 10 optimizer steps``."""
        described = dict.fromkeys(describe(run.protocol, run.stream_attrs) for run in self.runs)
        return f"stream {self.selector}: {'; '.join(described) or 'no run has it'}"

    def to_json(self) -> dict[str, Any]:
        return {"selector": self.selector, "protocols": self.protocols, "label": self.label}


def describe(protocol: str, attrs: Mapping[str, Any]) -> str:
    """A protocol in words, from its stream's attributes."""
    if protocol == MINIBATCH:
        return "minibatch gradient, the one each optimizer step consumed"
    if protocol == PROBE_BATCH and "batch_size" in attrs and "every" in attrs:
        held = " held-out" if attrs.get("held_out") else ""
        return (f"probe-batch gradient of {attrs['batch_size']}{held} training examples, "
                f"every {attrs['every']} optimizer steps")
    return f"{protocol} gradient"


def check_selectors(values: Sequence[str]) -> list[str]:
    """The picks of ``--stream``, each once, in the order given (an index, a name, or ``all``)."""
    picks = list(dict.fromkeys(value.strip() for value in values))
    if not picks or "" in picks:
        raise ConfigError("--stream needs a stream's index (0, 1, ...), its name (e.g. probe, Adam) or 'all'")
    return picks


def read_streams(paths: Sequence[str | Path], selectors: Sequence[str], how: str = "points",
                 points: int = DEFAULT_POINTS, per_layer: bool = False,
                 on_file: Callable[[int], None] | None = None) -> tuple[list[StreamBlock], list[Unreadable]]:
    """A block per pick, and every file that could not be read for one (each problem once).
    ``all`` stands for stream 0 of every file, then each further index the files have (a file
    with fewer streams is left out of those blocks, not reported as unreadable)."""
    blocks: dict[str, StreamBlock] = {}
    unreadable: dict[tuple[str, str], Unreadable] = {}
    done = 0

    def read(key: str, files: Sequence[str | Path]) -> list[RunSummary]:
        nonlocal done
        offset = done
        # An index as a number: the same options as the study's own (an index of summaries keys on them).
        stream: int | str = int(key) if key.isdecimal() else key
        runs, bad = read_report(files, stream, how, points, per_layer,
                                None if on_file is None else lambda n: on_file(offset + n))
        done += len(files)
        unreadable.update(((item.path, item.error), item) for item in bad)
        blocks.setdefault(key, StreamBlock(key, runs))
        return runs

    for selector in selectors:
        if selector != ALL:
            if selector not in blocks:
                read(selector, paths)
            continue
        first = blocks["0"].runs if "0" in blocks else read("0", paths)
        for index in range(1, max((run.n_streams for run in first), default=1)):
            if str(index) not in blocks:
                read(str(index), [run.path for run in first if run.n_streams > index])
    return list(blocks.values()), list(unreadable.values())
