"""``gfprobe merge RANK_FILES... --out RUN``."""

from __future__ import annotations

from pathlib import Path

import click

from gfprobe.cli._common import handle_errors, say
from gfprobe.store.merge import merge as merge_files
from gfprobe.store.merge import merged_name


@click.command()
@click.argument("rank_files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Run file to write [default: the rank files' name without .rank<r>].")
@handle_errors
def merge(rank_files: tuple[Path, ...], out: Path | None) -> None:
    """Merge the rank files of a sharded (FSDP2/DTensor) run into one run file.

    \b
    Example:
      gfprobe merge run.rank*.h5 --out run.h5
    Each rank recorded the statistics of its shard of every gradient; the merged file holds
    those of the full gradients (sums added, maxima maxed). Steps that not every rank recorded
    are left out. 'gfprobe record' merges by itself when the command ends.
    """
    target = out or merged_name(rank_files[0])
    result = merge_files(list(rank_files), target)
    dropped = sum(result.dropped)
    note = f"; {dropped} steps not recorded by every rank were left out" if dropped else ""
    say(f"merged {result.ranks} ranks, {sum(result.steps)} steps, into {target}{note}")
