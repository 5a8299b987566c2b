"""Running a command under recording (``gfprobe record``).

The child gets gfprobe's bootstrap folder first on PYTHONPATH; its ``sitecustomize`` arms
recording in every Python process of the command (see ``bootstrap/autoattach.py``). This
parent starts the child, relays signals, waits, and reports. It touches run files only after
the command has ended: to merge the ranks of a sharded run and to stamp the command's exit code.

The command never outlives this process: the child gets SIGTERM from the kernel if we die,
even by SIGKILL (Linux's parent-death signal; see ``bootstrap/lifeline.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gfprobe.bootstrap import lifeline
from gfprobe.errors import ConfigError, GfprobeError
from gfprobe.outpath import check_writable
from gfprobe.plugin.found import found
from gfprobe.store.merge import merge, shard_files
from gfprobe.store.publish import is_being_written, remove_stale_temps
from gfprobe.store.reader import open_run
from gfprobe.store.writer import stamp_outcome

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "bootstrap"
DEFAULT_DIR = Path("gfprobe-runs")
STAMP_LOCK_WAIT_SECONDS = 10.0  # how long the exit code's stamp waits for readers to close the file
STAMP_LOCK_POLL_SECONDS = 0.1


class CommandNotFound(GfprobeError):
    """The command to record does not exist or is not executable."""


@dataclass(frozen=True)
class RecordOptions:
    out: Path | None = None
    force: bool = False
    every: int = 1
    masks: str = "auto"
    metrics: Mapping[str, str] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    all_ranks: bool = False


@dataclass(frozen=True)
class RecordResult:
    exit_code: int
    files: list[Path]
    notes: list[str] = field(default_factory=list)  # what became of a sharded run's rank files
    # Why processes that trained recorded nothing; None when they had nowhere to say (no ledger).
    failures: list[str] | None = field(default_factory=list)


def parse_metric(spec: str) -> tuple[str, str]:
    """``NAME=REGEX`` with at least one capture group, validated before anything runs."""
    name, sep, pattern = spec.partition("=")
    if not sep or not name.isidentifier():
        raise ConfigError(f"--metric {spec!r}: expected NAME=REGEX, e.g. --metric 'test_acc=acc=([0-9.]+)'")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--metric {name}: invalid regular expression ({exc})") from exc
    if compiled.groups < 1:
        raise ConfigError(f"--metric {name}: the regex needs a capture group around the number, e.g. 'acc=([0-9.]+)'")
    return name, pattern


def parse_attr(spec: str) -> tuple[str, Any]:
    """``KEY=VALUE``; the value is read as JSON when it parses (numbers, true/false), else text."""
    key, sep, raw = spec.partition("=")
    if not sep or not key:
        raise ConfigError(f"--attr {spec!r}: expected KEY=VALUE, e.g. --attr density=0.3")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def default_out(command: Sequence[str], now: float | None = None) -> Path:
    """``gfprobe-runs/<date>-<time>-<script>.h5``: predictable, sortable, never colliding in practice."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    label = _label(command)
    return DEFAULT_DIR / f"{stamp}-{label}.h5"


def _label(command: Sequence[str]) -> str:
    args = list(command)
    if "-m" in args[:-1]:
        return re.sub(r"[^\w.-]", "_", args[args.index("-m") + 1])
    scripts = [a for a in args if a.endswith(".py")]
    return Path(scripts[0]).stem if scripts else re.sub(r"[^\w.-]", "_", Path(args[0]).name)


def resolve_command(command: Sequence[str]) -> list[str]:
    if not command:
        raise ConfigError("no command given; usage: gfprobe record [OPTIONS] -- COMMAND [ARGS]...")
    program = command[0]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise CommandNotFound(f"command not found or not executable: {program}")
        return list(command)
    found = shutil.which(program)
    if found is None:
        raise CommandNotFound(f"command not found: {program} (not on PATH)")
    return list(command)


def prepare(command: Sequence[str], options: RecordOptions) -> tuple[list[str], dict[str, str], Path]:
    """Validate everything and build the child's argv and environment; runs nothing and,
    apart from replacing a finished file under ``--force``, changes nothing on disk."""
    argv = resolve_command(command)
    if options.every < 1:
        raise ConfigError(f"--every must be at least 1, got {options.every}")
    out = check_writable(options.out or default_out(argv), "--out")
    _make_room(out, options.force)
    config = {"out": str(out), "every": options.every, "masks": options.masks,
              "metrics": dict(options.metrics), "attrs": dict(options.attrs), "command": argv,
              "all_ranks": options.all_ranks,
              # Scanned here once, for every process of the command (see plugin/found.py).
              "plugins": [dataclasses.astuple(entry) for entry in found() if not entry.disabled()]}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env["GFPROBE_RECORD"] = json.dumps(config)
    if options.metrics:
        env.setdefault("PYTHONUNBUFFERED", "1")
    return argv, env, out


def _make_room(out: Path, force: bool) -> None:
    """Refuse to replace an existing run (unless ``force``), and never one being written."""
    existing = [p for p in (out, *shard_files(out)) if p.exists()]
    if not existing:
        return
    busy = [p for p in existing if is_being_written(p)]
    if busy:
        raise ConfigError(f"{busy[0]} is being written by a running recording; choose another --out "
                          "(--force never replaces a file being written)")
    if not force:
        raise ConfigError(f"{existing[0]} exists; choose another --out or pass --force to replace it")
    for path in existing:
        path.unlink()


def run(command: Sequence[str], options: RecordOptions) -> RecordResult:
    """Run ``command`` under recording and return its exit code and the run files it wrote."""
    argv, env, out = prepare(command, options)
    started = time.time()
    with _private_ledger() as ledger:
        if ledger is not None:
            env["GFPROBE_RECORD"] = json.dumps(dict(json.loads(env["GFPROBE_RECORD"]), ledger=str(ledger)))
        with _relay_signals() as relay:
            child = subprocess.Popen(argv, env=env, preexec_fn=lifeline.bind_to_parent(os.getpid()))
            relay.started(child)
            code = child.wait()
        failures, elsewhere = _read_ledger(ledger)
    exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, like a shell
    try:
        written, notes = _finish_run_files(out, started, exit_code, elsewhere)
    except Exception as exc:  # a file vanishing under us must not cost the command's exit code
        written, notes = [], [f"could not finish the run files of {out}: {exc}"]
    return RecordResult(exit_code, written, notes, failures)


def _finish_run_files(out: Path, started: float, exit_code: int,
                      elsewhere: Sequence[Path] = ()) -> tuple[list[Path], list[str]]:
    """Tidy up after the command: temporaries of dead processes, rank files, the exit code.
    ``elsewhere``: run files the processes said they wrote outside ``out`` (an adapter whose
    user chose the path)."""
    remove_stale_temps(out)
    files, notes = _consolidate_shards(out, started)
    written = files + _written_files(out, started)
    known = {p.resolve() for p in written}
    written += [p for p in dict.fromkeys(elsewhere) if p.resolve() not in known and _modified_since(p, started)]
    notes += _stamp_exit_code(written, exit_code)
    return written, notes


@contextlib.contextmanager
def _private_ledger() -> Iterator[Path | None]:
    """A file in a private folder where the command's processes say why they recorded nothing;
    None where no temporary folder can be made (a full or read-only /tmp): the command runs anyway."""
    try:
        folder = tempfile.TemporaryDirectory(prefix="gfprobe-", ignore_cleanup_errors=True)
    except OSError:
        folder = None  # yielded outside the handler: the command's errors are not chained to this one
    with folder or contextlib.nullcontext() as private:
        yield Path(private) / "ledger.jsonl" if private else None


def _read_ledger(ledger: Path | None) -> tuple[list[str] | None, list[Path]]:
    """What the command's processes reported (see ``bootstrap.ledger``): why they recorded
    nothing (None when they had nowhere to say), and run files they wrote outside ``--out``."""
    if ledger is None:
        return None, []
    try:
        lines = ledger.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return [], []
    failures, files = [], []
    for line in lines:
        try:
            entry = json.loads(line)
            if "file" in entry:
                files.append(Path(entry["file"]))
            else:
                failures.append(f"process {entry['pid']}: {entry['failure']}")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a process killed while writing it
    return failures, files


def _stamp_exit_code(paths: list[Path], exit_code: int) -> list[str]:
    """Write the command's exit code into its run files; a non-zero one makes 'complete' 'failed'.

    Only the launcher knows it: a process cannot see its own exit code from ``atexit``.
    """
    notes = []
    for path in paths:
        try:
            status = _status(path)
            if status == "running":
                continue  # its writer was killed: the file stays as it was left (readable to its last flush)
            _stamp_when_unlocked(path, "failed" if exit_code and status == "complete" else None, exit_code)
        except Exception as exc:  # the command's result matters more than this attribute
            notes.append(f"could not stamp the exit code into {path}: {exc}")
    return notes


def _stamp_when_unlocked(path: Path, status: str | None, exit_code: int) -> None:
    """Stamp, waiting a little while a reader holds the file: a plain read-only open (``gfprobe
    report`` on the run just as it finished) holds HDF5's file lock, which the stamp's write open
    needs, and a reader lets go within moments."""
    deadline = time.monotonic() + STAMP_LOCK_WAIT_SECONDS
    while True:
        try:
            return stamp_outcome(path, status, {"exit_code": exit_code})
        except OSError as exc:
            if "lock" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(STAMP_LOCK_POLL_SECONDS)


def _status(path: Path) -> str:
    with open_run(path, shards_ok=True) as run:
        return str(run.metadata.get("status", "unknown"))


def _consolidate_shards(out: Path, since: float) -> tuple[list[Path], list[str]]:
    """Merge the rank files of a sharded run into ``out``; other rank files are runs of their own.

    The rank files are removed once merged, unless some steps were not recorded by every rank
    (a rank died): then they are kept, since the merged file leaves those steps out.
    """
    rank_files = [p for p in shard_files(out) if _modified_since(p, since)]
    if not rank_files or not _is_shard(rank_files[0]):
        return rank_files, []
    try:
        result = merge(rank_files, out)
    except Exception as exc:  # a disk or file problem must not cost the command's exit code
        return [], [f"could not merge the rank files {', '.join(map(str, rank_files))}: {exc}; "
                    "they are kept (merge them later with 'gfprobe merge')"]
    dropped = sum(result.dropped)
    if dropped:
        return [], [f"merged {result.ranks} ranks into {out}, leaving out {dropped} steps not every rank "
                    f"recorded; the rank files are kept"]
    for path in rank_files:
        with contextlib.suppress(OSError):
            path.unlink()
    return [], [f"merged the statistics of {result.ranks} ranks' gradient shards into {out}"]


def _is_shard(path: Path) -> bool:
    try:
        with open_run(path, shards_ok=True) as run:
            return bool(run.metadata.get("sharded"))
    except GfprobeError:
        return False


def _written_files(out: Path, since: float) -> list[Path]:
    siblings = [p for p in out.parent.glob(f"{out.stem}.*{out.suffix}")
                if re.fullmatch(rf"{re.escape(out.stem)}\.\d+{re.escape(out.suffix)}", p.name)
                and _modified_since(p, since)]
    return ([out] if out.exists() else []) + sorted(siblings)


def _modified_since(path: Path, since: float) -> bool:
    """Written by this run (a second's slack for coarse file-system clocks); False once gone."""
    try:
        return path.stat().st_mtime >= since - 1
    except OSError:
        return False


class _relay_signals:
    """Pass SIGTERM and SIGHUP (and SIGINT, unless it came from the terminal) on to the child.

    A signal this process was started ignoring stays ignored, and the child inherits that, as it
    would without gfprobe (``nohup gfprobe record ...`` survives a hang-up).

    At an interactive terminal, Ctrl-C already reaches the child, which shares our process
    group; relaying it too would interrupt the child's own clean-up a second time.

    A signal that arrives before the child exists is held and passed on the moment it does: the
    command then ends as the signal makes it, and gfprobe with its exit code. (Raising from the
    handler instead can be lost: inside ``Popen`` the signal may land in an after-fork callback,
    whose exceptions Python prints and drops, and gfprobe then waited on a command that never got
    the signal.)
    """

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self._held: list[int] = []
        self._saved: dict[int, Any] = {}

    def started(self, child: subprocess.Popen[bytes]) -> None:
        """The child exists: from now on signals reach it, and so do those held until now."""
        self.child = child
        for signum in self._held:  # no handler appends once self.child is set
            self._send(signum)
        self._held.clear()

    def _relay(self, signum: int, _frame: FrameType | None) -> None:
        if self.child is None:
            self._held.append(signum)
        else:
            self._send(signum)

    def _relay_before_start(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:  # the terminal's Ctrl-C may have come before the command existed
            self._relay(signum, frame)

    def _send(self, signum: int) -> None:
        assert self.child is not None
        if self.child.poll() is None:
            self.child.send_signal(signum)

    def __enter__(self) -> _relay_signals:
        interactive = sys.stdin is not None and sys.stdin.isatty()
        handlers = {signal.SIGTERM: self._relay, signal.SIGHUP: self._relay,
                    signal.SIGINT: self._relay_before_start if interactive else self._relay}
        for signum, handler in handlers.items():
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup, a background job: the child ignores it too
                self._saved[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
