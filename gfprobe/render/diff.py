"""Rendering of ``gfprobe diff``: a rich table, JSON, Markdown (a pull-request comment), GitHub
workflow annotations and JUnit XML.

The verdicts are check's findings, so GitHub annotations and JUnit XML are check's renderers,
titled ``gfprobe diff``. Layer names, metric names and paths come from run files: each format
gets them through ``safe`` (printable, Markdown-escaped) or ``formats.to_json``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gfprobe.analysis.check import Finding, RunCheck, unreadable_check
from gfprobe.analysis.diff import UNMATCHED_RULE, DiffResult, PairDiff, Trace
from gfprobe.render import check as render_check
from gfprobe.render.formats import fmt, to_json, to_markdown
from gfprobe.render.safe import Markdown, markdown, text

PASSED = "no difference beyond the tolerances"
STATES = {"same": "", "within": "green", "DIFFERS": "bold red"}


def verdict(pair: PairDiff) -> str:
    failing = sum(f.status == "fail" for f in pair.findings)
    return PASSED if not failing else f"{failing} rules fail"


def _state(t: Trace) -> str:
    return "DIFFERS" if t.exceeded else ("same" if t.gap == 0 else "within")


def _ratio(base: float, new: float) -> float:
    """NEW/BASE, as a reader reads a change of a norm (inf where BASE is 0 and NEW not)."""
    if base == new:
        return 1.0
    return new / base if base != 0 else math.inf


def _unmatched(result: DiffResult) -> list[tuple[str, str, str]]:
    """(side, run id, path) of every run in one folder only."""
    return ([("BASE", i, str(p)) for i, p in result.only_base] + [("NEW", i, str(p)) for i, p in result.only_new])


def _unmatched_message(side: str, run_id: str) -> str:
    other = "NEW" if side == "BASE" else "BASE"
    return f"run {run_id} is in {side} only: {other} has no run of that id"


# -- table -----------------------------------------------------------------------------------------

def _table(title: str, *columns: str) -> Table:
    table = Table(title=text(title, "table.title"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column not in ("detail", "layer", "metric", "run id", "path"))
    return table


def render_table(console: Console, result: DiffResult) -> None:
    """Per pair, the rules; with one pair (or a failing one) each layer, measure and metric too."""
    single = len(result.pairs) == 1
    for pair in result.pairs:
        rules = _table(f"{pair.id}: {verdict(pair)}", "rule", "result", "detail")
        for finding in pair.findings:
            rules.add_row(text(finding.rule), text(render_check.SYMBOLS[finding.status],
                                                   render_check.STYLES[finding.status]), text(finding.message))
        console.print(text(f"BASE {pair.base}"))
        console.print(text(f"NEW  {pair.new}"))
        for note in pair.notes:
            console.print(text(f"note: {note}", "yellow"))
        console.print(rules)
        if single or not pair.passed:
            _print_traces(console, "weight layer ‖g⊙m‖₂ at the common steps", "layer", pair.layers)
        if single:
            _print_traces(console, "measures: 11-point means over the common steps", "measure", pair.measures)
            _print_traces(console, "metrics at the common steps", "metric", [t for t in pair.metrics if t.compared])
    unmatched = _unmatched(result)
    if unmatched:
        verdict_ = "FAIL" if result.unmatched_fail else "listed only (unmatched is switched off)"
        table = _table(f"runs without a partner of the same id: {verdict_}", "run id", "only in", "path")
        for side, run_id, path in unmatched:
            table.add_row(text(run_id), text(side), text(path))
        console.print(table)


def _print_traces(console: Console, title: str, kind: str, traces: Sequence[Trace]) -> None:
    if not traces:
        return
    stepwise = _stepwise(kind)
    table = _table(title, *_trace_headers(kind, stepwise))
    for t in traces:
        *cells, state = _trace_cells(t, kind, stepwise)
        table.add_row(*(text(fmt(c)) for c in cells), text(state, STATES[state]))
    console.print(table)


def _stepwise(kind: str) -> bool:
    """Whether a kind of trace follows steps (layers, metrics) rather than summaries (measures),
    which have no step to show."""
    return kind != "measure"


def _trace_headers(kind: str, stepwise: bool) -> list[str]:
    change = "rel. diff" if kind == "metric" else "NEW/BASE"
    if stepwise:
        return [kind, change, "at step", "BASE → NEW", "first step beyond", "result"]
    return [kind, change, "BASE → NEW", "result"]


def _trace_cells(t: Trace, kind: str, stepwise: bool) -> list[Any]:
    """A trace's cells under :func:`_trace_headers`; the last is its state (same, differs, ...)."""
    change = t.gap if kind == "metric" else _ratio(t.base, t.new)
    values = f"{fmt(t.base)} → {fmt(t.new)}"
    if stepwise:
        first = t.first_step if t.first_step is not None else ""
        return [t.name, change, t.step, values, first, _state(t)]
    return [t.name, change, values, _state(t)]


# -- JSON --------------------------------------------------------------------------------------------

def render_json(result: DiffResult) -> str:
    payload: dict[str, Any] = {
        "passed": result.passed,
        "runs": [_pair_json(pair) for pair in result.pairs],
        "unmatched": {"fails": result.unmatched_fail,
                      "base_only": [{"id": i, "path": str(p)} for i, p in result.only_base],
                      "new_only": [{"id": i, "path": str(p)} for i, p in result.only_new]},
    }
    if result.unreadable:
        payload["unreadable"] = [item.to_json() for item in result.unreadable]
    return to_json(payload)


def _pair_json(pair: PairDiff) -> dict[str, Any]:
    aligned = pair.alignment
    return {
        "id": pair.id, "base": pair.base, "new": pair.new, "passed": pair.passed,
        "stream": {"base": pair.streams[0], "new": pair.streams[1]},
        "aligned": {"steps": len(aligned.steps), "first": int(aligned.steps[0]) if len(aligned.steps) else None,
                    "last": int(aligned.steps[-1]) if len(aligned.steps) else None,
                    "base_steps": len(aligned.base_steps), "new_steps": len(aligned.new_steps),
                    "partial": aligned.partial, "note": aligned.note()},
        "notes": pair.notes,
        "results": [dataclasses.asdict(f) for f in pair.findings],
        "layers": [_trace_json(t, "max_abs_log_ratio") for t in pair.layers],
        "only_in_base": pair.only_base, "only_in_new": pair.only_new,
        "reshaped": [{"name": n, "base": list(b), "new": list(a)} for n, b, a in pair.reshaped],
        "measures": [{"name": t.name, "base": t.base, "new": t.new, "abs_log_ratio": t.gap, "exceeded": t.exceeded}
                     for t in pair.measures],
        "measure_summary": {"how": "points", "steps": pair.measure_steps},
        "metrics": [_trace_json(t, "max_rel_diff") for t in pair.metrics],
        "metrics_only_in_base": pair.metrics_only_base, "metrics_only_in_new": pair.metrics_only_new,
    }


def _trace_json(t: Trace, gap: str) -> dict[str, Any]:
    """Infinite gaps (one run zero or non-finite, the other not) are null, as JSON has no infinity."""
    return {"name": t.name, "steps": t.compared, gap: t.gap, "worst_step": t.step, "base": t.base, "new": t.new,
            "exceeded": t.exceeded, "first_step": t.first_step,
            "first_base": t.first_base if t.exceeded else None, "first_new": t.first_new if t.exceeded else None}


# -- Markdown ----------------------------------------------------------------------------------------

def render_markdown(result: DiffResult) -> str:
    """For a pull-request comment: the verdict, then per pair its rules and what differs."""
    out = f"**gfprobe diff: {'passed' if result.passed else 'failed'}**\n"
    for pair in result.pairs:
        out += f"\n### {markdown(pair.id)}: {markdown(verdict(pair))}\n\nBASE {markdown(pair.base)}  \n" \
               f"NEW {markdown(pair.new)}\n\n"
        out += "".join(f"> note: {markdown(note)}\n\n" for note in pair.notes)
        out += to_markdown(["rule", "result", "detail"], [[f.rule, Markdown(_md_status(f)), f.message]
                                                          for f in pair.findings])
        out += _traces_markdown("weight layer", pair.layers)
        out += _traces_markdown("measure", pair.measures)
        out += _traces_markdown("metric", [t for t in pair.metrics if t.compared])
    unmatched = _unmatched(result)
    if unmatched:
        out += "\n" + "".join(f"- {markdown(path)}: {markdown(_unmatched_message(side, i))}\n"
                              for side, i, path in unmatched)
    if result.unreadable:
        out += "\n" + "".join(f"- unreadable: {markdown(str(item))}\n" for item in result.unreadable)
    return out


def _md_status(finding: Finding) -> str:
    return {"pass": "pass", "fail": "**FAIL**", "skip": "skip"}[finding.status]


def _traces_markdown(kind: str, traces: Sequence[Trace]) -> str:
    if not traces:
        return ""
    stepwise = _stepwise(kind)
    rows = []
    for t in traces:
        *cells, state = _trace_cells(t, kind, stepwise)
        rows.append([*cells, Markdown("**DIFFERS**" if t.exceeded else state)])
    return "\n" + to_markdown(_trace_headers(kind, stepwise), rows)


# -- GitHub annotations and JUnit ------------------------------------------------------------------

def as_checks(result: DiffResult) -> list[RunCheck]:
    """Every pair as a run with rules, named by NEW's path (the file a pull request changed);
    runs in one folder only fail the rule ``unmatched`` (or skip it when it is off), and files
    that could not be read the rule ``readable``: CI shows annotations and JUnit, not stderr."""
    checks = [RunCheck(pair.new, pair.findings) for pair in result.pairs]
    status = "fail" if result.unmatched_fail else "skip"
    checks += [RunCheck(path, [Finding(UNMATCHED_RULE, status, _unmatched_message(side, i))])
               for side, i, path in _unmatched(result)]
    return checks + [unreadable_check(item) for item in result.unreadable]


def render_github(result: DiffResult) -> str:
    """A ``::notice`` for each pair compared on part of its steps, then check's annotations."""
    notes = [render_check.annotation("notice", pair.new, "gfprobe diff", note) + "\n"
             for pair in result.pairs for note in pair.notes]
    checks = as_checks(result)
    return "".join(notes) + (render_check.render_github(checks, "diff", PASSED) if checks else "")


def write_junit(result: DiffResult, path: Path) -> None:
    render_check.write_junit(as_checks(result), path, "diff")
