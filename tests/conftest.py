"""Shared fixtures: running real scripts under ``gfprobe record`` and golden files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from gfprobe.analysis import measure_set
from gfprobe.cli import _common
from gfprobe.plugin import found, manager

SCRIPTS = Path(__file__).parent / "scripts"
FIXTURES = Path(__file__).parent.parent / "fixtures"
GOLDEN = FIXTURES / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files in fixtures/golden.")


Golden = Callable[[str, str], None]


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """``golden(name, text)``: ``text`` must equal fixtures/golden/NAME; ``--update-golden`` rewrites
    the file with it instead. Render what is compared with NO_COLOR and a fixed GFPROBE_WIDTH."""
    update = bool(request.config.getoption("--update-golden"))

    def compare(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.write_text(text)
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        assert text == path.read_text()

    return compare


@pytest.fixture(autouse=True)
def no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugins installed beside gfprobe (``make test`` installs three) are never loaded
    implicitly here: each test sees gfprobe alone unless it installs or enables a plugin itself.
    Their own tests, in ``plugins/*/tests``, load them."""
    monkeypatch.setenv(found.DISABLE_ENV, "all")
    forget_plugins()


def forget_plugins() -> None:
    """Every cache of what plugins offer: the next hook finds the plugins afresh."""
    manager.forget()
    measure_set.plugin_measures.cache_clear()
    _common.plugin_commands.cache_clear()


def child_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: deterministic, small thread count, no colour, and no
    installed plugin (see ``no_installed_plugins``)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "NO_COLOR": "1", "GFPROBE_WIDTH": "120",
                "PYTHONDONTWRITEBYTECODE": "1", found.DISABLE_ENV: "all"})
    env.pop("GFPROBE_RECORD", None)
    env.update(extra)
    return env


# A script that takes three optimizer steps of a tiny model: for tests about how a script is run.
THREE_STEPS = """
import torch
model = torch.nn.Linear(3, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
"""


@contextlib.contextmanager
def recording(*args: str, cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """``gfprobe record ARGS`` in a session of its own (stdin not a terminal, so it relays
    SIGINT); whatever is left of its process group is killed afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "gfprobe", "record", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=child_env(), start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def gloo_aborted(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether a torchrun command failed because torch's gloo threads aborted a rank at its exit
    ("terminate called without an active exception", SIGABRT). It happens with or without
    gfprobe (plain torchrun DDP runs of tests/scripts/train_ddp.py aborted so here too), so a
    test retries such a run once: a second abort in a row still fails it."""
    return result.returncode != 0 and "terminate called without an active exception" in result.stderr


def record(out: Path, script: str | Sequence[str], *args: str, options: Sequence[str] = (),
           timeout: float = 240, cwd: Path | None = None, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """``gfprobe record --out OUT [options] -- python SCRIPT args`` as a real subprocess."""
    command = [sys.executable, str(SCRIPTS / script)] if isinstance(script, str) else list(script)
    return subprocess.run(
        [sys.executable, "-m", "gfprobe", "record", "--out", str(out), *options, "--", *command, *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env or child_env(),
    )


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
