"""``gfprobe demo``: the built-in SC-SDC study, end to end, with nothing to set up."""

from __future__ import annotations

import os

import click

from gfprobe.cli.scsdc import run


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="gfprobe-runs/quick",  # a str: '' must not be '.'
              show_default=True, help="Folder for the study's run files.")
@click.option("--jobs", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Runs trained in parallel.")
@click.pass_context
def demo(ctx: click.Context, out: str, jobs: int) -> None:
    """Run the 'quick' SC-SDC study on MNIST-1D (generated locally, no download) and report it.

    Sparse and capacity-matched dense MLPs, every run recorded by gfprobe; a few minutes on a
    laptop CPU. The same as: gfprobe scsdc run --preset quick --out OUT --jobs JOBS
    """
    ctx.invoke(run, preset="quick", out=out, jobs=jobs)
