"""``gfprobe check RUN...``: gradient health as a CI gate (exit 0 pass, 1 a rule fails, 2 bad input)."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.analysis.check import check_each
from gfprobe.analysis.check_config import DESCRIPTIONS, load_config
from gfprobe.cli._common import config_option, emit, handle_errors, listing
from gfprobe.outpath import check_writable
from gfprobe.store.find import find_runs


@click.command(epilog="Rules: " + "; ".join(f"{rule}: {text}" for rule, text in DESCRIPTIONS.items()) + ".")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@config_option
@click.option("--format", "output_format", type=click.Choice(("table", "json", "github")), default="table",
              show_default=True, help="github: workflow annotations (::error) for GitHub Actions.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write a JUnit XML report here.")
@click.option("--stream", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which optimizer to check when the run stepped several.")
@handle_errors
def check(runs: tuple[Path, ...], config_path: Path | None, output_format: str, junit: Path | None,
          stream: int) -> None:
    """Check the gradient health of RUNS: exit 0 when every rule passes, 1 when one fails, 2 on
    bad input. RUNS are run files or folders of them."""
    config, _ = load_config(config_path)
    if junit is not None:
        check_writable(junit, "--junit")
    checks, unreadable = check_each(find_runs(runs), config, stream)
    with listing(unreadable):
        code = emit(checks, output_format, junit, unreadable)
    raise SystemExit(code)
