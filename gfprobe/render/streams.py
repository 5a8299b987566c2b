"""Rendering of ``gfprobe report`` by stream: each stream's sections (runs, correlation, SC-SDC)
as :mod:`gfprobe.render.sections` renders them, headed by the stream and its protocol whenever
the report covers several streams, or one whose gradient is not the optimizer's minibatch
gradient, so that no figure's protocol is left unsaid. A report of the default stream alone
prints as it always has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console

from gfprobe.analysis.sections import Request, Sections
from gfprobe.analysis.streams import StreamBlock
from gfprobe.render import sections as render
from gfprobe.render.formats import to_json
from gfprobe.render.safe import markdown, printable, text
from gfprobe.store.reader import Unreadable

Analysed = tuple[StreamBlock, Sections]


def headed(blocks: Sequence[Analysed]) -> bool:
    """Whether each block gets a heading: several streams, or one not of minibatch gradients."""
    return len(blocks) > 1 or any(not block.minibatch for block, _ in blocks)


def render_json(blocks: Sequence[Analysed], unreadable: Sequence[Unreadable] = ()) -> str:
    """One stream: the sections as ever (``"stream"`` added when it is not the minibatch
    gradient); several: ``{"streams": [{"stream": {...}, "runs": ..., ...}], "unreadable": ...}``."""
    if not headed(blocks):
        return render.render_json(blocks[0][1], unreadable)
    parts = [{"stream": block.to_json(), **render.json_payload(sections)} for block, sections in blocks]
    payload: dict[str, Any] = parts[0] if len(parts) == 1 else {"streams": parts}
    return to_json({**payload, **render.unreadable_json(unreadable)})


def render_table(console: Console, blocks: Sequence[Analysed], request: Request, per_layer: bool = False) -> None:
    shown = [(block, sections) for block, sections in blocks if block.runs]
    for index, (block, sections) in enumerate(shown):
        if headed(blocks):
            if index:
                console.print()
            console.print(text(_capitalised(block.label), "bold"))
            console.print()
        render.render_table(console, sections, request, per_layer)


def render_text(blocks: Sequence[Analysed], request: Request, output_format: str, per_layer: bool = False) -> str:
    """CSV or Markdown; a heading per stream is a ``# stream ...`` line (CSV) or a ``#`` heading."""
    parts = []
    for block, sections in blocks:
        if not block.runs:
            continue
        body = render.render_text(sections, request, output_format, per_layer)
        if headed(blocks):
            heading = (f"# {printable(block.label)}\n" if output_format == "csv"
                       else f"# {markdown(_capitalised(block.label))}\n\n")
            body = heading + body
        parts.append(body)
    return "\n".join(parts)


def _capitalised(label: str) -> str:
    return label[:1].upper() + label[1:]
