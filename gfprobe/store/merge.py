"""Merging the rank files of a sharded run into one run file. Never imports torch.

Under sharded training (FSDP2, DTensor) every rank records the statistics of the gradient
elements it holds into ``<stem>.rank<r>.h5``. Every statistic is a sum, a count or a maximum
over elements, so the full gradient's statistics are exact combinations of the shards': sums
and counts add, maxima max. Replicas were already counted once by the recording ranks.

A step is merged only when every rank recorded it; steps some ranks lack (a rank that died) are
left out and counted, because a partial sum would look like a real, smaller gradient.
"""

from __future__ import annotations

import contextlib
import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfprobe.errors import RunFileError
from gfprobe.store import schema
from gfprobe.store.reader import ParamTable, RunFile, StreamData, open_run
from gfprobe.store.validate import short_error
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

# Fields combined by maximum; every other statistic is a sum or a count and adds over shards.
_MAX_FIELDS = frozenset({"max_abs", "masked_max_abs", "has_grad"})
_RANK_SUFFIX = re.compile(r"\.rank(\d+)$")


@dataclass
class MergeResult:
    out: Path
    ranks: int
    steps: list[int] = field(default_factory=list)  # merged steps per stream
    dropped: list[int] = field(default_factory=list)  # steps some rank lacked, per stream


def merged_name(rank_file: Path) -> Path:
    """``run.rank0.h5`` -> ``run.h5``."""
    return rank_file.with_name(_RANK_SUFFIX.sub("", rank_file.stem) + rank_file.suffix)


def shard_files(out: Path) -> list[Path]:
    """The rank files a sharded recording to ``out`` writes, in rank order."""
    found = [p for p in out.parent.glob(f"{glob.escape(out.stem)}.rank*{glob.escape(out.suffix)}")
             if _RANK_SUFFIX.search(p.stem) and merged_name(p) == out]
    return sorted(found, key=lambda p: int(_RANK_SUFFIX.search(p.stem).group(1)))  # type: ignore[union-attr]


def merge(paths: Sequence[Path], out: Path) -> MergeResult:
    """Write the run whose statistics are those of the full gradients the rank files' shards make."""
    if out.exists():
        raise RunFileError(f"{out} exists; choose another --out or remove it")
    runs = _read_ranks(paths)
    first = runs[0]
    metadata = {k: v for k, v in first["metadata"].items()
                if k not in ("rank", "sharded", "status", "format", "schema_version", "end_time", "error")}
    metadata.update(merged_ranks=len(runs), world_size=len(runs))
    try:
        writer = RunWriter(out, metadata, first["attrs"])
    except (OSError, ValueError, TypeError) as exc:
        raise _unwritable(out, first["path"], exc) from exc
    result = MergeResult(writer.path, len(runs))  # out itself, unless it appeared since the check above
    try:
        for index, streams in enumerate(zip(*(r["streams"] for r in runs), strict=True)):
            writer.add_stream(streams[0].optimizer, _param_infos(streams[0].params), streams[0].attrs)
            block, dropped = _merge_stream(index, streams)
            writer.append_steps(block)
            result.steps.append(len(block.steps))
            result.dropped.append(dropped)
        writer.append_metrics(first["metrics"])
        status = _merged_status([r["metadata"].get("status") for r in runs])
        writer.close(status, {"end_time": first["metadata"].get("end_time", "")})
    except BaseException as exc:
        with contextlib.suppress(Exception):  # never leave a half-merged file that looks whole
            writer.close("failed", {})
        writer.path.unlink(missing_ok=True)  # the file this merge wrote, never one that took its name
        if isinstance(exc, OSError | ValueError | TypeError):
            raise _unwritable(out, first["path"], exc) from exc
        raise
    return result


def _unwritable(out: Path, source: Path, exc: Exception) -> RunFileError:
    """Why the merged run could not be written: the disk, or a value read from the first rank
    file that HDF5 cannot store again (text with a NUL byte, from a damaged attribute)."""
    if isinstance(exc, OSError):
        return RunFileError(f"{out}: cannot be written ({short_error(exc)})")
    return RunFileError(f"{source}: a value in it cannot be copied into {out} ({short_error(exc)})")


def _merged_status(statuses: list[Any]) -> str:
    """Complete only if every rank completed; a rank left 'running' was killed: interrupted."""
    if all(s == "complete" for s in statuses):
        return "complete"
    return "failed" if "failed" in statuses else "interrupted"


def _read_ranks(paths: Sequence[Path]) -> list[dict[str, Any]]:
    if not paths:
        raise RunFileError("no rank files given; pass every <stem>.rank<r>.h5 of one run")
    runs = []
    for path in paths:
        with open_run(path, shards_ok=True) as run:
            runs.append(_read_one(run))
    if any(not r["metadata"].get("sharded") for r in runs):
        plain = next(p for p, r in zip(paths, runs, strict=True) if not r["metadata"].get("sharded"))
        raise RunFileError(f"{plain}: not a rank file of a sharded run; only those are merged")
    # Opening checked that a rank file's rank and world size are whole numbers.
    world = {r["metadata"].get("world_size") for r in runs}
    ranks = sorted(r["metadata"].get("rank") for r in runs)
    size = int(world.pop() or 0) if len(world) == 1 else None
    if size is None or ranks != list(range(size)):
        expected = f"0..{size - 1}" if size else "0..N-1 of one world size"
        raise RunFileError(f"{_listed(paths)}: the rank files are ranks {ranks}; merging needs exactly one file "
                           f"of each rank {expected} of one run")
    names = {tuple(tuple(s.params.names) for s in r["streams"]) for r in runs}
    if len(names) != 1:
        raise RunFileError(f"{_listed(paths)}: the rank files hold different optimizers or parameters; "
                           "they are not one run")
    return sorted(runs, key=lambda r: int(r["metadata"]["rank"]))


def _listed(paths: Sequence[Path], most: int = 3) -> str:
    """The files a message is about: all of a few, the first of many."""
    names = ", ".join(map(str, paths[:most]))
    return names if len(paths) <= most else f"{names}, ... ({len(paths)} files)"


def _read_one(run: RunFile) -> dict[str, Any]:
    metrics = [(name, int(s), float(t), float(v))
               for name, m in run.metrics().items()
               for s, t, v in zip(m.steps, m.times, m.values, strict=True)]
    return {"path": run.path, "metadata": run.metadata, "attrs": run.attrs, "metrics": metrics,
            "streams": [run.stream(i) for i in range(run.n_streams)]}


def _merge_stream(index: int, streams: Sequence[StreamData]) -> tuple[StepBlock, int]:
    """Rows of the steps every rank recorded, combined field by field; and how many were dropped."""
    common = streams[0].steps
    for s in streams[1:]:
        common = np.intersect1d(common, s.steps)
    every = np.unique(np.concatenate([s.steps for s in streams]))
    rows = [_rows_of(s.steps, common) for s in streams]
    stats = np.stack([_combine(field, [s.stats[field][r] for s, r in zip(streams, rows, strict=True)])
                      for field in schema.STAT_FIELDS], axis=1)
    times = np.max([s.times[r] for s, r in zip(streams, rows, strict=True)], axis=0)
    skipped = np.max([s.skipped[r] for s, r in zip(streams, rows, strict=True)], axis=0)
    costs = {name: _slowest_rank([getattr(s, name) for s in streams], rows) for name in schema.COST_COLUMNS}
    block = StepBlock(index, common.astype(np.int64), times, skipped.astype(np.uint8), stats, **costs)
    return block, int(len(every) - len(common))


def _slowest_rank(costs: list[np.ndarray | None], rows: list[np.ndarray]) -> np.ndarray | None:
    """gfprobe's own time per merged step: the ranks step together, so the slowest rank's is what
    the run paid (NaN where a rank did not measure it; None when no rank file has the column)."""
    if all(c is None for c in costs):
        return None
    per_rank = [np.full(len(r), np.nan) if c is None else c[r] for c, r in zip(costs, rows, strict=True)]
    return np.asarray(np.max(per_rank, axis=0))


def _rows_of(steps: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The row of each wanted step (its first). Steps are recorded in order, but a damaged file's
    need not be: looking them up among the sorted unique steps finds them either way."""
    unique, first = np.unique(steps, return_index=True)
    rows: np.ndarray = first[np.searchsorted(unique, wanted)]
    return rows


def _combine(field: str, shards: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(shards).astype(np.float64)
    combined: np.ndarray = stacked.max(axis=0) if field in _MAX_FIELDS else stacked.sum(axis=0)
    return combined


def _param_infos(params: ParamTable) -> list[ParamInfo]:
    return [ParamInfo(name, shape, kind, module_type, mask)
            for name, shape, kind, module_type, mask in zip(params.names, params.shapes, params.kinds,
                                                            params.module_types, params.mask_sources, strict=True)]
