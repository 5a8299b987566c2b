"""``gfprobe check RUN...``: gradient health as a CI gate (exit 0 pass, 1 a rule fails, 2 bad input)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from gfprobe.analysis.check import Finding, RunCheck, check_each
from gfprobe.analysis.check_config import DESCRIPTIONS, load_config
from gfprobe.cli._common import EXIT_BAD_INPUT, console, handle_errors
from gfprobe.cli.report import expand_runs, listing
from gfprobe.outpath import check_writable
from gfprobe.render import check as render
from gfprobe.render.formats import to_json
from gfprobe.store.reader import Unreadable

EXIT_FAILED = 1
READABLE_RULE = "readable"  # the check an unreadable file fails in annotations and JUnit


F = TypeVar("F", bound=Callable[..., Any])


def config_option(func: F) -> F:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="TOML file with the rules' settings [default: [tool.gfprobe.check] of the nearest "
                             "pyproject.toml].")(func)


def emit(checks: list[RunCheck], output_format: str, junit: Path | None,
         unreadable: Sequence[Unreadable] = ()) -> int:
    """Print the results; write JUnit XML if asked; return the exit code (2 when some file could
    not be read, which outranks a failing rule: that run's health is unknown)."""
    # CI reads annotations and JUnit, not stderr: there an unreadable file is a failed check of its own.
    annotated = checks + [_unreadable_check(item) for item in unreadable]
    if output_format == "json":
        click.echo(_json(checks, unreadable))
    elif output_format == "github":
        if annotated:
            click.echo(render.render_github(annotated), nl=False)
    else:
        render.render_table(console(), checks)
    if junit is not None:
        render.write_junit(annotated, junit)
    if unreadable:
        return EXIT_BAD_INPUT
    return 0 if all(c.passed for c in checks) else EXIT_FAILED


def _unreadable_check(item: Unreadable) -> RunCheck:
    return RunCheck(item.path, [Finding(READABLE_RULE, "fail", f"unreadable run file: {item.error}")])


def _json(checks: list[RunCheck], unreadable: Sequence[Unreadable]) -> str:
    if not unreadable:
        return render.render_json(checks).rstrip("\n")
    # render/check.py lays out the runs' results; the files that were never checked are this
    # command's to add, and no run passed that could not be read.
    payload = json.loads(render.render_json(checks))
    payload.update(passed=False, unreadable=[item.to_json() for item in unreadable])
    return to_json(payload)


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
    checks, unreadable = check_each(expand_runs(runs), config, stream)
    with listing(unreadable):
        code = emit(checks, output_format, junit, unreadable)
    raise SystemExit(code)
