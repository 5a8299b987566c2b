"""gfprobe's entry point for the JAX / optax adapter (group ``gfprobe``, name ``jax``).

gfprobe loads this module to list and hook its plugins, so it stays light: it imports neither
JAX nor optax. The adapter itself is ``gfprobe_jax.watch``.

Under ``gfprobe record`` the hook below remembers the recording, so that ``watch(tx)`` without
``out=`` writes the run file ``gfprobe record`` looks for (its ``--out``), with its ``--every``
and ``--attr`` values: the record command then reports, stamps and checks it like a torch run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gfprobe.plugin import hookimpl

if TYPE_CHECKING:
    from gfprobe.bootstrap.recording import Recording

name = "jax"
current: Recording | None = None  # set in a process that ``gfprobe record`` runs


@hookimpl
def gfprobe_record_started(recording: Recording) -> None:
    global current
    current = recording
