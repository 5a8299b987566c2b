"""The ``gfprobe`` command line: thin click commands over the library."""

from __future__ import annotations

import click

from gfprobe import __version__
from gfprobe.cli._common import plugin_commands
from gfprobe.cli.check import check
from gfprobe.cli.demo import demo
from gfprobe.cli.diff import diff
from gfprobe.cli.inspect import inspect
from gfprobe.cli.merge import merge
from gfprobe.cli.plot import plot
from gfprobe.cli.plugins import plugins
from gfprobe.cli.record import record
from gfprobe.cli.report import report
from gfprobe.cli.scsdc import scsdc
from gfprobe.cli.watch import watch
from gfprobe.console import EXIT_INTERRUPTED, restore_keyboard_interrupt


class _Commands(click.Group):
    """Ctrl-C in any command: one line and exit 130 (click's default is "Aborted!" and exit 1).
    A command that can say more (``scsdc run``: how to resume) catches it first."""

    def invoke(self, ctx: click.Context) -> object:
        restore_keyboard_interrupt()  # click's own parsing ran under the quiet handler
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("gfprobe: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)

    # Plugins' commands are looked up only when a name is not a built-in command (or for --help):
    # the built-in commands never load a plugin they do not need.
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *plugin_commands(frozenset(self.commands))})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or plugin_commands(frozenset(self.commands)).get(cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gfprobe")
def main() -> None:
    """Gradient-flow diagnostics: record per-layer gradient statistics of any PyTorch training
    run into an HDF5 file, then report Effective Gradient Flow and the standard norms."""


for command in (record, report, inspect, merge, check, diff, plot, demo, scsdc, plugins, watch):
    main.add_command(command)
