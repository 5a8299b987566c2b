"""``gfprobe watch``, the live dashboard, in a real pseudo-terminal: pexpect drives it, pyte renders
what it draws, and the tests read the screen as a person would.

Runs are recorded for real (``gfprobe record`` of tests/scripts, held mid-run with --hold-at) or
written with the store's writer, which lets a test add steps while the dashboard watches. Every
wait is on what the screen (or the file) shows, with generous timeouts; no test measures time.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pexpect
import pyte
import pytest
from click.testing import CliRunner
from conftest import SCRIPTS, child_env, recording

from gfprobe.cli import main
from gfprobe.errors import RunFileError
from gfprobe.render.formats import fmt
from gfprobe.store.reader import open_run
from gfprobe.store.schema import STAT_FIELDS
from gfprobe.store.writer import ParamInfo, RunWriter, StepBlock

PY = sys.executable
F = {name: i for i, name in enumerate(STAT_FIELDS)}
WAIT = 120.0  # seconds any one condition may take on a loaded machine: a bound, never a measurement
BATCH_STEPS = 256  # rows a probe hands to its writer at once (capture.metadata): a hold after them has rows


# -- a terminal --------------------------------------------------------------------------------
class Terminal:
    """``gfprobe watch ARGS`` in a pseudo-terminal of ``columns`` × ``lines``, its screen kept by pyte."""

    def __init__(self, args: Sequence[str], columns: int = 80, lines: int = 24, stdin: str | None = None) -> None:
        env = child_env(TERM="xterm-256color")
        env.pop("GFPROBE_WIDTH")  # the terminal's own size
        self.screen = pyte.Screen(columns, lines)
        self._stream = pyte.Stream(self.screen)
        command = [PY, "-m", "gfprobe", "watch", *args]
        if stdin is not None:  # standard input from elsewhere; the terminal stays the controlling one
            command = ["sh", "-c", 'exec "$@" < "$0"', stdin, *command]
        self.child = pexpect.spawn(command[0], command[1:], dimensions=(lines, columns), env=env, encoding="utf-8",
                                   codec_errors="replace")
        self.output = ""  # everything it wrote, for messages
        self.ended = False

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def _pump(self, timeout: float) -> None:
        try:
            data = self.child.read_nonblocking(1 << 16, timeout=timeout)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.ended = True
            return
        self.output += data
        self._stream.feed(data)

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout: float = WAIT) -> str:
        """Read what it draws until ``condition(screen)`` holds; fail if it ends first or never does."""
        deadline = time.monotonic() + timeout
        while not condition(self.text()):
            if self.ended:
                pytest.fail(f"gfprobe watch ended ({self.exit_code()}) while waiting for {what}; screen:\n"
                            f"{self.text()}\noutput:\n{self.output[-3000:]!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; screen:\n{self.text()}")
            self._pump(0.1)
        return self.text()

    def show(self, *fragments: str) -> str:
        return self.wait_for(lambda screen: all(f in screen for f in fragments), f"{fragments} on the screen")

    def end(self, timeout: float = WAIT) -> int:
        """Wait for it to exit; its exit code (128 + N when a signal N ended it)."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            if time.monotonic() > deadline:
                pytest.fail(f"gfprobe watch did not exit; screen:\n{self.text()}")
            self._pump(0.1)
        return self.exit_code()

    def exit_code(self) -> int:
        self.child.wait()
        status = self.child.exitstatus
        return status if status is not None else 128 + int(self.child.signalstatus or 0)

    def cooked(self) -> bool:
        """Whether the terminal is back in its usual mode: line editing and echo on."""
        lflag = termios.tcgetattr(self.child.child_fd)[3]
        return bool(lflag & termios.ICANON) and bool(lflag & termios.ECHO)

    def close(self) -> None:
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        self.child.close(force=True)


@contextlib.contextmanager
def terminal(*args: str, columns: int = 80, lines: int = 24, stdin: str | None = None) -> Iterator[Terminal]:
    term = Terminal(args, columns, lines, stdin)
    try:
        yield term
    finally:
        term.close()


def recording_of(out: Path, script: str, *args: str) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """``gfprobe record --out OUT -- python SCRIPT ARGS`` running; killed (its whole group) after."""
    return recording("--out", str(out), "--", PY, str(SCRIPTS / script), *args)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- what the file says, formatted as the screen formats it ---------------------------------------
def expected_rows(path: Path) -> tuple[int, dict[str, tuple[str, str]], dict[str, str]] | None:
    """(last step, {weight layer: (last ‖g‖₂, last ‖g⊙m‖₂)}, {measure: value}) as the file holds
    them now, computed here from the statistics; None while no step reads back."""
    try:
        with open_run(path, locking=False) as run:
            if not run.n_streams:
                return None
            stream = run.stream(0)
    except RunFileError:
        return None
    if not stream.steps.size:
        return None
    weights = [i for i, kind in enumerate(stream.params.kinds) if kind == "weight"]
    last = {field: stream.stats[field][-1] for field in ("sumsq", "masked_sumsq", "sum_abs", "masked_sum_abs")}
    layers = {stream.params.names[i]: (fmt(math.sqrt(last["sumsq"][i])), fmt(math.sqrt(last["masked_sumsq"][i])))
              for i in weights}
    measures = {"egf_2": fmt(float(np.mean(np.sqrt(last["masked_sumsq"][weights])))),
                "egf_1": fmt(float(np.mean(last["masked_sum_abs"][weights]))),
                "gf_2": fmt(math.sqrt(float(np.sum(last["sumsq"][weights])))),
                "gf_1": fmt(float(np.sum(last["sum_abs"][weights])))}
    return int(stream.steps[-1]), layers, measures


def shows_file(screen: str, path: Path) -> bool:
    """Whether the screen shows the file as it is now: the last step, each weight layer's row
    with its two last norms (‖g‖₂, then ‖g⊙m‖₂), and the measures."""
    expected = expected_rows(path)
    if expected is None:
        return False
    step, layers, measures = expected
    lines = screen.splitlines()
    for name, (raw, masked) in layers.items():
        rows = [line.split() for line in lines if line.startswith(name + " ")]
        if len(rows) != 1 or rows[0][-1] != masked or raw not in rows[0][1:-1]:
            return False
    return f"step {step} " in screen and all(re.search(rf"(?<![\w]){name} {re.escape(value)}(?!\S)", screen)
                                             for name, value in measures.items())


# -- run files written here --------------------------------------------------------------------
PARAMS = [ParamInfo("fc1.weight", (8, 4), "weight", "Linear", "prune"),
          ParamInfo("fc1.bias", (8,), "bias", "Linear"),
          ParamInfo("fc2.weight", (2, 8), "weight", "Linear", "prune")]


def block(steps: int, first: int = 0, nan_at: int | None = None, params: Sequence[ParamInfo] = PARAMS) -> StepBlock:
    """``steps`` recorded steps from step ``first`` whose norms drift (so sparklines have shape),
    the masked norm half the raw one; ``nan_at``: 3 NaN entries in the first layer then."""
    values = np.zeros((steps, len(STAT_FIELDS), len(params)))
    index = np.arange(first, first + steps)
    for col in range(len(params)):
        sumsq = (1.0 + col) * np.exp(-0.05 * index)
        values[:, F["sumsq"], col], values[:, F["masked_sumsq"], col] = sumsq, sumsq / 4
        values[:, F["sum_abs"], col], values[:, F["masked_sum_abs"], col] = 3 * np.sqrt(sumsq), np.sqrt(sumsq)
    values[:, F["active"]] = [math.prod(p.shape) for p in params]
    values[:, F["has_grad"]] = 1
    if nan_at is not None:
        values[nan_at - first, F["nonfinite"], 0] = 3
    return StepBlock(0, index, index * 0.01, np.zeros(steps, np.uint8), values)


def write_run(path: Path, attrs: dict[str, object] | None = None, steps: int = 20, acc: float | None = None,
              status: str | None = "complete", params: Sequence[ParamInfo] = PARAMS) -> RunWriter:
    """A run file; ``status`` None leaves it running (the writer is returned, still open)."""
    writer = RunWriter(path, {"command": ["test"]}, attrs or {})
    writer.add_stream("SGD", list(params))
    writer.append_steps(block(steps, params=params))
    if acc is not None:
        writer.append_metrics([("test_acc", steps, 1.0, acc)])
    writer.flush()
    if status is not None:
        writer.close(status, {})
    return writer


# -- a run being recorded -------------------------------------------------------------------------
def test_the_screen_shows_a_held_runs_layers_and_values_from_its_file_and_q_quits(tmp_path: Path) -> None:
    out, release = tmp_path / "run.h5", tmp_path / "release"
    with recording_of(out, "train_faulty.py", "--steps", str(BATCH_STEPS + 4), "--hold-at", str(BATCH_STEPS),
                   "--release", str(release)) as run:
        wait_until(lambda: expected_rows(out) is not None, f"steps in {out}")
        for columns, lines in ((80, 24), (120, 30)):
            with terminal(str(out), columns=columns, lines=lines) as term:
                screen = term.wait_for(lambda screen: shows_file(screen, out), f"{out} as it is on the screen")
                assert "running" in screen.splitlines()[0]
                assert "q quits" in screen  # the whole screen fits: its last line too
                term.child.send("q")
                assert term.end() == 0
                assert term.cooked()
        release.touch()
        _, err = run.communicate(timeout=WAIT)
        assert run.returncode == 0, err


def test_a_nan_gradient_trips_nonfinite_and_exit_on_finish_ends_with_the_final_status(tmp_path: Path) -> None:
    out = tmp_path / "later" / "nan.h5"
    with terminal(str(out), "--exit-on-finish", "--interval", "0.2") as term:
        term.show("waiting", "does not exist yet")
        with recording_of(out, "train_check.py", "--steps", "8", "--nan-at", "6") as run:
            assert term.end() == 0
            _, err = run.communicate(timeout=WAIT)
            assert run.returncode == 0, err
        screen = term.text()
        assert "nan.h5  complete" in screen
        assert "FAIL nonfinite: " in screen and "0.weight at step 6" in screen.replace("\n    ", " ")
        assert shows_file(screen, out)
        assert term.cooked()


def test_rules_trip_as_steps_arrive_and_the_last_state_stays_on_screen(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    writer = write_run(out, status=None)
    with terminal(str(out), "--exit-on-finish", "--interval", "0.2") as term:
        term.show("running", "check: no rule fails so far")
        writer.append_steps(block(5, first=20, nan_at=22))
        writer.flush()
        screen = term.show("FAIL nonfinite: 3 NaN/Inf entries in the gradient of fc1.weight at step 22")
        assert "step 24 " in screen
        writer.append_metrics([("test_acc", 24, 1.0, 0.625)])
        writer.close("interrupted", {"exit_code": 130})
        assert term.end() == 0
        screen = term.text()
        assert "run.h5  interrupted (exit code 130)" in screen and "test_acc 0.625 at step 24" in screen
        assert shows_file(screen, out)


@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("sigterm", 143)])
def test_ctrl_c_and_sigterm_restore_the_terminal(tmp_path: Path, how: str, code: int) -> None:
    out = tmp_path / "run.h5"
    write_run(out)
    with terminal(str(out)) as term:
        term.show("run.h5  complete", "q quits")
        if how == "ctrl-c":
            term.child.sendcontrol("c")
        else:
            term.child.kill(signal.SIGTERM)
        assert term.end() == code
        assert term.cooked()
        assert "Traceback" not in term.output
        if how == "ctrl-c":
            assert "gfprobe: interrupted" in term.output


def test_without_keys_on_standard_input_ctrl_c_still_quits(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    write_run(out)
    with terminal(str(out), stdin=os.devnull) as term:
        term.show("run.h5  complete", "Ctrl-C quits")
        term.child.sendcontrol("c")
        assert term.end() == 130
        assert "gfprobe: interrupted" in term.output and "Traceback" not in term.output


def test_a_file_replaced_under_its_name_is_followed_and_a_damaged_one_ends_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    write_run(out, steps=20)
    with terminal(str(out), "--interval", "0.2") as term:
        term.show("run.h5  complete", "step 19 ")
        replacement = write_run(tmp_path / "new" / "run.h5", steps=30, status="failed").path
        os.replace(replacement, out)
        term.wait_for(lambda screen: "run.h5  failed" in screen and shows_file(screen, out), "the new file")
        damaged = tmp_path / "damaged"
        damaged.write_bytes(b"not a run file\n" * 64)
        os.replace(damaged, out)
        assert term.end() == 2
        assert term.cooked()
        errors = [line for line in term.output.splitlines() if "gfprobe:" in line]
        assert len(errors) == 1 and "run.h5: not an HDF5 file" in errors[0], term.output
        assert "Traceback" not in term.output


def test_a_read_that_fails_once_keeps_the_last_screen_and_three_in_a_row_end_it(tmp_path: Path) -> None:
    """A read can meet the file mid-change (the exit-code stamp as the command ends): the last good
    state stays up and the next read is tried; a file that stays unreadable ends the watch."""
    from gfprobe.analysis.check_config import load_config
    from gfprobe.analysis.live import RunState, Watcher
    from gfprobe.cli.watch import READ_FAILURES, _read_again

    out = tmp_path / "run.h5"
    write_run(out, steps=20)
    watcher = Watcher(out, 0, load_config()[0], "test_acc")
    good = watcher.read()
    saved = out.read_bytes()
    out.write_bytes(b"not a run file\n" * 64)
    view, failed = _read_again(watcher, good, [])
    assert view is good and len(failed) == 1 and "not an HDF5 file" in failed[0]
    out.write_bytes(saved)
    view, failed = _read_again(watcher, good, failed)
    assert failed == [] and view is not good  # read again: the file changed
    assert isinstance(view, RunState) and view.last_step == 19 and view.status == "complete"
    out.write_bytes(b"not a run file\n" * 64)
    for _ in range(READ_FAILURES - 1):
        view, failed = _read_again(watcher, view, failed)
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        _read_again(watcher, view, failed)


def test_a_damaged_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with terminal(str(out)) as term:
        assert term.end() == 2
        lines = term.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gfprobe: ") and "run.h5" in lines[0], term.output


def test_80_columns_many_long_layers_fit_with_a_count_of_the_rest(tmp_path: Path) -> None:
    params = [ParamInfo(f"model.encoder.layers.{i}.self_attention.query_projection.weight", (4, 4), "weight", "Linear")
              for i in range(40)]
    out = write_run(tmp_path / "wide.h5", params=params).path
    with terminal(str(out)) as term:
        screen = term.show("more layers", "q quits")
        layer_rows = [line for line in screen.splitlines() if line.startswith("model.enc")]
        assert layer_rows and all("…" in row for row in layer_rows)
        shown = len(layer_rows)
        assert f"… {40 - shown} more layers" in screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        term.child.send("q")
        assert term.end() == 0


def test_a_watching_reader_never_makes_the_exit_code_stamp_fail(tmp_path: Path) -> None:
    """watch reads without HDF5's file lock: while a locking reader holds a finished file open,
    the SWMR-write open in which gfprobe record stamps the command's exit code fails (and the
    launcher retries it), and watch opens the file every second."""
    out = write_run(tmp_path / "run.h5").path
    stamp = ("import sys; from pathlib import Path; from gfprobe.store.writer import stamp_outcome; "
             "stamp_outcome(Path(sys.argv[1]), None, {'exit_code': 3})")
    with open_run(out, locking=False) as run:
        assert run.metadata["status"] == "complete"
        result = subprocess.run([PY, "-c", stamp, str(out)], capture_output=True, text=True, timeout=WAIT,
                                env=child_env())
    assert result.returncode == 0, result.stderr
    with open_run(out) as run:
        assert run.metadata["exit_code"] == 3


# -- a study folder ------------------------------------------------------------------------------
def test_a_study_folder_shows_statuses_best_runs_and_scsdc_pairs_as_they_complete(tmp_path: Path) -> None:
    runs = tmp_path / "study" / "runs"
    accs = {}
    for density in (0.1, 0.5):
        for seed in range(2):
            for sparse in (True, False):
                acc = 0.7 + density / 10 + 0.01 * seed + (0.02 if sparse else 0.0)
                name = f"{'sparse' if sparse else 'dense'}-{density}-{seed}.h5"
                accs[name] = acc
                write_run(runs / name, {"sparse": sparse, "pair_density": density, "seed": seed}, acc=acc)
    write_run(runs / "sparse-0.9-0.h5", {"sparse": True, "pair_density": 0.9, "seed": 0}, acc=0.95)
    live = write_run(runs / "dense-0.9-0.h5", {"sparse": False, "pair_density": 0.9, "seed": 0}, status=None)
    write_run(runs / "failed.h5", {"sparse": False}, status="failed")
    (runs / "copy.h5").write_bytes(b"half a copy")
    with terminal(str(tmp_path / "study"), "--interval", "0.2") as term:
        screen = term.show("running 1  ·  complete 9  ·  failed 1  ·  unreadable 1", "q quits")
        assert "runs/dense-0.9-0.h5" in screen and "unreadable runs/copy.h5: not an HDF5 file" in screen
        best = [line for line in screen.splitlines() if line.startswith(" 1.") or line.startswith("1.")]
        assert best and "runs/sparse-0.9-0.h5" in best[0] and fmt(0.95) in best[0]
        assert "SC-SDC: 2 of 3 configurations complete on both sides (test_acc)" in screen
        for density in (0.1, 0.5):
            sparse = np.mean([accs[f"sparse-{density}-{seed}.h5"] for seed in range(2)])
            dense = np.mean([accs[f"dense-{density}-{seed}.h5"] for seed in range(2)])
            row = [line for line in screen.splitlines() if line.startswith(f"pair_density={density} ")]
            assert row and f"{sparse:.3f} (2)" in row[0] and f"{dense:.3f} (2)" in row[0], screen
            assert f"{sparse - dense:+.3f}" in row[0]

        live.append_metrics([("test_acc", 20, 1.0, 0.5)])
        live.close("complete", {})
        screen = term.show("running 0  ·  complete 10", "3 of 3 configurations")
        assert [line for line in screen.splitlines() if line.startswith("pair_density=0.9 ")]
        term.child.send("q")
        assert term.end() == 0


def test_exit_on_finish_is_refused_for_a_study_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["watch", str(tmp_path), "--exit-on-finish"])
    assert result.exit_code == 2
    assert "study folder" in result.output and "--exit-on-finish" in result.output


# -- without a terminal --------------------------------------------------------------------------
def test_without_a_terminal_one_whole_snapshot_is_printed(tmp_path: Path) -> None:
    params = [ParamInfo(f"layer{i}.weight", (4, 4), "weight", "Linear") for i in range(40)]
    out = write_run(tmp_path / "run.h5", params=params).path
    result = CliRunner().invoke(main, ["watch", str(out)], env={"NO_COLOR": "1", "GFPROBE_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    assert all(f"layer{i}.weight " in result.output for i in range(40))
    assert "more layers" not in result.output and "quits" not in result.output
    assert shows_file(result.output, out)


def test_without_a_terminal_a_missing_file_is_an_error_unless_waited_for(tmp_path: Path) -> None:
    missing = tmp_path / "run.h5"
    result = CliRunner().invoke(main, ["watch", str(missing)])
    assert result.exit_code == 2
    assert result.output.count("gfprobe: ") == 1 and "no such file" in result.output


def test_exit_on_finish_ends_for_a_run_whose_writer_was_killed(tmp_path: Path) -> None:
    """Regression: a run file left ``running`` by a writer that died (SIGKILL, the OOM killer) never
    finishes; --exit-on-finish waited for it for ever."""
    out = tmp_path / "run.h5"
    write_run(out, status=None).abandon()  # rows flushed, still marked running, no write lock held
    with terminal(str(out), "--exit-on-finish") as term:
        assert term.end() == 0
        assert "writer gone (killed?)" in term.output
    result = CliRunner().invoke(main, ["watch", str(out), "--exit-on-finish"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0 and result.stdout.splitlines()[0].endswith("run.h5  running · writer gone (killed?)")


def test_without_a_terminal_exit_on_finish_says_it_waits_then_prints_the_end(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    writer = write_run(out, status=None)  # this process holds the write lock: the run goes on
    watcher = subprocess.Popen([PY, "-m", "gfprobe", "watch", str(out), "--exit-on-finish", "--interval", "0.2"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=child_env())
    try:
        assert watcher.stderr is not None
        line = watcher.stderr.readline()
        assert line == f"gfprobe: waiting for {out} to finish (it is running); one snapshot follows then\n"
        assert watcher.poll() is None
        writer.close("complete", {})
        stdout, stderr = watcher.communicate(timeout=WAIT)
    finally:
        watcher.kill()
    assert watcher.returncode == 0 and stderr == ""
    assert stdout.splitlines()[0].endswith("run.h5  complete") and shows_file(stdout, out)


def test_strings_from_the_file_are_shown_never_obeyed(tmp_path: Path) -> None:
    hostile = "\x1b[2J\x1b]0;title\x07[bold red]x[/]"
    params = [ParamInfo(f"{hostile}.weight", (4, 4), "weight", hostile), *PARAMS[1:]]
    writer = RunWriter(tmp_path / "run.h5", {"command": [hostile]}, {hostile: hostile})
    writer.add_stream(f"SGD{hostile}", params)
    writer.append_steps(block(8, nan_at=3, params=params))
    writer.append_metrics([(hostile, 7, 1.0, 0.5)])
    writer.close(f"complete{hostile}", {"error": hostile})
    shown = r"\x1b[2J\x1b]0;title\x07[bold red]x[/]"
    result = CliRunner().invoke(main, ["watch", str(writer.path)], env={"NO_COLOR": "1", "GFPROBE_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    assert not [c for c in result.output if c not in "\n" and not c.isprintable()]
    assert f"{shown}.weight" in result.output and "FAIL nonfinite" in result.output
    with terminal(str(writer.path), columns=200) as term:
        screen = term.show(f"{shown}.weight", "q quits")
        assert f"SGD{shown}" in screen
        term.child.send("q")
        assert term.end() == 0
