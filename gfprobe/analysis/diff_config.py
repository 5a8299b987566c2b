"""The rules of ``gfprobe diff``, their defaults, and their configuration.

They live beside ``check``'s, in ``[tool.gfprobe.diff]`` of the nearest ``pyproject.toml`` or of a
``--config`` file (or the whole file when it has no such table), and are read and validated by the
same code (``check_config``): a project keeps its CI gates in one place, and a misspelt rule or a
negative tolerance is refused alike (exit 2)::

    [tool.gfprobe.diff]
    layers = { rtol = 0.05 }
    unmatched = { enabled = false }
"""

from __future__ import annotations

from pathlib import Path

from gfprobe.analysis import check_config
from gfprobe.analysis.check_config import Config

# A relative tolerance of 1%: runs of the same script and seed on one machine are bit-identical on
# CPU (0 difference: see docs/diff.md); what a float32 reordering (another thread count, another
# BLAS, a refactor that sums in another order) changes starts at ~1e-7 and, on the tests' and the
# demo's networks, stays orders of magnitude below 1% over their training. A change that matters
# (an init, a learning rate, a layer) moves some layer's norm by far more than 1% at once.
RTOL = 0.01
DEFAULTS: Config = {
    "structure": {"enabled": True},
    "layers": {"enabled": True, "rtol": RTOL},
    "measures": {"enabled": True, "rtol": RTOL},
    "metrics": {"enabled": True, "rtol": RTOL},
    "unmatched": {"enabled": True},
}
RULES = tuple(DEFAULTS)
DESCRIPTIONS = {
    "structure": "the same weight layers, of the same shapes, in both runs",
    "layers": "each weight layer's ‖g⊙m‖₂ within a factor 1 + rtol at every step both runs recorded",
    "measures": "each measure's summary over the common steps within a factor 1 + rtol",
    "metrics": "each metric within rtol (relative) at every step both runs logged it",
    "unmatched": "every run of one folder has a run of the same id in the other",
}
DIFF = check_config.Section("diff", DEFAULTS, "layers = { rtol = 0.05 }")


def load_config(path: Path | None = None, cwd: Path | None = None) -> tuple[Config, Path | None]:
    """The diff rules' settings (defaults merged with the file's) and the file they came from."""
    return check_config.load_config(path, cwd, DIFF)
