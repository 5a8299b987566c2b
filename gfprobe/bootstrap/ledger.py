"""What a recorded process tells ``gfprobe record``, which cannot see inside it: why it recorded
nothing, and run files it wrote outside ``--out``. One JSON line each, in a private file."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any


def tell_launcher(ledger: str | None, entry: dict[str, Any]) -> None:
    """Append ``entry`` (with this process's pid); nothing when there is no ledger or it fails."""
    if not ledger:
        return
    with contextlib.suppress(OSError, ValueError), open(ledger, "a", encoding="utf-8") as f:
        f.write(json.dumps({"pid": os.getpid(), **entry}) + "\n")
