"""The study index: each run's report summary, one file per folder of run files, so that a
report over a large study reads only the runs that are new or changed (docs/reports.md,
"Large studies: the index").

**The file** is ``<folder>/.gfprobe-index.jsonl``, UTF-8 JSON lines, beside the ``*.h5`` files it
indexes. Its first line is a header, ``{"format", "version", "gfprobe", "fields", "options",
"entries", "sha256"}``, the last the SHA-256 of every byte after the header; each further line
is one entry, ``[name, [size, mtime_ns, ctime_ns, inode], options id, {field: value}]``: the run
file's name in the folder, the file as it was when it was summarised, the summary's options (the
header maps each id to them) and the :class:`RunSummary` fields (``index_codec.py``).

**An entry is used** only for the same name, the same file (size, modification and change
times to the nanosecond, inode: a file rewritten, replaced or copied over is another file) and
the same options (stream, summary, points, and the measures with the plugins that add them).
Anything else is read from the file, and its entry refreshed. An index that is damaged, foreign,
written by another gfprobe version or for other RunSummary fields, or whose checksum fails, is
ignored and rewritten. A run still being written (status ``running``) is never indexed.

**Writing** goes to a temporary file in the same folder, then ``os.replace``: a concurrent report,
or a crash, sees the old index or the new one, never a torn one. Where the folder cannot be
written (read-only, full disk), there is no index, and a report says so in one line. Reports
write an index where one exists already or where they read at least ``INDEX_FROM`` runs of a
folder; smaller folders are read whole (it is fast) and get no file.

**API** (the study runner calls it as runs finish)::

    from gfprobe.analysis.index import StudyIndex, summarise_for_index

    entry = summarise_for_index(path)   # in the worker, right after the run's file is closed:
                                        # an IndexEntry (small, picklable) or None
    index = StudyIndex.open(folder)     # in the driver, once: the folder's index, or an empty one
    index.put(entry)                    # as each result arrives (None and stale entries are skipped)
    index.save()                        # now and then, and at the end: None, or why it was not written
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfprobe.analysis import index_codec
from gfprobe.analysis.measure_set import plugin_measures
from gfprobe.analysis.report import RunSummary, summarise_path
from gfprobe.errors import RunFileError
from gfprobe.measures import MEASURES
from gfprobe.store.reader import Unreadable
from gfprobe.summary import DEFAULT_POINTS

log = logging.getLogger("gfprobe")

INDEX_NAME = ".gfprobe-index.jsonl"
FORMAT = "gfprobe study index"
# Bump when what a summary holds changes meaning with the same fields (a measure computed anew).
VERSION = 1
INDEX_FROM = 64  # runs of one folder in a report: from here on, the report writes an index there
OPTION_SETS = 4  # summaries of one file kept under different options (--summary, --stream)
RUNNING = "running"  # the status of a run file still being written (or left by a killed writer)
# Bytes an index may take before it is not even read: generous for real entries (about 1 KB).
MAX_BYTES_PER_RUN = 64 * 1024
MIN_MAX_BYTES = 16 * 2**20
# A JSON escape of half a surrogate pair: gfprobe writes none (it writes text as UTF-8), and the
# string it would make cannot be printed. See _surrogate_escape for an escaped backslash before it.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")

FileKey = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
Reader = Callable[[list[Path], Callable[[int], None] | None], tuple[list[RunSummary], list[Unreadable]]]


@dataclass(frozen=True)
class IndexEntry:
    """One run's summary, ready for its folder's index."""

    name: str  # the run file's name in its folder
    file: FileKey  # the file as it was before it was read
    options: str  # options_key() of the summary
    summary: RunSummary  # series compressed (gfprobe.analysis.trend), no per-layer summaries


@dataclass(frozen=True)
class _Stored:
    file: FileKey
    options: str  # options id
    summary: Any  # the summary's fields as JSON values, decoded when used
    line: str  # the entry as the file holds it, written back unchanged


def options_key(stream: int | str = 0, how: str = "points", points: int = DEFAULT_POINTS) -> str:
    """The options a summary depends on, as canonical JSON: plugin measures are named with the
    plugin and its version, whose code computes them."""
    from gfprobe.plugin.manager import installed  # only where plugins add measures

    extra = plugin_measures()
    versions = {info.name: info.version for info in installed()} if extra else {}
    measures = [*MEASURES, *([name, plugin, versions.get(plugin, "")] for name, (plugin, _) in extra.items())]
    return json.dumps({"stream": stream, "how": how, "points": points, "measures": measures}, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _options_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def file_key(path: Path) -> FileKey | None:
    """What tells one file from another at ``path``; None for no regular file there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def summarise_for_index(path: str | Path, stream: int | str = 0, how: str = "points",
                        points: int = DEFAULT_POINTS) -> IndexEntry | None:
    """The index entry of the run file ``path``, or None where there is nothing to index: the
    file cannot be read (the report will say why) or is still being written."""
    path = Path(path)
    key = file_key(path)  # before reading: a change while it is read makes the entry stale
    if key is None:
        return None
    try:
        summary = summarise_path(path, stream, how, points)
    except RunFileError:
        return None
    if summary.status == RUNNING:
        return None
    return IndexEntry(path.name, key, options_key(stream, how, points), summary)


class StudyIndex:
    """The index of one folder of run files. :meth:`open` it, :meth:`get` and :meth:`put`
    summaries, :meth:`save` it."""

    def __init__(self, folder: Path, entries: dict[str, dict[str, _Stored]], options: dict[str, str],
                 exists: bool) -> None:
        self.folder = folder
        self.path = folder / INDEX_NAME
        self.exists = exists  # a valid index was read: keep it up to date
        self._entries = entries  # file name -> options id -> entry
        self._options = options  # options id -> options_key()
        self._changed = False

    @classmethod
    def open(cls, folder: str | Path, max_bytes: int | None = None) -> StudyIndex:
        """The folder's index; an empty one where there is none, or none usable (``max_bytes``:
        a larger file is not read)."""
        folder = Path(folder)
        loaded = _load(folder / INDEX_NAME, max_bytes)
        if loaded is None:
            return cls(folder, {}, {}, exists=False)
        return cls(folder, *loaded, exists=True)

    def __len__(self) -> int:
        return sum(len(by_options) for by_options in self._entries.values())

    def get(self, path: Path, options: str, key: FileKey | None) -> RunSummary | None:
        """The summary of the run file ``path`` (in this folder) under ``options``, if the index
        holds one for the file as ``key`` describes it now."""
        stored = self._entries.get(path.name, {}).get(_options_id(options))
        if stored is None or key is None or stored.file != key:
            return None
        try:
            return index_codec.decode(stored.summary, str(path))
        except index_codec.Invalid:
            return None

    def put(self, entry: IndexEntry | None) -> bool:
        """Add or replace an entry; False where it is not taken: None, a running file, a file
        that changed (or moved) since it was summarised, or a summary the index cannot hold."""
        if entry is None or entry.summary.status == RUNNING or file_key(self.folder / entry.name) != entry.file:
            return False
        try:
            stored = index_codec.encode(entry.summary)
            line = json.dumps([entry.name, list(entry.file), _options_id(entry.options), stored], ensure_ascii=False)
        except (index_codec.Unsupported, TypeError, ValueError):
            return False
        options_id = _options_id(entry.options)
        self._options[options_id] = entry.options
        by_options = self._entries.setdefault(entry.name, {})
        by_options.pop(options_id, None)  # the newest last: the oldest go first past OPTION_SETS
        by_options[options_id] = _Stored(entry.file, options_id, stored, line)
        while len(by_options) > OPTION_SETS:
            del by_options[next(iter(by_options))]
        self._changed = True
        return True

    def save(self) -> str | None:
        """Write the index if it changed; None when done (or nothing to do), else why not."""
        if not self._changed:
            return None
        with contextlib.suppress(OSError):  # entries of files deleted since go; unknown, all stay
            present = set(os.listdir(self.folder))
            self._entries = {name: e for name, e in self._entries.items() if name in present}
        kept = [stored for by_options in self._entries.values() for stored in by_options.values()]
        body = "".join(stored.line + "\n" for stored in kept).encode("utf-8")
        used = {stored.options for stored in kept}
        header = {"format": FORMAT, "version": VERSION, "gfprobe": _gfprobe_version(),
                  "fields": index_codec.stored_fields(),
                  "options": {i: key for i, key in self._options.items() if i in used},
                  "entries": len(kept), "sha256": hashlib.sha256(body).hexdigest()}
        problem = _write_atomically(self.path, json.dumps(header).encode() + b"\n" + body)
        if problem is None:
            self._changed, self.exists = False, True
        return problem


def _gfprobe_version() -> str:
    from gfprobe import __version__

    return str(__version__)


def _load(path: Path, max_bytes: int | None) -> tuple[dict[str, dict[str, _Stored]], dict[str, str]] | None:
    """(entries, options) of a valid index file at ``path``; None for none, or one not to use."""
    data = _read_regular(path, max_bytes)
    if data is None:
        return None
    try:
        return _parse(data)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, MemoryError):
        return None  # damaged or foreign: rebuilt from the run files


def _read_regular(path: Path, max_bytes: int | None) -> bytes | None:
    """The file's bytes; None if it is missing, not a regular file (a pipe would block), or
    larger than ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (max_bytes is not None and st.st_size > max_bytes):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse(data: bytes) -> tuple[dict[str, dict[str, _Stored]], dict[str, str]] | None:
    head, _, body = data.partition(b"\n")
    header = json.loads(head)
    if not (isinstance(header, dict) and header.get("format") == FORMAT and header.get("version") == VERSION
            and header.get("gfprobe") == _gfprobe_version() and header.get("fields") == index_codec.stored_fields()
            and header.get("sha256") == hashlib.sha256(body).hexdigest() and not _surrogate_escape(body)):
        return None
    options = header["options"]
    if not isinstance(options, dict) or not all(isinstance(v, str) and _options_id(v) == k for k, v in options.items()):
        return None
    lines = body.decode("utf-8").splitlines()
    parsed = json.loads("[" + ",".join(lines) + "]")  # one parse: a third faster than one per line
    if len(parsed) != len(lines):
        return None
    entries: dict[str, dict[str, _Stored]] = {}
    for line, (name, file, options_id, summary) in zip(lines, parsed, strict=True):
        if not (isinstance(name, str) and isinstance(options_id, str) and options_id in options
                and isinstance(file, list) and len(file) == 4 and all(type(v) is int for v in file)):
            return None
        entries.setdefault(name, {})[options_id] = _Stored((file[0], file[1], file[2], file[3]), options_id, summary,
                                                           line)
    return entries, dict(options)


def _surrogate_escape(body: bytes) -> bool:
    """Whether JSON text holds an escaped half surrogate (``\\ud800``; ``\\\\ud800`` is text)."""
    for match in _SURROGATE.finditer(body):
        first = match.start()
        while first and body[first - 1] == ord("\\"):
            first -= 1
        if (match.start() - first) % 2 == 0:  # its backslash is not itself escaped
            return True
    return False


def _write_atomically(path: Path, data: bytes) -> str | None:
    """Write ``path`` whole or not at all; None when written, else why not."""
    # Created like any new file (the umask applies), under a name no other writer picks.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        return exc.strerror or type(exc).__name__
    return None


def read_indexed(paths: Sequence[str | Path], options: str, read: Reader,
                 on_file: Callable[[int], None] | None = None) -> tuple[list[RunSummary], list[Unreadable]]:
    """Summaries of ``paths`` (in their order) taken from their folders' indexes where valid, the
    others from ``read`` (which reads run files); the indexes are then brought up to date."""
    files = [Path(p) for p in paths]
    members: dict[Path, list[int]] = {}
    for i, path in enumerate(files):
        members.setdefault(path.parent, []).append(i)
    indexes = {folder: StudyIndex.open(folder, MIN_MAX_BYTES + MAX_BYTES_PER_RUN * len(runs))
               for folder, runs in members.items()}
    keys = [file_key(path) for path in files]  # before reading: see summarise_for_index
    found = [indexes[path.parent].get(path, options, key) for path, key in zip(files, keys, strict=True)]
    missing = [i for i, summary in enumerate(found) if summary is None]
    hits = len(files) - len(missing)
    if on_file is not None and hits:
        on_file(hits)
    progress = None if on_file is None else (lambda n: on_file(hits + n))
    summaries, unreadable = read([files[i] for i in missing], progress)
    read_now = {summary.path: summary for summary in summaries}
    for i in missing:
        summary, key = read_now.get(str(files[i])), keys[i]
        found[i] = summary
        if summary is not None and key is not None:
            indexes[files[i].parent].put(IndexEntry(files[i].name, key, options, summary))
    _save(indexes, members)
    return [summary for summary in found if summary is not None], unreadable


def _save(indexes: dict[Path, StudyIndex], members: dict[Path, list[int]]) -> None:
    """Write the indexes worth keeping; one line for the first that cannot be written."""
    problems = [(folder, problem) for folder, index in indexes.items()
                if (index.exists or len(members[folder]) >= INDEX_FROM) and (problem := index.save()) is not None]
    if problems:
        folder, problem = problems[0]
        more = f" (and {len(problems) - 1} more folders)" if len(problems) > 1 else ""
        log.warning("gfprobe: note: no study index written in %r%s (%s); the next report reads these runs again",
                    str(folder), more, problem)

