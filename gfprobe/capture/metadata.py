"""What every adapter shares, whatever its framework: the run's base metadata and how often
rows go to the recorder. Imports no framework."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

BATCH_STEPS = 256  # rows an adapter keeps before handing them to the recorder (one device-to-host copy)
FLUSH_SECONDS = 2.0  # and never longer than this between hand-overs while training steps


def base_metadata(command: Sequence[str], framework: str) -> dict[str, Any]:
    """The run file's root attributes every adapter writes; it adds its framework's versions."""
    from gfprobe import __version__

    return {
        "command": list(command),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "python_version": sys.version.split()[0],
        "gfprobe_version": __version__,
        "framework": framework,
    }
