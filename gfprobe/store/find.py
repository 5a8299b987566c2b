"""Which run files a list of paths stands for: the analysis commands and the API take folders too."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gfprobe.errors import ConfigError


def find_runs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Folders stand for the ``*.h5`` files under them (sorted); files are kept as given. One
    path may be given on its own (``"runs/"``, not only ``["runs/"]``)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob("*.h5"))
            if not found:
                raise ConfigError(f"{path}: folder holds no .h5 run files; pass a folder of run files or the files")
            out.extend(found)
        else:
            out.append(path)
    return out
