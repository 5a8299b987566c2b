"""Rendering of what ``gfprobe report`` computed (:class:`~gfprobe.analysis.sections.Sections`)
in each of its formats: the per-run, correlation and SC-SDC sections that were asked for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console

from gfprobe.analysis.sections import STUDY, Request, Sections
from gfprobe.render import correlation, report, scsdc
from gfprobe.render.formats import to_json
from gfprobe.store.reader import Unreadable


def render_json(sections: Sections, unreadable: Sequence[Unreadable] = ()) -> str:
    """One JSON document: the sections asked for, and the files that could not be read."""
    return to_json({**json_payload(sections), **unreadable_json(unreadable)})


def json_payload(sections: Sections) -> dict[str, Any]:
    """The sections asked for, as JSON data."""
    payload: dict[str, Any] = {}
    if sections.runs is not None:
        payload["runs"] = [report.run_json(run) for run in sections.runs]
    if sections.correlation is not None:
        payload["correlation"] = [correlation.correlation_json(c) for c in sections.correlation]
    if sections.scsdc is not None:
        payload["scsdc"] = [scsdc.comparison_json(c) for c in sections.scsdc]
        payload["pivots"] = scsdc.pivots_json(sections.pivots)
    return payload


def unreadable_json(unreadable: Sequence[Unreadable]) -> dict[str, Any]:
    """The files that could not be read; nothing when every file was."""
    return {"unreadable": [item.to_json() for item in unreadable]} if unreadable else {}


def render_table(console: Console, sections: Sections, request: Request, per_layer: bool = False) -> None:
    if sections.runs is not None:
        report.render_table(console, sections.runs, per_layer)
    if sections.correlation is not None:
        correlation.render_table(console, sections.correlation)
    if sections.scsdc is not None:
        scsdc.render_table(console, sections.scsdc, sections.pivots, request.scsdc_metric)


def render_text(sections: Sections, request: Request, output_format: str, per_layer: bool = False) -> str:
    """CSV or Markdown. One section prints as it is; several are told apart by a heading
    (Markdown) or a comment line (CSV)."""
    csv = output_format == "csv"
    blocks: list[tuple[str, str]] = []  # (section name, text)
    if sections.runs is not None:
        blocks.append(("runs", report.render_csv(sections.runs) if csv
                       else report.render_markdown(sections.runs, per_layer)))
    if sections.correlation is not None:
        blocks.append(("correlation", correlation.render_csv(sections.correlation) if csv
                       else correlation.render_markdown(sections.correlation)))
    if sections.scsdc is not None:
        blocks.append(("scsdc", scsdc.render_csv(sections.scsdc, sections.pivots) if csv
                       else scsdc.render_markdown(sections.scsdc, sections.pivots, request.scsdc_metric)))
    return "\n".join(body if len(blocks) == 1 else (f"# {name}\n" if csv else f"## {name}\n\n") + body
                     for name, body in blocks)


def render_study(console: Console, sections: Sections) -> None:
    """A study's report after ``gfprobe scsdc run``: SC-SDC first (what the study is for), then
    the correlation of the measures with the same metric."""
    scsdc.render_table(console, sections.scsdc or [], sections.pivots, STUDY.scsdc_metric)
    console.print()
    correlation.render_table(console, sections.correlation or [])
