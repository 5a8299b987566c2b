"""``gfprobe plugins``."""

from __future__ import annotations

import click

from gfprobe.cli._common import console, format_option
from gfprobe.plugin.manager import installed
from gfprobe.render.plugins import plugins_json, plugins_table


@click.command()
@format_option(("table", "json"))
def plugins(output_format: str) -> None:
    """List the installed plugins: name, distribution, version, status and the hooks each implements.

    \b
    Example:
      gfprobe plugins --format json
    A plugin that cannot be loaded is named in one warning line and listed as skipped, with why.
    Set GFPROBE_DISABLE_PLUGINS=name,... (or =all) to leave plugins out.
    """
    found = installed()
    if output_format == "json":
        click.echo(plugins_json(found))
    else:
        console().print(plugins_table(found))
