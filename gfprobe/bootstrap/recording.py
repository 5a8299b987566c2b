"""What a plugin's ``gfprobe_record_started`` hook is handed in a process ``gfprobe record`` runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gfprobe.bootstrap.imports import OnImport, after_import
from gfprobe.bootstrap.ledger import tell_launcher
from gfprobe.capture import session

log = logging.getLogger("gfprobe")


class Recording:
    """The recording armed in this process: its options, and how to attach to a framework."""

    def __init__(self, out: Path, every: int, masks: str, command: tuple[str, ...],
                 initial_attrs: dict[str, Any], ledger: str | None = None) -> None:
        self.out = out  # the run file asked for (a rank's or a shard's file may add a suffix)
        self.every = every
        self.masks = masks
        self.command = command
        # The attributes the recorder starts with. It is made when the script imports torch,
        # after the plugins started: what they set before then goes here.
        self._initial_attrs = initial_attrs
        self._given = frozenset(initial_attrs)  # the user's --attr keys
        self._ledger = ledger  # where the command's processes tell gfprobe record what they did

    @property
    def attrs(self) -> dict[str, Any]:
        """The run attributes the user gave (``gfprobe record --attr KEY=VALUE``): an adapter that
        writes its own run file (JAX's) stores them too."""
        return {key: value for key, value in self._initial_attrs.items() if key in self._given}

    def after_import(self, module_name: str, callback: OnImport) -> None:
        """Call ``callback(module)`` once ``module_name`` is imported (now, if it already is).
        A callback that raises is named in one warning line; the script goes on unrecorded by it."""

        def failed(exc: BaseException) -> None:
            log.warning("gfprobe: %s.%s failed on import of %s (%s: %s); training goes on without it",
                        getattr(callback, "__module__", "?"), getattr(callback, "__qualname__", "?"),
                        module_name, type(exc).__name__, " ".join(str(exc).split()))

        after_import(module_name, callback, failed)

    def wrote(self, path: Path) -> None:
        """A run file an adapter of this process wrote somewhere other than ``out`` (its user
        chose the path): ``gfprobe record`` reports it, stamps the command's exit code into it
        and checks it (``--check``) as it does ``out``."""
        tell_launcher(self._ledger, {"file": str(Path(path).absolute())})

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Run attributes (hyper-parameters, arguments) for the run; see ``gfprobe.set_attrs``.
        An attribute the user gave with ``gfprobe record --attr`` keeps the user's value."""
        attrs = {key: value for key, value in attrs.items() if key not in self._given}
        if session.recording():
            session.set_attrs(attrs)
        else:
            self._initial_attrs.update(attrs)
