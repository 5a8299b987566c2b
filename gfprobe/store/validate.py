"""The check a run file passes when it is opened: every group, dataset and attribute the
readers use exists, has the right kind, rank and type, and sizes that agree. After it, a
reader never meets a shape or type it does not expect, so damage gets one line naming it.

A file whose writer is still running (status ``running``, also what a killed writer leaves) is
in flux: the writer grows one dataset after another, so a reader may see a column, parameter
or statistic before its neighbours. Such a file is held to its consistent prefix (the readers
take the shortest extent); a finished file must agree exactly.

A run file holds all its data itself, so the check never follows a link out of it: every group
and dataset a reader uses must be reached through hard links and store its data in the file,
and no dataset may claim more data than the file's size can hold (a tiny file can declare
terabytes of rows, which read as fill values until memory runs out).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import h5py
import numpy as np

from gfprobe.store import schema

GROUPS = ("params", "streams", "steps", "stats", "metrics", "attrs")
# The dtype kinds a column may have, by the kind of its schema dtype: any integer (or HDF5 bool)
# reads as an integer column, any real number as a float one; strings must be fixed bytes.
_KINDS = {"S": "S", "i": "biu", "u": "biu", "f": "biuf"}
# JSON attribute text nested deeper than this stays text: everything after the reader recurses.
_JSON_DEPTH = 64
_LIVE = "running"
# Where a dataset may keep its data: in the file. External storage reads other files and a
# virtual dataset maps them (a FIFO among them blocks the reader for ever; any other file leaks).
_OWN_LAYOUTS = frozenset({h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED})
_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link to another file"}
# How many times its file's size one dataset may claim. Deflate (the writer's only compression)
# inflates data at most 1032-fold and the tail is not compressed; comparing each dataset with the
# whole file leaves room for the cells the writer never writes, which read as fill values (tail
# slots not reached yet, the cells a later optimizer's columns add to earlier rows). Beyond it,
# the extent was set by hand, not by writing rows.
_MAX_EXPANSION = 1032
# The largest chunk a dataset may have. Reading any cell of a compressed chunk inflates all of it,
# so a 4 GiB chunk (HDF5's limit) of fill values, 4 MB compressed, costs 4 GiB of memory per read.
# gfprobe's chunks are at most 64 KiB (ROW_CHUNK rows of S256 names).
_MAX_CHUNK_BYTES = 16 * 2**20


class Problem(Exception):
    """What is wrong with a file, in words; the caller adds the file's name."""


@dataclass(frozen=True)
class Layout:
    """What the check learnt, so that no reader reads it again."""

    metadata: dict[str, Any]  # root attributes, as plain Python data
    attrs: dict[str, Any]  # the user's run attributes (/attrs)
    owners: np.ndarray  # the stream of each parameter column a reader may use


def validate(f: h5py.File) -> Layout:
    """Check ``f`` against the schema. Raises :class:`Problem`; h5py's own errors pass through."""
    if _format(f) != schema.FORMAT_NAME:  # before anything else: another program's file is not damaged
        raise Problem(f"an HDF5 file, but not a gfprobe run file (no 'format' attribute '{schema.FORMAT_NAME}')")
    metadata = read_attrs(f.attrs, "")
    _check_header(metadata)
    groups = {name: _group(f, name) for name in GROUPS}
    live = metadata.get("status") == _LIVE
    n_params = _agree([_column(groups["params"], name, dtype) for name, dtype in schema.PARAM_COLUMNS.items()],
                      "the parameter columns", live)
    n_streams = _column(groups["streams"], "optimizer", schema.STREAM_COLUMNS["optimizer"]).shape[0]
    _stream_attrs(groups["streams"], n_streams, live)
    widths = _records(groups, live)
    _agree([_column(groups["metrics"], name, dtype) for name, dtype in schema.METRIC_COLUMNS.items()],
           "the metric columns", live)
    _column(groups["metrics"], "names", schema.METRIC_NAME_DTYPE)
    tail = _get(f, schema.TAIL_GROUP, f"/{schema.TAIL_GROUP}")
    if tail is not None:
        widths += _tail(tail, live)
    visible = min([n_params, *widths])
    if not live and visible < n_params:
        raise Problem(f"damaged run file: the statistics have {visible} columns for {n_params} parameters")
    owners = np.asarray(groups["params"]["stream"][:visible])
    if not live and owners.size and not ((owners >= 0) & (owners < n_streams)).all():
        raise Problem(f"damaged run file: params/stream names optimizer streams outside 0..{n_streams - 1}")
    return Layout(metadata, read_attrs(groups["attrs"].attrs, "attrs/"), owners)


def _format(f: h5py.File) -> Any:
    try:
        return plain_attr(f.attrs["format"])
    except (KeyError, OSError, TypeError, ValueError, RuntimeError):
        return None


def _check_header(metadata: Mapping[str, Any]) -> None:
    version = metadata.get("schema_version")
    if not _is_int(version):
        raise Problem(f"damaged run file: its schema_version is {_show(version)}, not an integer")
    if version > schema.SCHEMA_VERSION:
        raise Problem(f"written with run-file schema {version}, newer than this gfprobe reads "
                      f"({schema.SCHEMA_VERSION}); upgrade gfprobe")
    if version < 1:
        raise Problem(f"unknown run-file schema {version}")
    if not isinstance(metadata.get("status", ""), str):
        raise Problem(f"damaged run file: its status is {_show(metadata['status'])}, not text")
    for key in ("rank", "world_size", "sharded"):
        value = metadata.get(key, 0)
        if not (_is_int(value) or isinstance(value, bool)) or value < 0:
            raise Problem(f"damaged run file: its {key} is {_show(value)}, not a whole number")
    if metadata.get("sharded") and not 0 <= metadata.get("rank", -1) < metadata.get("world_size", 0):
        raise Problem(f"damaged run file: a rank file with rank {_show(metadata.get('rank'))} of world size "
                      f"{_show(metadata.get('world_size'))}")


def _stream_attrs(streams: h5py.Group, n_streams: int, live: bool) -> None:
    """The streams' own attributes: optional (older files have none), else one row per stream
    (a live file's may be seen a row ahead of or behind its names)."""
    if _get(streams, schema.STREAM_ATTRS, f"streams/{schema.STREAM_ATTRS}") is None:
        return
    rows = _column(streams, schema.STREAM_ATTRS, schema.STREAM_ATTRS_DTYPE).shape[0]
    if rows != n_streams and not live:
        raise Problem(f"damaged run file: streams/{schema.STREAM_ATTRS} has {rows} rows for {n_streams} streams")


def _records(groups: Mapping[str, h5py.Group], live: bool) -> list[int]:
    """Check the row table of recorded steps; return the statistics' widths (cells per row)."""
    steps = [_column(groups["steps"], name, dtype) for name, dtype in schema.STEP_COLUMNS.items()]
    steps += [_column(groups["steps"], path.removeprefix("steps/"), dtype) for path, dtype in _cost_columns()
              if _get(groups["steps"], path.removeprefix("steps/"), path) is not None]
    stats = [_column(groups["stats"], field, schema.stat_dtype(field), ndim=2) for field in schema.STAT_FIELDS]
    _agree(steps + stats, "the step columns and statistics", live)
    return [ds.shape[1] for ds in stats]


def _tail(tail: Any, live: bool) -> list[int]:
    """Check the tail of the row tables (store/table.py); return its statistics' widths.

    A finished file keeps every row in the compressed datasets, so its tail slots must be unused.
    """
    if not isinstance(tail, h5py.Group):
        raise Problem(f"damaged run file: /{schema.TAIL_GROUP} is not a group")
    widths = []
    records = _record_columns() + [(path, dtype, 1) for path, dtype in _cost_columns()
                                   if _get(tail, path, f"{schema.TAIL_GROUP}/{path}") is not None]
    for row_path, columns in ((schema.RECORDS_TAIL_ROW, records), (schema.METRICS_TAIL_ROW, _metric_columns())):
        row = _column(tail, row_path, np.dtype("i8"), where=f"{schema.TAIL_GROUP}/")
        datasets = [_column(tail, path, dtype, ndim, where=f"{schema.TAIL_GROUP}/") for path, dtype, ndim in columns]
        _fixed_slots([row, *datasets])
        widths += [ds.shape[1] for ds in datasets if ds.ndim == 2]
        if not live and (np.asarray(row[:]) != -1).any():
            raise Problem(f"damaged run file: it is finished, but {schema.TAIL_GROUP}/{row_path} marks rows "
                          "as still in the tail")
    return widths


def _record_columns() -> list[tuple[str, np.dtype[np.generic], int]]:
    return ([(f"steps/{name}", dtype, 1) for name, dtype in schema.STEP_COLUMNS.items()]
            + [(f"stats/{field}", schema.stat_dtype(field), 2) for field in schema.STAT_FIELDS])


def _cost_columns() -> list[tuple[str, np.dtype[np.generic]]]:
    """The optional step columns of gfprobe's own cost (files before them lack them)."""
    return [(f"steps/{name}", dtype) for name, dtype in schema.COST_COLUMNS.items()]


def _metric_columns() -> list[tuple[str, np.dtype[np.generic], int]]:
    return [(f"metrics/{name}", dtype, 1) for name, dtype in schema.METRIC_COLUMNS.items()]


def _fixed_slots(datasets: list[h5py.Dataset]) -> None:
    """The tail's datasets never change length (table.py makes them ``ROW_CHUNK`` slots long)."""
    for ds in datasets:
        if ds.shape[0] != schema.ROW_CHUNK:
            raise Problem(f"damaged run file: {ds.name.lstrip('/')} has {ds.shape[0]} rows, not the tail's "
                          f"{schema.ROW_CHUNK}")


def _get(group: h5py.Group, name: str, path: str) -> Any:
    """The object at ``name`` (parts joined by '/') below ``group``, reached through hard links
    only; None when there is none (a missing link, or a part that is not a group). ``path`` is how
    messages show it, ending in ``name``.

    Each link is looked at before it is followed: following an external link opens another file,
    and a soft link may lead through one. ``name in group`` and h5py's ``get(..., getlink=True)``
    would follow the links of a multi-part name's leading parts, so the name is walked part by part.
    """
    found: Any = group
    above, parts = path.removesuffix(name), name.split("/")
    for depth, part in enumerate(parts, start=1):
        if not isinstance(found, h5py.Group):
            return None
        found = _follow(found, part, above + "/".join(parts[:depth]))
        if found is None:
            return None
    return found


def _follow(group: h5py.Group, part: str, path: str) -> Any:
    """The object the hard link ``part`` of ``group`` (shown as ``path``) leads to; None when there
    is no link ``part``."""
    link = part.encode()
    try:
        if not group.id.links.exists(link):  # looks at the link only, whatever it leads to
            return None
        kind = group.id.links.get_info(link).type
        if kind == h5py.h5l.TYPE_HARD:
            return group[part]
    except (KeyError, OSError, RuntimeError, ValueError) as exc:  # h5py says KeyError for a bad header too
        raise Problem(f"damaged run file: {path} cannot be opened ({short_error(exc)})") from exc
    what = _LINK_KINDS.get(kind, "a user-defined link")
    raise Problem(f"damaged run file: {path} is {what}, not an object in the file; gfprobe reads only "
                  "data the run file holds itself")


def _group(f: h5py.File, name: str) -> h5py.Group:
    found = _get(f, name, f"/{name}")
    if not isinstance(found, h5py.Group):
        raise Problem(f"damaged run file: {'no' if found is None else 'not a'} group /{name}")
    return found


def _column(group: h5py.Group, name: str, dtype: np.dtype[np.generic], ndim: int = 1,
            where: str | None = None) -> h5py.Dataset:
    """The dataset ``group/name``, checked to have ``ndim`` dimensions and a dtype like ``dtype``."""
    path = f"{where if where is not None else group.name.lstrip('/') + '/'}{name}"
    found = _get(group, name, path)
    if not isinstance(found, h5py.Dataset):
        raise Problem(f"damaged run file: {'no' if found is None else 'not a'} dataset {path}")
    _check_storage(found, path)  # first: even the shape of a virtual dataset may open other files
    if found.ndim != ndim:
        raise Problem(f"damaged run file: {path} has {found.ndim} dimensions, not {ndim}")
    if found.dtype.kind not in _KINDS[dtype.kind] or found.dtype.names is not None:
        wanted = "text" if dtype.kind == "S" else "integers" if dtype.kind in "iu" else "numbers"
        raise Problem(f"damaged run file: {path} holds {found.dtype}, not {wanted}")
    _check_extent(found, path)
    return found


def _check_storage(ds: h5py.Dataset, path: str) -> None:
    """Refuse a dataset whose data lies outside the file, from its creation properties alone."""
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise Problem(f"damaged run file: {path} is a virtual dataset, whose data lies in other files; "
                      "gfprobe reads only data the run file holds itself")
    if dcpl.get_external_count():
        raise Problem(f"damaged run file: {path} keeps its data in another file (external storage); "
                      "gfprobe reads only data the run file holds itself")
    if layout not in _OWN_LAYOUTS:
        raise Problem(f"damaged run file: {path} has an unknown storage layout ({layout})")


def _check_extent(ds: h5py.Dataset, path: str) -> None:
    """Refuse a dataset that claims more data than its file can hold, or chunks far larger than
    gfprobe writes: reading it would allocate memory for every claimed value (fill values
    included) and run out of it, or grind."""
    claimed = math.prod(ds.shape) * ds.dtype.itemsize
    size = ds.file.id.get_filesize()
    if claimed > _MAX_EXPANSION * size:
        rows = f"{ds.shape[0]} rows" + (f" of {ds.shape[1]} cells" if ds.ndim == 2 else "")
        raise Problem(f"damaged run file: {path} has {rows} ({_bytes(claimed)}), more than a file of "
                      f"{_bytes(size)} can hold")
    chunk = math.prod(ds.chunks or ()) * ds.dtype.itemsize
    if ds.chunks is not None and chunk > _MAX_CHUNK_BYTES:
        raise Problem(f"damaged run file: {path} is stored in chunks of {_bytes(chunk)}, more than the "
                      f"{_bytes(_MAX_CHUNK_BYTES)} a run file's chunks may have")


def _bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit it reaches, to one decimal."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = min(max(n.bit_length() - 1, 0) // 10, len(units) - 1)
    return f"{n} bytes" if power == 0 else f"{n / 1024**power:.1f} {units[power]}"


def _agree(datasets: list[h5py.Dataset], what: str, live: bool) -> int:
    """The rows every dataset has. A finished file's must be equal; a live file's may lag."""
    rows = [int(ds.shape[0]) for ds in datasets]
    if not live and len(set(rows)) > 1:
        shortest, longest = datasets[rows.index(min(rows))], datasets[rows.index(max(rows))]
        raise Problem(f"damaged run file: {what} differ in length ({shortest.name.lstrip('/')} has {min(rows)} "
                      f"rows, {longest.name.lstrip('/')} {max(rows)})")
    return min(rows)


def read_attrs(attrs: h5py.AttributeManager, where: str) -> dict[str, Any]:
    """Every attribute as plain Python data (str, int, float, bool, None, lists, dicts)."""
    out = {}
    for name in attrs:
        try:
            value = attrs[name]
        except (OSError, TypeError, ValueError, RuntimeError) as exc:
            raise Problem(f"damaged run file: attribute {where}{_clean(name)} cannot be read "
                          f"({short_error(exc)})") from exc
        out[_clean(name)] = plain_attr(value)
    return out


def plain_attr(value: Any) -> Any:
    """An attribute's value as plain data: text decoded, JSON text parsed (within reason)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    value = _decoded(value, 0)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return _decoded(json.loads(value), 0)
        except (ValueError, RecursionError, _TooDeep):
            return value
    return value


class _TooDeep(Exception):
    pass


def _decoded(value: Any, depth: int) -> Any:
    """``value`` with bytes decoded and text made printable, to ``_JSON_DEPTH`` levels."""
    if depth > _JSON_DEPTH:
        raise _TooDeep
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, list | tuple):
        return [_decoded(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_clean(str(k)): _decoded(v, depth + 1) for k, v in value.items()}
    return value


def _clean(text: str) -> str:
    """Text that every stream can print: lone surrogates (from bytes that were not UTF-8, or
    JSON escapes) cannot be encoded, so they become replacement marks."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message (h5py's run to several), or its type."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError quotes its str
    return text.split("\n")[0].strip() or type(exc).__name__
