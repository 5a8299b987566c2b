"""``gfprobe demo``: the built-in end-to-end demonstration."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gfprobe import launcher
from gfprobe.analysis.report import build_report
from gfprobe.cli._common import UserError, console, handle_errors
from gfprobe.render.report import render_table

VARIANTS = {"dense": 1.0, "sparse-0.3": 0.3}


@click.command()
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("gfprobe-runs/demo"), show_default=True)
@handle_errors
def demo(epochs: int, out_dir: Path) -> None:
    """Train a dense and a 30%-dense MLP on MNIST-1D under 'gfprobe record', then report.

    Shows the whole loop on a laptop CPU in well under a minute: zero-code recording,
    metrics, and Effective Gradient Flow of a sparse against a dense network.
    """
    runs = []
    for name, density in VARIANTS.items():
        out = out_dir / f"mnist1d-mlp-{name}.h5"
        click.echo(f"gfprobe demo: training {name} MLP on MNIST-1D -> {out}", err=True)
        command = [sys.executable, "-m", "gfprobe.demo.train_mnist1d", "--epochs", str(epochs),
                   "--density", str(density)]
        options = launcher.RecordOptions(out=out, force=True,
                                         attrs={"sparse": density < 1, "density": density, "dataset": "mnist1d"})
        result = launcher.run(command, options)
        if result.exit_code != 0 or not result.files:
            raise UserError(f"demo training ({name}) failed with exit code {result.exit_code}",
                            exit_code=result.exit_code or 1)
        runs.extend(result.files)
    render_table(console(), build_report(runs))
    click.echo(f"Run files: {out_dir}/  (inspect one with: gfprobe inspect {runs[0]})")
