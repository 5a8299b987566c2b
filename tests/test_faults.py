"""Faults around ``gfprobe record``: kills at any moment, signals, failing scripts, a busy run file,
bad output paths, and ``gfprobe.watch`` pointed at a folder.

Every test states a property that must hold wherever the fault lands. Random delays (from a
seeded ``random.Random``) only choose *where* a kill or a signal lands, never the verdict, and
every wait is a generous poll. Scripts: ``scripts/train_faulty.py`` (a small training run that
prints its final weights' digest) and ``scripts/faulty_writer.py`` (h5py fault injection, no torch).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from conftest import SCRIPTS, child_env, recording

import gfprobe
from gfprobe import launcher
from gfprobe.adapters.torch_probe import FLUSH_SECONDS
from gfprobe.cli import main as gfprobe_cli
from gfprobe.errors import RunFileError
from gfprobe.store import writer as writer_module
from gfprobe.store.reader import open_run
from gfprobe.store.writer import RunWriter

PY = sys.executable
FAULTY = str(SCRIPTS / "train_faulty.py")
WRITER = str(SCRIPTS / "faulty_writer.py")
GFPROBE_DIR = Path(gfprobe.__file__).resolve().parent
STEPS = 12  # every run that finishes trains this many steps, so one plain run is the reference
POLL = 0.02


# -- helpers ---------------------------------------------------------------------------------
def inspect_exit(path: Path) -> tuple[int, str]:
    """``gfprobe inspect PATH``'s exit code and output (in-process: hundreds of files are checked)."""
    result = CliRunner().invoke(gfprobe_cli, ["inspect", str(path)])
    detail = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        detail += f"\n{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, detail


def assert_absent_or_readable(out: Path, context: str) -> None:
    if out.exists():
        code, detail = inspect_exit(out)
        assert code == 0, f"{context}: {out} is left unreadable (gfprobe inspect exits {code}):\n{detail}"


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp"))


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` from /proc (R, S, Z, ...), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def running(pid: int) -> bool:
    """Alive and not a zombie: a dead child whose new parent never reaps it is gone for us."""
    return process_state(pid) not in (None, "Z", "X")


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen[str] | None = None) -> None:
    """Poll ``condition``; fail after ``timeout`` s, or at once if ``proc`` (gfprobe) has ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"gfprobe ended ({proc.returncode}) while waiting for {what}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL)


def read_int(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):  # not written yet, or caught half-written
        return 0


def wait_for_pid(pid_file: Path, proc: subprocess.Popen[str]) -> int:
    wait_until(pid_file.exists, 120, f"the command to start ({pid_file})", proc)
    return read_int(pid_file)


def recorded_steps(out: Path) -> list[int] | None:
    """Steps of stream 0 that read back now (None while there is no readable file)."""
    try:
        with open_run(out) as run:
            return run.stream(0).steps.tolist() if run.n_streams else None
    except RunFileError:
        return None


def attrs_of(out: Path) -> dict[str, object]:
    """The root attributes, read plainly with h5py: a finalised file opens without SWMR."""
    with h5py.File(out, "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gfprobe: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def gfprobe_frames(stderr: str) -> list[str]:
    """Traceback frames in gfprobe's own code (the bootstrap's sitecustomize included)."""
    frames = re.findall(r'^\s*File "([^"]+)", line \d+', stderr, flags=re.M)
    return [f for f in frames if Path(f).resolve().is_relative_to(GFPROBE_DIR)]


def kill_if_running(pid: int | None) -> None:
    if pid and running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gfprobe_record(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "gfprobe", "record", *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd, env=child_env())


@pytest.fixture(scope="module")
def reference_stdout() -> str:
    """The script's output without gfprobe. It prints the same for every ``--end`` and hold."""
    result = subprocess.run([PY, FAULTY, "--steps", str(STEPS)], capture_output=True, text=True,
                            timeout=240, env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("weights ") and f"done steps={STEPS}" in result.stdout
    return result.stdout


# -- A. a kill at any moment leaves no run file or a readable one -----------------------------
def test_sigkill_at_every_h5py_write_call_leaves_no_run_file_or_a_readable_one(tmp_path: Path) -> None:
    # Count the calls of one whole run, then kill a fresh run at each of them in turn.
    counted = subprocess.run([PY, WRITER, "count", str(tmp_path / "count" / "run.h5")],
                             capture_output=True, text=True, timeout=120, env=child_env())
    assert counted.returncode == 0, counted.stderr
    calls: list[str] = json.loads(counted.stdout)["calls"]
    assert {"File.__init__", "File.swmr_mode setter", "File.flush", "File.close"} <= set(calls)
    assert attrs_of(tmp_path / "count" / "run.h5")["status"] == "complete"

    sweep = subprocess.run([PY, WRITER, "sweep", str(tmp_path / "kills"), str(len(calls))],
                           capture_output=True, text=True, timeout=240, env=child_env())
    assert sweep.returncode == 0, sweep.stderr
    outcome = {int(k): v for k, v in json.loads(sweep.stdout).items()}
    assert outcome == dict.fromkeys(range(1, len(calls) + 1), "killed")

    unreadable, stray = [], []
    for k, label in enumerate(calls, start=1):
        folder = tmp_path / "kills" / f"k{k}"
        # The run file, or its hidden temporary ('.' + ... + '.tmp'): nothing else, no other name.
        stray += [f"k{k}: {p.name}" for p in folder.iterdir()
                  if p.name != "run.h5" and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
        if (folder / "run.h5").exists():
            code, detail = inspect_exit(folder / "run.h5")
            if code != 0:
                unreadable.append(f"kill at call {k} ({label}): exit {code}: {detail.strip()[-300:]}")
    print(f"\nfault injection: {len(calls)} kills tried, {len(unreadable)} left an unreadable run file")
    assert not stray, f"files under other names: {stray}"
    assert not unreadable, (
        f"{len(unreadable)} of {len(calls)} kills left an unreadable run file "
        f"(rerun one with: python {WRITER} kill DIR/run.h5 K):\n" + "\n".join(unreadable))


@pytest.mark.parametrize(("anchor", "seed"), [("start", 0), ("start", 1), ("file", 2), ("file", 3)],
                         ids=["after-start-seed0", "after-start-seed1", "at-file-seed2", "at-file-seed3"])
def test_sigkill_of_the_training_at_a_random_moment_leaves_no_file_or_a_readable_one(
        tmp_path: Path, anchor: str, seed: int) -> None:
    """``start``: a delay of up to 4 s after the script starts (torch import, first steps);
    ``file``: up to 0.2 s after anything first appears in the output folder (file creation)."""
    rng = random.Random(seed)
    folder, pid_file = tmp_path / "runs", tmp_path / "pid"
    out = folder / "run.h5"
    train_pid = None
    with recording("--out", str(out), "--", PY, FAULTY, "--forever", "--sleep", "0.02",
                   "--pid-file", str(pid_file)) as proc:
        try:
            train_pid = wait_for_pid(pid_file, proc)
            if anchor == "file":
                wait_until(lambda: folder.is_dir() and any(folder.iterdir()), 120,
                           "anything in the output folder", proc)
                time.sleep(rng.uniform(0.0, 0.2))
            else:
                time.sleep(rng.uniform(0.0, 4.0))
            os.kill(train_pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=120)
        finally:
            kill_if_running(train_pid)

    assert proc.returncode == 128 + signal.SIGKILL, err
    assert "Traceback" not in err, err
    assert_absent_or_readable(out, f"training killed ({anchor}, seed {seed})")
    assert temp_files(tmp_path) == [], "gfprobe record left its dead child's temporary file"


# -- B. the training never outlives gfprobe ---------------------------------------------------
@pytest.mark.parametrize("via_shell", [False, True], ids=["python", "sh-c"])
def test_sigkill_of_gfprobe_ends_the_training(tmp_path: Path, via_shell: bool) -> None:
    out, pid_file, steps_file = tmp_path / "run.h5", tmp_path / "pid", tmp_path / "steps"
    script = [PY, FAULTY, "--forever", "--sleep", "0.05", "--pid-file", str(pid_file), "--steps-file", str(steps_file)]
    # '; true' keeps sh from exec-ing python: sh stays between gfprobe and the training.
    command = ["sh", "-c", f"{shlex.join(script)}; true"] if via_shell else script
    train_pid = None
    with recording("--out", str(out), "--", *command) as proc:
        try:
            train_pid = wait_for_pid(pid_file, proc)
            wait_until(lambda: read_int(steps_file) >= 3, 120, "three training steps", proc)
            os.kill(proc.pid, signal.SIGKILL)  # gfprobe alone: it cannot catch or relay this
            proc.wait(timeout=60)
            deadline = time.monotonic() + 60
            while running(train_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            still_running = running(train_pid)
        finally:
            kill_if_running(train_pid)

    assert not still_running, f"the training (pid {train_pid}) ran on for 60 s after gfprobe was killed"
    assert_absent_or_readable(out, "gfprobe killed")


# -- C. signals to gfprobe ------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_sighup_and_sigterm_to_gfprobe_are_passed_on_and_stamp_interrupted(
        tmp_path: Path, signum: signal.Signals) -> None:
    out, pid_file, steps_file = tmp_path / "run.h5", tmp_path / "pid", tmp_path / "steps"
    train_pid = None
    # gfprobe keeps a signal it was started ignoring ignored (`nohup gfprobe record` survives a
    # hang-up), and a test suite run under nohup starts it so: this test wants the default.
    with default_disposition(signum), recording("--out", str(out), "--", PY, FAULTY, "--forever", "--sleep", "0.05",
                                                "--pid-file", str(pid_file), "--steps-file", str(steps_file)) as proc:
        try:
            train_pid = wait_for_pid(pid_file, proc)
            wait_until(lambda: read_int(steps_file) >= 3, 120, "three training steps", proc)
            os.kill(proc.pid, signum)
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:  # seen twice in CI, never here: say what state it was in
                pytest.fail(f"gfprobe ran on for 120 s after {signum.name}: {signal_states(proc.pid, train_pid)}")
            wait_until(lambda: not running(train_pid), 60, "the training to end")
        finally:
            kill_if_running(train_pid)

    assert proc.returncode == 128 + signum, err
    assert attrs_of(out)["status"] == "interrupted"
    steps = recorded_steps(out)
    assert steps is not None and len(steps) >= 3, f"the 3+ steps taken before {signum.name} were not kept: {steps}"
    assert steps == list(range(len(steps)))


@contextlib.contextmanager
def default_disposition(signum: int) -> Iterator[None]:
    """``signum`` at its default action in this process (and so in the processes it starts)."""
    previous = signal.signal(signum, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def signal_states(*pids: int | None) -> str:
    """Each process's state and its blocked, ignored and caught signals (from /proc), and this
    process's own SIGHUP/SIGTERM handlers, which the processes it starts inherit if ignored."""
    states = [f"pytest SIGHUP={signal.getsignal(signal.SIGHUP)} SIGTERM={signal.getsignal(signal.SIGTERM)}"]
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except (OSError, TypeError):
            states.append(f"{pid}: gone")
            continue
        fields = [line for line in lines if line.split(":")[0] in ("State", "SigBlk", "SigIgn", "SigCgt", "Threads")]
        states.append(f"{pid}: {'; '.join(' '.join(f.split()) for f in fields)}")
    return " | ".join(states)


def test_bug_a_signal_before_the_command_existed_could_be_lost() -> None:
    """A SIGINT inside ``Popen``, before gfprobe knew its child: the handler raised SystemExit,
    which an after-fork callback printed and dropped ("Exception ignored in _releaseLock"), and
    gfprobe waited for ever on a command that never got the signal (1 of 20 SIGINTs in a fault
    campaign). Such a signal is now held and passed on the moment the command exists."""
    relay = launcher._relay_signals()
    with relay:
        os.kill(os.getpid(), signal.SIGTERM)  # no command yet: held, nothing raised
        time.sleep(0.1)  # the handler runs at the next bytecode of this (the main) thread
        child = subprocess.Popen([PY, "-c", "import time; time.sleep(120)"])
        relay.started(child)
        code = child.wait(timeout=60)
    assert code == -signal.SIGTERM


SIGINT_CASES = [("gfprobe", 0), ("gfprobe", 1), ("gfprobe", 2), ("gfprobe", 3), ("command", 4), ("command", 5)]


@pytest.mark.parametrize(("anchor", "seed"), SIGINT_CASES, ids=[f"{a}-seed{s}" for a, s in SIGINT_CASES])
def test_sigint_during_start_up_exits_130_without_a_gfprobe_traceback(
        tmp_path: Path, anchor: str, seed: int) -> None:
    """``gfprobe``: SIGINT within 1.5 s of starting gfprobe (mostly before the command starts);
    ``command``: within 0.5 s of the script starting (its torch import, gfprobe arming)."""
    rng = random.Random(seed)
    pid_file = tmp_path / "pid"
    train_pid = None
    with recording("--out", str(tmp_path / "run.h5"), "--", PY, FAULTY, "--forever", "--sleep", "0.05",
                   "--pid-file", str(pid_file)) as proc:
        try:
            if anchor == "command":
                train_pid = wait_for_pid(pid_file, proc)
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                time.sleep(rng.uniform(0.0, 1.5))
            err = interrupt(proc)
            if err is None:
                pytest.fail("gfprobe ran on for 120 s after SIGINT")
            train_pid = train_pid or (read_int(pid_file) if pid_file.exists() else None)
            if train_pid:
                wait_until(lambda: not running(train_pid), 60, "the command to end after SIGINT")
        finally:
            kill_if_running(train_pid)

    assert quiet_interrupt_problem(proc.returncode, err) is None, err
    assert "never stepped" not in err, "an interrupted command was said to have never trained"


# Python itself loses a Ctrl-C that lands in its own start-up machinery, before any gfprobe code
# runs: site reports the KeyboardInterrupt of a .pth line ("Remainder of file ignored", seen in
# the editable install's finder) and an import lock's weakref callback ignores it ("Exception
# ignored in: <function _get_module_lock"). Any Python program then runs on, as if no Ctrl-C was
# pressed; a person presses it again, and so do these tests (a CI run waited 120 s on one).
PYTHON_LOST_AN_INTERRUPT = re.compile(
    r"^Remainder of file ignored$|^Exception ignored in: <function _get_module_lock", flags=re.M)


def interrupt(proc: subprocess.Popen[str], pid: int | None = None, timeout: float = 120) -> str | None:
    """SIGINT to ``pid`` (gfprobe by default) and gfprobe's stderr once it ended, or None if it ran
    on for ``timeout`` s. Each interrupt Python's own start-up lost is followed by another."""
    target = pid or proc.pid
    stderr: list[str] = []
    readers = [threading.Thread(target=sink.extend, args=(iter(stream.readline, ""),), daemon=True)
               for stream, sink in ((proc.stderr, stderr), (proc.stdout, [])) if stream is not None]
    for reader in readers:
        reader.start()
    sent, deadline = 0, time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        text = "".join(stderr)
        lost = len(PYTHON_LOST_AN_INTERRUPT.findall(text)) if "KeyboardInterrupt" in text else 0
        if sent <= lost:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGINT)
            sent += 1
        time.sleep(0.05)
    if proc.poll() is None:
        return None
    for reader in readers:
        reader.join(timeout=60)
    return "".join(stderr)


def quiet_interrupt_problem(returncode: int, stderr: str) -> str | None:
    """What is wrong with how gfprobe ended after a SIGINT, or None."""
    frames = gfprobe_frames(stderr)
    if frames:
        return f"a traceback through gfprobe's code ({frames[-1]})"
    # Killed by SIGINT before Python installed its handler (-2) is what a shell shows as 130.
    if returncode in (128 + signal.SIGINT, -signal.SIGINT):
        return None
    if stderr.rstrip().endswith("KeyboardInterrupt"):
        # Python's own start-up (site, runpy: "Fatal Python error: init_import_site", "Could not
        # import runpy module"), before any gfprobe code ran: any Python program prints the same.
        return None
    return f"exit code {returncode}, not 130"


@pytest.mark.slow
def test_sigint_at_every_moment_of_gfprobe_start_up_is_quiet(tmp_path: Path) -> None:
    """A dense sweep over gfprobe's own start-up (interpreter, package import, command set-up),
    where the random moments above rarely land: 3 ms apart over the first 240 ms."""
    problems = []
    for i in range(80):
        delay = i * 0.003
        with recording("--out", str(tmp_path / "run.h5"), "--", PY, FAULTY, "--forever",
                       "--pid-file", str(tmp_path / "pid")) as proc:
            time.sleep(delay)
            err = interrupt(proc)
            if err is None:
                problems.append(f"{delay * 1000:.0f} ms: gfprobe ran on for 120 s after SIGINT")
                continue
        problem = quiet_interrupt_problem(proc.returncode, err)
        if problem:
            problems.append(f"{delay * 1000:.0f} ms: {problem}")
        if (tmp_path / "pid").exists():
            break  # the command started: the start-up is over (the random cases above cover the rest)
    assert not problems, "SIGINT during start-up:\n" + "\n".join(problems)


def started_command(pid: int) -> int | None:
    """The child of ``pid`` once it runs the training script, else None. Before its exec the
    child is a copy of gfprobe (whose own arguments name the script), and a signal sent then is
    lost, as in any fork-and-exec: only ``python FAULTY ...`` as its arguments counts."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        child = int(children[0]) if children else None
        if child is not None and Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[1:2] == [FAULTY.encode()]:
            return child
    except OSError:
        pass
    return None


@pytest.mark.slow
def test_sigint_at_every_moment_of_the_commands_start_up_is_quiet(tmp_path: Path) -> None:
    """A Ctrl-C that reaches the command while gfprobe's bootstrap arms it (its sitecustomize):
    it was Python's "Fatal Python error: init_import_site" with a traceback through gfprobe and
    exit 1 (seen once in 40 SIGINTs). A sweep over the first 300 ms of the command's Python,
    4 ms apart; the signal goes to the command itself, as a terminal's Ctrl-C does."""
    problems = []
    for i in range(75):
        delay = i * 0.004
        with recording("--out", str(tmp_path / f"run{i}.h5"), "--", PY, FAULTY, "--forever",
                       "--pid-file", str(tmp_path / "pid")) as proc:
            wait_until(lambda: started_command(proc.pid) is not None, 120, "the command to start", proc)
            command = started_command(proc.pid)
            time.sleep(delay)
            err = interrupt(proc, command)
            if err is None:
                problems.append(f"{delay * 1000:.0f} ms: gfprobe ran on for 120 s after SIGINT")
                continue
        frames = gfprobe_frames(err)
        if frames:
            problems.append(f"{delay * 1000:.0f} ms: a traceback through gfprobe's code ({frames[-1]})")
        if (tmp_path / "pid").exists():
            break  # the script's own code runs: the start-up is over
    assert not problems, "SIGINT during the command's start-up:\n" + "\n".join(problems)


# -- D, H. the exit status tells the truth; the training is unchanged -------------------------
@pytest.mark.parametrize(("end", "exit_code", "status"),
                         [("clean", 0, "complete"), ("exit3", 3, "failed"), ("raise", 1, "failed")])
def test_exit_status_and_exit_code_are_stamped(tmp_path: Path, reference_stdout: str, end: str,
                                               exit_code: int, status: str) -> None:
    out = tmp_path / "run.h5"
    result = gfprobe_record("--out", str(out), "--", PY, FAULTY, "--steps", str(STEPS), "--end", end)
    assert result.returncode == exit_code, result.stderr
    if end == "raise":
        assert "RuntimeError: failure requested by --end raise" in result.stderr
    assert result.stdout == reference_stdout  # same weights, same output as without gfprobe
    attrs = attrs_of(out)
    assert (attrs["status"], attrs.get("exit_code")) == (status, exit_code)
    assert recorded_steps(out) == list(range(STEPS))
    assert temp_files(tmp_path) == []


READ_HOLDER = """
import sys, h5py
with h5py.File(sys.argv[1], "r"):  # a plain read-only open holds HDF5's file lock until closed
    print("open", flush=True)
    sys.stdin.readline()
print("closed", flush=True)
"""


def test_the_exit_code_is_stamped_while_a_reader_holds_the_finished_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a reader of the run just as the command ended (``gfprobe report`` in a loop) held
    the file lock, so the exit code was never stamped and a failed command's run stayed complete."""
    out = tmp_path / "run.h5"
    RunWriter(out, {"command": ["test"]}, {}).close("complete", {})
    holder = subprocess.Popen([PY, "-c", READ_HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    stdin, stdout = holder.stdin, holder.stdout
    assert stdin is not None and stdout is not None
    waits: list[float] = []

    def reader_closes_while_the_stamp_waits(seconds: float) -> None:
        if not waits:  # the first wait proves the stamp met the lock; the reader then lets go
            stdin.write("\n")
            stdin.flush()
            assert stdout.readline() == "closed\n"
        waits.append(seconds)

    try:
        assert stdout.readline() == "open\n"
        monkeypatch.setattr(launcher.time, "sleep", reader_closes_while_the_stamp_waits)
        notes = launcher._stamp_exit_code([out], 3)
    finally:
        monkeypatch.undo()
        holder.kill()
        holder.wait(timeout=60)
    assert notes == []
    assert waits, "the stamp never met the reader's lock: this test proves nothing"
    assert (attrs_of(out)["status"], attrs_of(out)["exit_code"]) == ("failed", 3)


# -- E, H. a run file being written is never replaced ------------------------------------------
@pytest.mark.slow
def test_force_refuses_a_run_file_being_written(tmp_path: Path, reference_stdout: str) -> None:
    out, release, marker = tmp_path / "busy.h5", tmp_path / "release", tmp_path / "second-ran"
    # The first run holds before its last step until the test releases it, so the second starts
    # while the file is being written, whatever the machine's speed. Steps reach the file at
    # least every FLUSH_SECONDS while training steps; the sleeps between the steps before the hold
    # add up to more than that, so some have been handed to the writer when the hold begins.
    hold_at = STEPS - 1
    sleep = 1.25 * FLUSH_SECONDS / (hold_at - 1)
    with recording("--out", str(out), "--", PY, FAULTY, "--steps", str(STEPS), "--sleep", f"{sleep:.3f}",
                   "--hold-at", str(hold_at), "--release", str(release)) as first:
        seen: list[list[int] | None] = [None]

        def holds_steps() -> bool:
            seen[0] = recorded_steps(out) if out.exists() else None
            return bool(seen[0])

        wait_until(holds_steps, 120, f"steps in {out}", first)
        inode = out.stat().st_ino

        second = gfprobe_record("--force", "--out", str(out), "--", PY, "-c", f"open({str(marker)!r}, 'w')")
        assert second.returncode == 2, second.stderr
        assert "being written" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr, second.stderr
        assert not marker.exists(), "the second command ran"
        assert out.exists() and out.stat().st_ino == inode, "the file being written was replaced"
        assert (recorded_steps(out) or [])[: len(seen[0] or [])] == seen[0]

        release.touch()
        stdout, err = first.communicate(timeout=120)

    assert first.returncode == 0, err
    assert stdout == reference_stdout
    assert attrs_of(out)["status"] == "complete"
    assert recorded_steps(out) == list(range(STEPS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.h5", "release"]


def test_bug_a_file_system_without_record_locks_stopped_recording(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Lustre mounted without locks, some NFS set-ups: lockf fails with ENOLCK. The run used to
    stop recording and leave its file 'running' under the real name."""
    def no_locks(*_args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    out = tmp_path / "run.h5"
    writer = RunWriter(out, {"command": ["train.py"]}, {})
    writer.close("complete", {})
    assert attrs_of(out)["status"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_the_write_lock_marks_the_file_from_the_moment_it_has_its_name(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def asked_right_after_publishing(temp: Path, path: Path) -> Path:
        published = publish_free(temp, path)
        # Asked from another process: a process's own POSIX locks never conflict with it.
        busy = subprocess.run([PY, "-c", "import sys; from pathlib import Path; "
                               "from gfprobe.store.publish import is_being_written; "
                               "sys.exit(0 if is_being_written(Path(sys.argv[1])) else 1)", str(published)],
                              timeout=60, env=child_env())
        seen.append(busy.returncode == 0)
        return published

    publish_free = writer_module._publish_free
    monkeypatch.setattr(writer_module, "_publish_free", asked_right_after_publishing)
    RunWriter(tmp_path / "run.h5", {"command": ["train.py"]}, {}).close("complete", {})
    assert seen == [True], "the file had its name before it was marked as being written"


def test_bug_no_temporary_folder_was_a_traceback_before_the_command_ran(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A full or read-only /tmp: the launcher's private folder cannot be made; the command runs anyway."""
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    out = tmp_path / "run.h5"
    result = launcher.run([PY, FAULTY, "--steps", str(STEPS)], launcher.RecordOptions(out=out))
    assert result.exit_code == 0
    assert result.files == [out] and recorded_steps(out) == list(range(STEPS))
    # Nothing recorded and no way to learn why: the command's 0 is kept, not "never trained" (3).
    empty = CliRunner().invoke(gfprobe_cli, ["record", "--out", str(tmp_path / "none.h5"), "--", PY, "-c", "pass"])
    assert empty.exit_code == 0, empty.output
    assert "why cannot be known" in empty.output and "never stepped" not in empty.output


# -- F. the output path is checked before the command starts ---------------------------------
@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs: permission bits do not stop root, a read-only mount does."""
    folder = tmp_path / "ro"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a read-only tmpfs: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _out_in_read_only(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("read_only_dir") / "run.h5")


def _out_under_missing_in_read_only(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("read_only_dir") / "missing" / "run.h5")


def _out_under_a_file(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    return str(tmp_path / "notes.txt" / "run.h5")


def _out_empty(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return ""


def _out_a_folder(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    (tmp_path / "folder").mkdir()
    return str(tmp_path / "folder")


def _out_a_fifo(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "pipe.h5")  # opening it to write would block until a reader comes
    return str(tmp_path / "pipe.h5")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("make_out", [_out_in_read_only, _out_under_missing_in_read_only, _out_under_a_file,
                                      _out_empty, _out_a_folder, _out_a_fifo],
                         ids=["read-only-folder", "missing-folder-in-read-only", "parent-is-a-file",
                              "empty", "existing-folder", "fifo"])
def test_bad_out_exits_2_before_the_command_runs(tmp_path: Path, request: pytest.FixtureRequest,
                                                 make_out: Callable[[pytest.FixtureRequest, Path], str]) -> None:
    out = make_out(request, tmp_path)
    marker = tmp_path / "ran"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = gfprobe_record("--out", out, "--", PY, "-c", f"open({str(marker)!r}, 'w')", cwd=tmp_path)
    assert_one_line_error(result, "--out")
    assert not marker.exists(), "the command ran"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "something was created"


def test_bug_force_would_delete_a_file_that_is_not_a_regular_one(tmp_path: Path) -> None:
    """``--out /dev/null --force``, run as root, reached ``unlink``: the same for a FIFO here."""
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    result = gfprobe_record("--force", "--out", str(fifo), "--", PY, "-c", "pass", cwd=tmp_path)
    assert_one_line_error(result, "--out", "not a regular file")
    assert fifo.is_fifo(), "the FIFO was replaced"


def test_unknown_option_exits_2_naming_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = gfprobe_record("--bogus", "--", PY, "-c", f"open({str(marker)!r}, 'w')", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--bogus" in result.stderr, result.stderr
    assert "command not found" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not marker.exists()
    assert list(tmp_path.iterdir()) == []


# -- G, H. gfprobe.watch into a folder warns and trains on ------------------------------------
def test_watch_with_a_folder_as_out_warns_once_and_trains_on(tmp_path: Path, reference_stdout: str) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    result = subprocess.run([PY, FAULTY, "--steps", str(STEPS), "--watch-out", str(folder)],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path, env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_stdout  # same weights and output as without gfprobe
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one warning:\n{result.stderr}"
    assert str(folder) in lines[0] and re.search(r"folder|director", lines[0], re.I), lines[0]
    assert list(folder.iterdir()) == [], "written into the folder"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs"], "a run file was written beside the folder"
