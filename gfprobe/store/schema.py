"""Names, types and layout of the run file (documented for users in docs/run-file.md).

Bump SCHEMA_VERSION, and say so in CHANGELOG.md, whenever the layout changes.
"""

from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 1
FORMAT_NAME = "gfprobe-run"

# Per-parameter statistics recorded once per recorded optimizer step. Every measure is derived
# from these mergeable totals; the order is the order of the adapter's stats block.
STAT_FIELDS: tuple[str, ...] = (
    "sumsq",  # Σ g²            over the raw gradient
    "sum_abs",  # Σ |g|
    "max_abs",  # max |g|
    "nonfinite",  # count of NaN/Inf entries
    "masked_sumsq",  # the same four over the effective gradient g ⊙ m
    "masked_sum_abs",
    "masked_max_abs",
    "masked_nonfinite",
    "active",  # N = ||m||_0, the active-weight count
    "has_grad",  # 1 if the parameter had a gradient at this step (else all zeros)
)
INT_STAT_FIELDS = frozenset({"nonfinite", "masked_nonfinite", "active", "has_grad"})

MASK_SOURCE_BYTES = 16  # the mask_source column's width: a plugin's own source name must fit

PARAM_COLUMNS: dict[str, np.dtype[np.generic]] = {
    "name": np.dtype("S256"),
    "shape": np.dtype("S64"),
    "numel": np.dtype("i8"),
    "kind": np.dtype("S16"),
    "module_type": np.dtype("S64"),
    "stream": np.dtype("i2"),
    "mask_source": np.dtype(f"S{MASK_SOURCE_BYTES}"),
}
STREAM_COLUMNS: dict[str, np.dtype[np.generic]] = {"optimizer": np.dtype("S64")}
# A stream's own attributes, one JSON object per stream. Optional: files written before it existed
# lack the column, and a stream without attributes is an optimizer's minibatch gradient.
STREAM_ATTRS = "attrs"
STREAM_ATTRS_DTYPE = np.dtype("S1024")
# How a stream's gradient was taken (its "protocol" attribute; docs/run-file.md, "Streams").
PROTOCOL = "protocol"
MINIBATCH = "minibatch"  # the gradient an optimizer step consumed: every optimizer's stream
PROBE_BATCH = "probe-batch"  # a fixed held-out batch's gradient, taken for measurement only
STEP_COLUMNS: dict[str, np.dtype[np.generic]] = {
    "stream": np.dtype("i2"),
    "step": np.dtype("i8"),
    "time": np.dtype("f8"),
    "skipped": np.dtype("u1"),
}
# gfprobe's own cost, next to each recorded step (docs/run-file.md, "Observation cost"). Optional:
# files written before it existed lack the columns, and merged or copied rows may hold NaN.
# hook_time: seconds the training thread spent inside gfprobe since the stream's previous row was
# taken (the hooks of the steps in between included); writer_time: the writer thread's CPU seconds
# since it stored the previous block of rows, spread evenly over this block's rows.
COST_COLUMNS: dict[str, np.dtype[np.generic]] = {
    "hook_time": np.dtype("f4"),
    "writer_time": np.dtype("f4"),
}
METRIC_COLUMNS: dict[str, np.dtype[np.generic]] = {
    "name_id": np.dtype("i4"),
    "step": np.dtype("i8"),
    "time": np.dtype("f8"),
    "value": np.dtype("f8"),
}
METRIC_NAME_DTYPE = np.dtype("S128")

# A parameter's kind (the "kind" column). Every measure and rule looks at the weights alone.
WEIGHT, BIAS, NORM, OTHER = "weight", "bias", "norm", "other"
PARAM_KINDS = (WEIGHT, BIAS, NORM, OTHER)
# How a parameter's mask was found (the "mask_source" column; docs/recording.md, "Masks").
MASK_NONE, MASK_PRUNE, MASK_PARAMETRIZE, MASK_EXPLICIT, MASK_ZEROS = (
    "none", "prune", "parametrize", "explicit", "zeros")
MASK_SOURCES = (MASK_NONE, MASK_PRUNE, MASK_PARAMETRIZE, MASK_EXPLICIT, MASK_ZEROS)  # and plugins' own
# torch applies these masks inside the forward pass: masked weights get no gradient by construction.
MASKS_IN_FORWARD = (MASK_PRUNE, MASK_PARAMETRIZE)
# Under these the parameter is the weight itself: the raw gradient of masked weights is recorded.
MASKS_RAW_OBSERVABLE = (MASK_EXPLICIT, MASK_ZEROS)

# Row-growing tables: "records" (the /steps columns and the /stats fields, one row per recorded
# step) and "metrics". While a run goes on, their compressed datasets only receive whole chunks
# of ROW_CHUNK rows; the rows after the last whole chunk sit in the same paths under the
# uncompressed /tail group (see table.py for why), whose row-index columns RECORDS_TAIL_ROW and
# METRICS_TAIL_ROW give each slot's absolute row (-1: unused). A cleanly closed file's tail slots
# are all unused.
ROW_CHUNK = 256
COL_CHUNK = 32
TAIL_ROW_CHUNK = 16  # tail chunks are allocated only as far as rows reach
COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
TAIL_GROUP = "tail"
RECORDS_TAIL_ROW = "steps/row"
METRICS_TAIL_ROW = "metrics/row"


def stat_dtype(field: str) -> np.dtype[np.generic]:
    return np.dtype("i8") if field in INT_STAT_FIELDS else np.dtype("f8")


def stat_fill(field: str) -> float | int:
    """Fill for cells of another optimizer's parameters: never mistaken for a real value."""
    return -1 if field in INT_STAT_FIELDS else float("nan")
