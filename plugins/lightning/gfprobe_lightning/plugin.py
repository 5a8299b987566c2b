"""gfprobe's entry point for Lightning (``[project.entry-points.gfprobe] lightning``).

Loaded in every process that ``gfprobe record`` runs, so it imports neither Lightning nor torch:
it waits for Lightning to be imported, and only then patches its Trainer.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from gfprobe.plugin import hookimpl

if TYPE_CHECKING:
    from gfprobe.bootstrap.recording import Recording

# Both Lightning packages: the unified one and the standalone one, which has its own Trainer.
LIGHTNING_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


@hookimpl
def gfprobe_record_started(recording: Recording) -> None:
    """Give every Lightning Trainer a GfprobeCallback, once Lightning is imported (never, in a
    process that does not import it)."""
    for package in LIGHTNING_PACKAGES:
        recording.after_import(package, _attach)


def _attach(package: ModuleType) -> None:
    from gfprobe_lightning._attach import add_callback_to_every_trainer

    add_callback_to_every_trainer(package)
