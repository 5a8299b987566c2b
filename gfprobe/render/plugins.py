"""``gfprobe plugins``: the installed plugins as a table or JSON. Names and errors come from other
people's packages: they are shown as text, never obeyed by the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from gfprobe.plugin.manager import PluginInfo
from gfprobe.render.formats import to_json
from gfprobe.render.safe import printable


def plugins_json(plugins: list[PluginInfo]) -> str:
    return to_json([_as_dict(p) for p in plugins])


def _as_dict(plugin: PluginInfo) -> dict[str, Any]:
    return {"name": plugin.name, "distribution": plugin.distribution, "version": plugin.version,
            "builtin": plugin.builtin, "status": _status(plugin), "hooks": list(plugin.hooks),
            "error": plugin.error}


def _status(plugin: PluginInfo) -> str:
    return "disabled" if plugin.disabled else "skipped" if plugin.error else "loaded"


def plugins_table(plugins: list[PluginInfo]) -> Table:
    table = Table(title="gfprobe plugins", title_justify="left")
    for column in ("plugin", "distribution", "version", "status", "hooks"):
        table.add_column(column)
    for plugin in plugins:
        status = _status(plugin) + (f": {plugin.error}" if plugin.error else "")
        distribution = "gfprobe (built in)" if plugin.builtin else plugin.distribution
        cells = (plugin.name, distribution, plugin.version, status, ", ".join(plugin.hooks) or "–")
        table.add_row(*(Text(printable(cell)) for cell in cells))
    return table
