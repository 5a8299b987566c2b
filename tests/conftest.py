"""Shared fixtures: running real scripts under ``gfprobe record`` and golden files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"
FIXTURES = Path(__file__).parent.parent / "fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files in fixtures/golden.")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: deterministic, small thread count, no colour."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "NO_COLOR": "1", "GFPROBE_WIDTH": "120",
                "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("GFPROBE_RECORD", None)
    env.update(extra)
    return env


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
